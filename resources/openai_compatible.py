"""A `ChatBackend` for any OpenAI-compatible chat-completions endpoint (NIM, vLLM, OpenAI).

`OpenAICompatibleBackend.complete` runs `max_concurrency` worker threads, each owning an
`httpx.Client` with one keep-alive connection, that take the prompts in turn: at most
`max_concurrency` requests are in flight, by construction, and connections are reused,
not re-opened. Threads rather than asyncio because, measured on 2 cores against the
fake server (50 ms latency, 1,000 requests, concurrency 32), httpx's sync path costs
less CPU per request than its anyio-based async path (~0.55 ms vs ~0.75 ms), and that
overhead is what separates elapsed time from the ideal (see
benchmarks/eval_throughput.py: ideal/elapsed ~0.87). One client per worker, not one
shared pool: httpcore's pool scans every connection for every queued request, which at
32 connections cost more CPU than the requests themselves. A worker keeps its slot
while it waits to retry, so a rate-limited endpoint is not hit harder by the others.
`complete` is plain sync code, safe to call from inside a running event loop.

The transport under it (`OpenAICompatibleEndpoint`: base URL, API key, clients, retries,
error messages) is shared with the embeddings client (`resources.embeddings`).

Failures never raise out of `complete`: after the retries are spent the prompt's
`Completion` carries an `error` that names the endpoint URL, the model and what went
wrong, and never the API key.

Retried: HTTP 429 (waiting what `Retry-After` asks, capped), 5xx, connection errors and
timeouts, with exponential backoff and jitter (`resources.http.retry`): attempt n waits
``min(30, backoff_s * 2**n) * uniform(0.5, 1.0)``. Not retried: other 4xx and responses that do
not match the chat-completions schema (asking again would give the same answer).

Tool-call arguments arrive as a JSON string; they are parsed into a dict. Arguments
that are not a JSON object (bad JSON, a list, a number) are kept as
``{"__raw__": "<the text>"}`` (`RAW_ARGUMENTS_KEY`), so the metric scores the call wrong
("unparseable arguments") instead of the evaluation crashing; empty arguments mean ``{}``.

``timeout_s`` is httpx's: it bounds connecting and each read, so a server that stops
answering fails after ``timeout_s``.

Latency is that of the attempt that succeeded (time to the full response), so retries
and backoff waits do not inflate a model's latency; a failed prompt's latency is the
total time spent on it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flywheel_assets.core.chat import AssistantMessage, ChatPrompt, Completion, FunctionCall, ToolCall
from flywheel_assets.core.metrics import RAW_ARGUMENTS_KEY  # the metric recognises such calls
from resources.http import RetryPolicy, raise_if_retryable, retry, send_once, shared_ssl_context

T = TypeVar("T")


# ---------------------------------------------------------------------------- wire models


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")  # servers add fields; we read what we need


class WireFunction(_Wire):
    name: str
    arguments: str | dict[str, Any] | None = None


class WireToolCall(_Wire):
    id: str | None = None
    type: str = "function"
    function: WireFunction


class WireMessage(_Wire):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None


class WireChoice(_Wire):
    index: int = 0
    message: WireMessage
    finish_reason: str | None = None


class WireUsage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None


class ChatCompletionResponse(_Wire):
    choices: list[WireChoice] = Field(min_length=1)
    usage: WireUsage | None = None
    model: str | None = None


class ChatCompletionRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class WireModel(_Wire):
    id: str


class ModelList(_Wire):
    data: list[WireModel]


# ------------------------------------------------------------------------------- errors


class EndpointError(Exception):
    """A call that failed for good; the message names the URL and model, never the key."""


# ----------------------------------------------------------------------------- endpoint


class OpenAICompatibleEndpoint:
    """The transport every OpenAI-compatible client shares (chat here, embeddings in
    `resources.embeddings`): base URL, bearer key, one-connection httpx clients, one attempt
    as JSON or `Retryable` / `EndpointError`, and retries whose final error names the URL and
    model but never the key. Subclasses add the calls their kind of model answers."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key  # private: kept out of repr, logs and errors
        self.timeout_s = timeout_s
        self._retry_policy = RetryPolicy(max_retries=max_retries, backoff_s=backoff_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    # -- internals shared by the clients
    def _client(self) -> httpx.Client:
        """A client with a single keep-alive connection (the chat backend opens one per worker)."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers=headers,
            verify=shared_ssl_context(),
        )

    def _send(self, client: httpx.Client, method: str, url: str, body: Any) -> Any:
        """One HTTP attempt: the JSON payload, or Retryable / EndpointError."""
        where = f"{url} (model {self.model})"
        response = send_once(lambda: client.request(method, url, json=body), timeout_s=self.timeout_s, where=where)
        raise_if_retryable(response, where=where)
        if response.status_code >= 400:
            raise EndpointError(_status_message(response, where))
        try:
            return response.json()
        except ValueError:
            raise EndpointError(f"response from {where} is not JSON: {response.text[:200]!r}") from None

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        """Run `attempt` up to 1 + max_retries times; the last failure becomes EndpointError."""
        try:
            return retry(
                attempt,
                self._retry_policy,
                give_up=lambda failure, attempts: EndpointError(f"{failure} ({attempts})"),
            )
        except EndpointError as error:
            raise EndpointError(self._redact(str(error))) from None

    def _invalid(self, url: str, error: ValidationError) -> str:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '<root>'}: {issue['msg']}"
            for issue in error.errors()[:5]
        )
        return f"invalid response from {url} (model {self.model}): {problems}"

    def _redact(self, text: str) -> str:
        """Belt and braces: a server could echo the key back in an error body."""
        return text.replace(self._api_key, "***") if self._api_key else text


# ------------------------------------------------------------------------------ backend


class OpenAICompatibleBackend(OpenAICompatibleEndpoint):
    """Chat completions from ``POST {base_url}/chat/completions`` (base_url ends in /v1)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 512,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be at least 1 and max_retries at least 0")
        super().__init__(
            base_url, model, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s
        )
        self.max_concurrency = max_concurrency
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.tool_choice = tool_choice

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # -- public API
    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        """One `Completion` per prompt, in order; failures carry `error`, never raise.

        `max_concurrency` worker threads, each with its own one-connection client, take
        the prompts in turn, so at most `max_concurrency` requests are in flight.
        """
        if not prompts:
            return []
        results: list[Completion | None] = [None] * len(prompts)
        pending = iter(enumerate(prompts))
        lock = threading.Lock()

        def next_prompt() -> tuple[int, ChatPrompt] | None:
            with lock:
                return next(pending, None)

        def worker() -> None:
            with self._client() as client:
                while (item := next_prompt()) is not None:
                    results[item[0]] = self._complete_one(client, item[1])

        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-compatible") as pool:
            for future in [pool.submit(worker) for _ in range(workers)]:
                future.result()  # re-raises a bug in a worker instead of losing answers
        return [completion for completion in results if completion is not None]

    def list_models(self) -> list[str]:
        """Model ids served by the endpoint (``GET {base_url}/models``); raises EndpointError."""
        url = f"{self.base_url}/models"
        with self._client() as client:
            payload = self._with_retries(lambda: self._send(client, "GET", url, None))
        try:
            return [model.id for model in ModelList.model_validate(payload).data]
        except ValidationError as error:
            raise EndpointError(self._redact(self._invalid(url, error))) from None

    # -- internals
    def _complete_one(self, client: httpx.Client, prompt: ChatPrompt) -> Completion:
        started = time.perf_counter()
        body = self._request_body(prompt)
        try:
            response, latency_s = self._with_retries(lambda: self._post_once(client, body))
            return self._to_completion(response, latency_s)
        except EndpointError as error:
            return Completion(error=str(error), latency_s=time.perf_counter() - started)

    def _request_body(self, prompt: ChatPrompt) -> dict[str, Any]:
        request = ChatCompletionRequest(
            model=self.model,
            messages=[_wire_message(m) for m in prompt.messages],
            tools=prompt.tools or None,
            tool_choice=self.tool_choice if prompt.tools else None,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        return request.model_dump(exclude_none=True)

    def _post_once(self, client: httpx.Client, body: dict[str, Any]) -> tuple[ChatCompletionResponse, float]:
        started = time.perf_counter()
        payload = self._send(client, "POST", self.chat_url, body)
        try:
            parsed = ChatCompletionResponse.model_validate(payload)
        except ValidationError as error:
            raise EndpointError(self._invalid(self.chat_url, error)) from None
        return parsed, time.perf_counter() - started

    def _to_completion(self, response: ChatCompletionResponse, latency_s: float) -> Completion:
        usage = response.usage or WireUsage()
        return Completion(
            message=to_assistant_message(response.choices[0].message),
            latency_s=latency_s,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )


# ------------------------------------------------------------------------------ helpers


def to_assistant_message(message: WireMessage) -> AssistantMessage:
    """OpenAI wire message (arguments as a JSON string) to our parsed AssistantMessage."""
    calls = [
        ToolCall(
            id=call.id,
            function=FunctionCall(name=call.function.name, arguments=parse_arguments(call.function.arguments)),
        )
        for call in message.tool_calls or []
    ]
    return AssistantMessage(content=message.content, tool_calls=calls or None)


def parse_arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """A JSON object string to a dict; anything else kept under RAW_ARGUMENTS_KEY."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {RAW_ARGUMENTS_KEY: arguments}
    return parsed if isinstance(parsed, dict) else {RAW_ARGUMENTS_KEY: arguments}


def _wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI expects tool-call arguments as a JSON string; records may hold them parsed."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [_wire_tool_call(call) for call in calls]}


def _wire_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        return call
    return {**call, "function": {**function, "arguments": json.dumps(arguments or {}, ensure_ascii=False)}}


def _status_message(response: httpx.Response, where: str) -> str:
    detail = response.text[:200].strip()
    return f"HTTP {response.status_code} from {where}" + (f": {detail}" if detail else "")
