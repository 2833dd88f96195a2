"""An OpenAI-compatible fake chat server on loopback, for tests and benchmarks.

Stdlib only (`http.server.ThreadingHTTPServer`): one thread per connection, HTTP/1.1
keep-alive, so a client holding 32 connections gets 32 requests served at once.

- ``POST /v1/chat/completions``: a deterministic answer. With ``tools`` in the request it
  calls the first tool whose name appears in the last user message (else the first tool)
  with arguments ``{"text": <last user message>}``; without tools it answers
  ``"echo: <last user message>"``. Pass ``responder`` to script any other answer.
- ``GET /v1/models``: the configured model.
- ``POST /v1/embeddings``: OpenAI's embeddings wire format (``input`` a string or a list
  of strings; 400 without it, as OpenAI answers). Each vector is ``embedder(text)``;
  the default hashes the text's lower-cased words into ``embedding_dimensions`` buckets
  (a bag of words), so texts sharing words get similar vectors.
- Faults are scripted per request in arrival order (`FakeOpenAIServer.add_faults`):
  `Fault.status(429, retry_after=0)`, `Fault.status(503, message=...)`,
  `Fault.hang(seconds)` (waits, then answers normally, unless the client gave up),
  `Fault.body({...})` (a 200 with any JSON, e.g. missing fields). Requests beyond the
  script are answered normally.
- ``latency_s`` is slept before every answer; ``in_flight``/``max_in_flight`` count the
  requests being handled at once; with ``hold_until_in_flight=N`` every request waits until
  N requests have been in flight at once (at most ``HOLD_TIMEOUT_S``), so a test can see a
  client's concurrency reach its bound whatever the machine's speed; ``requests`` keeps each request's path, JSON body and
  Authorization header for assertions.

Run it alone (the benchmark does, in a subprocess, so the server and the client do not
share one interpreter lock):
``python tests/fake_openai_server.py --latency-ms 50`` prints ``READY <base_url>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import zlib
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

Responder = Callable[[dict[str, Any]], dict[str, Any]]
Embedder = Callable[[str], list[float]]
HOLD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering normally, for one request."""

    kind: str  # "status" | "hang" | "body"
    status_code: int = 200
    retry_after: float | None = None
    message: str | None = None
    hang_s: float = 0.0
    payload: Any = None

    @classmethod
    def status(cls, code: int, retry_after: float | None = None, message: str | None = None) -> "Fault":
        return cls(kind="status", status_code=code, retry_after=retry_after, message=message)

    @classmethod
    def hang(cls, seconds: float) -> "Fault":
        return cls(kind="hang", hang_s=seconds)

    @classmethod
    def body(cls, payload: Any) -> "Fault":
        return cls(kind="body", payload=payload)


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class _State:
    model: str
    latency_s: float
    api_key: str | None
    responder: Responder | None
    embedder: Embedder | None = None
    hold_until_in_flight: int | None = None
    faults: deque = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.more_in_flight = threading.Condition(self.lock)


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer(...) as server:``; ``server.base_url`` ends in /v1."""

    def __init__(
        self,
        *,
        model: str = "fake-model",
        latency_s: float = 0.0,
        api_key: str | None = None,
        responder: Responder | None = None,
        embedder: Embedder | None = None,
        embedding_dimensions: int = 32,
        hold_until_in_flight: int | None = None,
    ) -> None:
        self._state = _State(
            model=model, latency_s=latency_s, api_key=api_key, responder=responder,
            embedder=embedder or (lambda text: bag_of_words_vector(text, embedding_dimensions)),
            hold_until_in_flight=hold_until_in_flight,
        )
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "FakeOpenAIServer":
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.state = self._state  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()  # wakes hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- configuration and observation
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add_faults(self, *faults: Fault) -> None:
        with self._state.lock:
            self._state.faults.extend(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    @property
    def in_flight(self) -> int:
        return self._state.in_flight


@contextmanager
def fake_openai_server(**kwargs: Any) -> Iterator[FakeOpenAIServer]:
    """Context manager form, for pytest fixtures: ``with fake_openai_server() as s: yield s``."""
    with FakeOpenAIServer(**kwargs) as server:
        yield server


# ------------------------------------------------------------------------------ handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block shutdown
    # listen() backlog, read when the socket is bound (so a class attribute): the default
    # 5 overflows when 32 clients connect at once, and each overflowed connect waits a
    # 1 s SYN retransmit.
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK can add ~40 ms to every response.
    disable_nagle_algorithm = True

    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: tests and the benchmark make thousands of requests

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._serve(body=None)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send_json(400, {"error": {"message": "request body is not JSON"}})
            return
        self._serve(body=body)

    def _serve(self, body: Any) -> None:
        state = self.state
        with state.lock:
            state.requests.append(RecordedRequest(self.command, self.path, body, self.headers.get("Authorization")))
            fault = state.faults.popleft() if state.faults else None
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.more_in_flight.notify_all()
            if state.hold_until_in_flight:
                state.more_in_flight.wait_for(
                    lambda: state.max_in_flight >= state.hold_until_in_flight or state.stopping.is_set(),
                    timeout=HOLD_TIMEOUT_S,
                )
        try:
            if state.latency_s:
                state.stopping.wait(state.latency_s)
            self._answer(body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, body: Any, fault: Fault | None) -> None:
        state = self.state
        if fault is not None and fault.kind == "hang":
            state.stopping.wait(fault.hang_s)
        if fault is not None and fault.kind == "status":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            message = fault.message or f"scripted {fault.status_code}"
            self._send_json(fault.status_code, {"error": {"message": message}}, headers)
            return
        if fault is not None and fault.kind == "body":
            self._send_json(200, fault.payload)
            return
        if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            self._send_json(401, {"error": {"message": "invalid api key"}})
            return
        self._route(body)

    def _route(self, body: Any) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if self.command == "GET" and path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.state.model, "object": "model"}]})
        elif self.command == "POST" and path == "/v1/chat/completions" and isinstance(body, dict):
            self._send_json(200, chat_response(body, self.state.model, self.state.responder))
        elif self.command == "POST" and path == "/v1/embeddings" and isinstance(body, dict):
            self._embeddings(body)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.command} {path}"}})

    def _embeddings(self, body: dict[str, Any]) -> None:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            self._send_json(400, {"error": {"message": "'input' must be a string or a non-empty list of strings",
                                            "type": "invalid_request_error", "param": "input"}})
            return
        tokens = sum(len(text.split()) for text in texts)
        self._send_json(200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": self.state.embedder(t)} for i, t in enumerate(texts)],
            "model": body.get("model", self.state.model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# ------------------------------------------------------------------------------ answers


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def default_answer(request: dict[str, Any]) -> dict[str, Any]:
    """Deterministic assistant message for a request (see the module docstring)."""
    text = last_user_text(request)
    names = [tool.get("function", {}).get("name", "") for tool in request.get("tools") or []]
    if not names:
        return {"role": "assistant", "content": f"echo: {text}"}
    name = next((n for n in names if n and n in text), names[0])
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps({"text": text})}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def bag_of_words_vector(text: str, dimensions: int) -> list[float]:
    """Word counts hashed into `dimensions` buckets (crc32: stable across processes)."""
    vector = [0.0] * dimensions
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    return vector


def chat_response(request: dict[str, Any], model: str, responder: Responder | None = None) -> dict[str, Any]:
    message = (responder or default_answer)(request)
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request.get("messages") or [])
    completion_tokens = max(1, len(json.dumps(message).split()))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", model),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fake",  # an unknown field the client must tolerate
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)
    with FakeOpenAIServer(model=args.model, latency_s=args.latency_ms / 1000) as server:
        print(f"READY {server.base_url}", flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin


if __name__ == "__main__":
    main()
