"""HTTP plumbing shared by the OpenAI-compatible client and the NeMo clients: what is worth
retrying, how long to wait, and one TLS context per process.

`retry` runs an attempt until it returns, retrying `Retryable` failures (HTTP 429 and 5xx,
connection errors, timeouts) with exponential backoff and jitter: retry n waits
``min(max_backoff_s, backoff_s * 2**n) * uniform(0.5, 1.0)``, or what ``Retry-After``
asked (capped). Each client turns the last failure into its own error type.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))


class Retryable(Exception):
    """One attempt failed in a way worth another attempt.

    ``ambiguous``: the server may have acted on the request (it was sent, but no valid
    answer came back), so a creating call should look for its result before repeating.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        ambiguous: bool = True,
        status_code: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.ambiguous = ambiguous
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0  # a server asking for longer is treated as asking for this

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ValueError("max_retries and backoff_s must not be negative")

    def delay_s(self, retry_number: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        # jitter: calls that failed together (a restarting server) do not retry together
        return min(self.max_backoff_s, self.backoff_s * 2**retry_number) * random.uniform(0.5, 1.0)


def retry(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    give_up: Callable[[Retryable, str], Exception],
    recover: Callable[[], T | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``attempt()`` until it returns, retrying `Retryable` failures under ``policy``.

    After an ambiguous failure, ``recover()`` (when given) is asked whether the request
    took effect, after the last attempt too; a non-None answer is returned instead of
    attempting again. Retries spent: raises ``give_up(last failure, "N attempts")``.
    """
    for number in range(policy.max_retries + 1):
        try:
            return attempt()
        except Retryable as failure:
            spent = number == policy.max_retries
            recoverable = failure.ambiguous and recover is not None
            if recoverable or not spent:
                sleep(policy.delay_s(number, failure.retry_after_s))
            if recoverable:
                found = recover()
                if found is not None:
                    return found
            if spent:
                raise give_up(failure, f"{number + 1} attempt{'s' if number else ''}") from None
    raise AssertionError("unreachable")  # the loop always returns or raises


def send_once(request: Callable[[], httpx.Response], *, timeout_s: float, where: str = "") -> httpx.Response:
    """One HTTP attempt's response; a failure to get one as `Retryable`. A connection that
    never reached the server is safe to send again (not ambiguous); a timeout or a
    connection broken mid-request may have been acted on (ambiguous). ``where`` names the
    call in messages when the caller's own error does not."""
    calling = f" calling {where}" if where else ""
    try:
        return request()
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        to = f" to {where}" if where else ""
        raise Retryable(f"cannot connect{to}: {type(error).__name__}: {error}", ambiguous=False) from None
    except httpx.TimeoutException:
        raise Retryable(f"timed out after {timeout_s:g}s{calling}") from None
    except httpx.TransportError as error:
        raise Retryable(f"connection error{calling}: {type(error).__name__}: {error}") from None


def raise_if_retryable(
    response: httpx.Response,
    *,
    where: str = "",
    detail: Callable[[httpx.Response], str] = lambda response: response.text[:200].strip(),
) -> None:
    """`Retryable` for HTTP 429 (refused: not ambiguous) and 5xx (may have been acted on);
    ``detail`` is what of the response may be shown (redact secrets)."""
    if response.status_code in RETRYABLE_STATUS:
        shown = detail(response)
        raise Retryable(
            f"HTTP {response.status_code}" + (f" from {where}" if where else "") + (f": {shown}" if shown else ""),
            retry_after_s=retry_after_s(response),
            ambiguous=response.status_code != 429,
            status_code=response.status_code,
            detail=shown,
        )


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process: loading the CA bundle
    takes ~20 ms of CPU, too much to repeat for every worker's client. Built under a lock:
    otherwise the 32 workers of a first call all find it missing at once and build 32
    contexts, one after another under the GIL (~0.5 s)."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context
