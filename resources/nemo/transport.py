"""HTTP plumbing shared by every NeMo microservices client: one retry helper, one poll
loop, typed response parsing and the error types.

Retries (`retry_call`, used by `ServiceClient.request` for every call of every client):
HTTP 429 (waiting what ``Retry-After`` asks, capped), 5xx, connection errors and timeouts
are retried with exponential backoff and jitter: retry n waits
``min(max_backoff_s, backoff_s * 2**n) * uniform(0.5, 1.0)``. Other 4xx are not retried
(asking again gives the same answer) and become `NemoHTTPError` at once.

Creating calls (POST) are retried too, so each one is made safe to repeat by its client:
either the service treats a repeat as "already exists" (namespaces, repos, configs,
deployments: accepted through ``accept=``), or a repeat is harmless (a commit of the same
files), or the caller passes ``recover=``: after a failure that leaves it unknown whether
the server acted on the request (the connection dropped after sending, a read timeout, a
5xx), ``recover()`` looks the object up (e.g. a customization job by its deterministic
name) and, when it exists, that is the answer instead of a second POST. A failure where
the request never reached the server (connect error) or was refused before processing
(429) is simply retried.

Polling (`poll`): every wait has a deadline (`NemoTimeoutError` names the service, what
was awaited and the last state seen) and reports each change of state or progress to an
``on_progress`` callback as a `Progress` (its ``str()`` is one log line). A service that
stays unreachable beyond one call's retries (a gateway restart during an hours-long job)
is reported as ``unreachable`` and polled again until the deadline.

Errors name the service, the method and path, and the server's own words; never the API
key (it is redacted from any text a server echoes back).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from resources.http import (  # noqa: F401  Retryable, RetryPolicy: part of this module's API
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    raise_if_retryable,
    retry,
    send_once,
    shared_ssl_context,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# ------------------------------------------------------------------------------- errors


class NemoError(Exception):
    """Any failure talking to a NeMo microservice; the message names the service."""

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


class NemoHTTPError(NemoError):
    """A call that failed for good: a non-retryable status, or retries spent."""

    def __init__(self, message: str, *, service: str, status_code: int | None = None, detail: str = "") -> None:
        super().__init__(message, service=service)
        self.status_code = status_code
        self.detail = detail


class NemoSchemaError(NemoError):
    """A response that does not have the shape the client needs (e.g. a missing field)."""


class NemoJobFailed(NemoError):
    """A remote job (customization, evaluation, deployment) ended failed or cancelled;
    ``detail`` is the service's own explanation (e.g. Customizer ``status_logs[].detail``)."""

    def __init__(self, message: str, *, service: str, job_id: str, status: str, detail: str) -> None:
        super().__init__(message, service=service)
        self.job_id = job_id
        self.status = status
        self.detail = detail


class NemoTimeoutError(NemoError, TimeoutError):
    """A poll loop reached its deadline."""


# ------------------------------------------------------------------------------ retries


def retry_call(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    service: str,
    what: str,
    recover: Callable[[], T | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`resources.http.retry`; retries spent: `NemoHTTPError` naming ``service``, ``what``
    and the last failure."""

    def give_up(failure: Retryable, attempts: str) -> NemoHTTPError:
        return NemoHTTPError(
            f"{service}: {what} failed after {attempts}: {failure}",
            service=service,
            status_code=failure.status_code,
            detail=failure.detail,
        )

    return retry(attempt, policy, give_up=give_up, recover=recover, sleep=sleep)


# ------------------------------------------------------------------------------ parsing


class Wire(BaseModel):
    """Base of every request/response model: unknown fields are tolerated (and kept, so
    a caller can still read what a newer service version adds)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def parse(model: type[M], payload: Any, *, service: str, what: str) -> M:
    """``payload`` as ``model``; a mismatch becomes `NemoSchemaError` naming the service,
    the call and each offending field (``required field 'status' is missing``)."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problems = []
        for issue in error.errors()[:6]:
            field = ".".join(str(part) for part in issue["loc"]) or "<body>"
            if issue["type"] == "missing":
                problems.append(f"required field '{field}' is missing")
            else:
                problems.append(f"field '{field}': {issue['msg']}")
        raise NemoSchemaError(
            f"{service}: unexpected response to {what}: {'; '.join(problems)}", service=service
        ) from None


def error_detail(response: httpx.Response, limit: int = 300) -> str:
    """The server's explanation: FastAPI's ``detail`` (text or validation list),
    ``message``/``error``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:limit].strip()
    text: Any = body
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "errors"):
            if body.get(key):
                text = body[key]
                break
    if isinstance(text, list):
        text = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', item)}"
            if isinstance(item, dict)
            else str(item)
            for item in text
        )
    elif isinstance(text, dict):
        text = text.get("message") or json.dumps(text)
    return str(text)[:limit].strip()


# ------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Recovered:
    """What a ``recover`` lookup found after an ambiguous failure of a creating call."""

    value: Any


class ServiceClient:
    """One NeMo service at ``base_url``: an `httpx.Client` plus the shared retry policy.

    Subclasses set ``service`` (the name errors carry). The API key is sent as a bearer
    token on the service's own paths only, never to absolute URLs a server hands out
    (e.g. presigned upload links). Use as a context manager or call `close()`.
    """

    service = "NeMo"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise ValueError(f"{self.service}: base URL is not set")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None  # private: kept out of repr, logs and errors
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport, verify=shared_ssl_context())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Callable[[httpx.Response], bool] | None = None,
        recover: Callable[[], Any | None] | None = None,
    ) -> httpx.Response | Recovered:
        """One logical call with retries. ``path`` is relative to the base URL (or an
        absolute URL, sent without the API key). A response for which ``accept`` returns
        True is returned whatever its status (e.g. 409 "already exists"); otherwise a
        2xx is returned, a retryable status is retried and any other status raises.
        ``recover`` (creating calls): see `retry_call`; what it finds comes back wrapped
        in `Recovered`."""
        absolute = path.startswith(("http://", "https://"))
        url = path if absolute else f"{self.base_url}{path}"
        what = f"{method} {url.split('?')[0]}"
        send_headers = dict(headers or {})
        if self._api_key and not absolute:
            send_headers.setdefault("Authorization", f"Bearer {self._api_key}")

        def attempt() -> httpx.Response:
            response = send_once(
                lambda: self._http.request(
                    method, url, json=json, content=content, data=data, params=params, headers=send_headers
                ),
                timeout_s=self.timeout_s,
            )
            if accept is not None and accept(response):  # e.g. a repeated create: "already exists"
                return response
            raise_if_retryable(response, detail=lambda r: self._redact(error_detail(r)))
            if response.status_code >= 400:
                detail = self._redact(error_detail(response))
                raise NemoHTTPError(
                    f"{self.service}: {what} answered HTTP {response.status_code}" + (f": {detail}" if detail else ""),
                    service=self.service,
                    status_code=response.status_code,
                    detail=detail,
                )
            return response

        def recovered() -> Recovered | None:
            found = recover() if recover is not None else None
            return Recovered(found) if found is not None else None

        return retry_call(
            attempt, self.retry, service=self.service, what=what, recover=recovered if recover is not None else None
        )

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return self.json_of(response, f"{method} {path}")

    def json_of(self, response: httpx.Response, what: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise NemoSchemaError(
                f"{self.service}: response to {what} is not JSON: {self._redact(response.text[:200])!r}",
                service=self.service,
            ) from None

    def parse(self, model: type[M], payload: Any, what: str) -> M:
        return parse(model, payload, service=self.service, what=what)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def status_is(*codes: int) -> Callable[[httpx.Response], bool]:
    """An ``accept`` predicate: the response has one of ``codes``."""
    wanted = frozenset(codes)
    return lambda response: response.status_code in wanted


def says_exists(response: httpx.Response) -> bool:
    """An ``accept`` predicate for creating calls: 409, or any error whose text says the
    object already exists (some services answer a repeat create with 422 or even 500)."""
    if response.status_code == 409:
        return True
    if response.status_code < 400:
        return False
    return "already exist" in response.text.lower()


# ------------------------------------------------------------------------------ polling


@dataclass(frozen=True)
class Progress:
    """One observed state of a remote job or deployment, for ``on_progress`` callbacks."""

    service: str
    subject: str  # "job cust-123", "deployment dfwbp/meta-llama-3.2-1b-instruct"
    status: str
    percent: float | None = None
    message: str | None = None
    elapsed_s: float = 0.0

    def __str__(self) -> str:
        text = f"{self.service} {self.subject}: {self.status}"
        if self.percent is not None:
            text += f" {self.percent:.0f}%"
        if self.message:
            text += f" ({self.message})"
        return text + f" after {self.elapsed_s:.0f}s"


ProgressCallback = Callable[[Progress], None]


def poll(
    fetch: Callable[[], T],
    *,
    service: str,
    subject: str,
    observe: Callable[[T], tuple[str, float | None, str | None]],
    done: Callable[[T], bool],
    timeout_s: float,
    interval_s: float,
    on_progress: ProgressCallback | None = None,
    timeout_hint: str = "",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``fetch()`` every ``interval_s`` until ``done(state)``; return that state.

    ``observe(state)`` gives (status, percent, message); each change is reported to
    ``on_progress``. ``done`` may raise (e.g. `NemoJobFailed` for a failed job). A fetch
    that fails for a transient reason after its own retries (connection, 429, 5xx) is
    reported as status ``unreachable`` and polled again; past ``timeout_s`` (or a 4xx
    at once) it raises. Past ``timeout_s``: `NemoTimeoutError` with the last status seen.
    """
    started = clock()
    deadline = started + timeout_s
    last: tuple[str, float | None, str | None] | None = None
    while True:
        try:
            state = fetch()
        except NemoHTTPError as error:
            # the service stayed unreachable through one call's retries (a gateway
            # restart): keep polling until the deadline rather than abandon a long job
            if not _transient(error) or clock() >= deadline:
                raise
            seen = ("unreachable", None, str(error)[:200])
        else:
            seen = observe(state)
        if seen != last and on_progress is not None:
            on_progress(Progress(service, subject, seen[0], seen[1], seen[2], clock() - started))
        last = seen
        if seen[0] != "unreachable" and done(state):
            return state
        now = clock()
        if now >= deadline:
            raise NemoTimeoutError(
                f"{service}: {subject} not done after {timeout_s:g}s (last status {seen[0]!r})"
                + (f"; {timeout_hint}" if timeout_hint else ""),
                service=service,
            )
        sleep(max(0.0, min(interval_s, deadline - now)))


# where a Customizer or Evaluator job ends without a result
JOB_FAILED_STATES = frozenset({"failed", "error", "cancelled", "canceled"})


class Job(Protocol):
    """A Customizer or Evaluator job's status as its service reports it."""

    @property
    def state(self) -> str: ...

    def failure_detail(self) -> str: ...


J = TypeVar("J", bound=Job)


def wait_for_job(
    fetch: Callable[[], J],
    *,
    service: str,
    job_id: str,
    observe: Callable[[J], tuple[str, float | None, str | None]],
    timeout_s: float,
    interval_s: float,
    on_progress: ProgressCallback | None = None,
    check: Callable[[J], None] = lambda job: None,
) -> J:
    """`poll` a job until it is completed: `NemoJobFailed` (with the service's detail) when
    it ends in a JOB_FAILED_STATES state, `NemoTimeoutError` at the deadline (the job keeps
    running and can be resumed). `check` may refuse a status before it is judged."""

    def done(job: J) -> bool:
        check(job)
        if job.state in JOB_FAILED_STATES:
            detail = job.failure_detail()
            raise NemoJobFailed(
                f"{service}: job {job_id} {job.state}: {detail}",
                service=service,
                job_id=job_id,
                status=job.state,
                detail=detail,
            )
        return job.state == "completed"

    return poll(
        fetch,
        service=service,
        subject=f"job {job_id}",
        observe=observe,
        done=done,
        timeout_s=timeout_s,
        interval_s=interval_s,
        on_progress=on_progress,
        timeout_hint=f"the job keeps running: resume it with existing_job_id={job_id!r}",
    )


def _transient(error: NemoHTTPError) -> bool:
    """Retries spent on a connection error or a retryable status (not a 4xx)."""
    return error.status_code is None or error.status_code in RETRYABLE_STATUS


def first_text(values: Iterable[Any]) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
