"""An OpenAI-compatible fake chat server on loopback, for tests and benchmarks.

Stdlib only (`loopback.LoopbackServer`): one thread per connection, HTTP/1.1 keep-alive,
so a client holding 32 connections gets 32 requests served at once.

- ``POST /v1/chat/completions``: a deterministic answer. With ``tools`` in the request it
  calls the first tool whose name appears in the last user message (else the first tool)
  with arguments ``{"text": <last user message>}``; without tools it answers
  ``"echo: <last user message>"``. Pass ``responder`` to script any other answer.
- ``GET /v1/models``: the configured model.
- ``POST /v1/embeddings``: OpenAI's embeddings wire format (``input`` a string or a list
  of strings; 400 without it, as OpenAI answers). Each vector is ``embedder(text)``;
  the default hashes the text's lower-cased words into ``embedding_dimensions`` buckets
  (a bag of words), so texts sharing words get similar vectors.
- Faults are scripted per request in arrival order (`FakeOpenAIServer.add_faults`), any
  of `loopback.Fault`'s, e.g. `Fault.status(429, retry_after=0)`, `Fault.status(503,
  message=...)`, `Fault.hang(seconds)` (waits, then answers normally, unless the client
  gave up), `Fault.body({...})` (a 200 with any JSON, e.g. missing fields). Requests
  beyond the script are answered normally.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loopback import (
    Answer,
    Fault,
    FaultScript,
    LoopbackFake,
    LoopbackHandler,
    LoopbackServer,
    RecordedRequest,
    json_answer,
)

Responder = Callable[[dict[str, Any]], dict[str, Any]]
Embedder = Callable[[str], list[float]]
HOLD_TIMEOUT_S = 30.0


@dataclass
class _State:
    model: str
    latency_s: float
    api_key: str | None
    responder: Responder | None
    embedder: Embedder | None = None
    hold_until_in_flight: int | None = None
    faults: FaultScript = field(default_factory=FaultScript)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.more_in_flight = threading.Condition(self.lock)


class FakeOpenAIServer(LoopbackFake):
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
            model=model,
            latency_s=latency_s,
            api_key=api_key,
            responder=responder,
            embedder=embedder or (lambda text: bag_of_words_vector(text, embedding_dimensions)),
            hold_until_in_flight=hold_until_in_flight,
        )
        self.loopback_servers = [LoopbackServer(_Handler, wake=self._state.stopping, state=self._state)]

    @property
    def base_url(self) -> str:
        return f"{self.loopback_servers[0].base_url}/v1"

    def add_faults(self, *faults: Fault) -> None:
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


fake_openai_server = FakeOpenAIServer  # the name tests use: ``with fake_openai_server() as s: yield s``


# ------------------------------------------------------------------------------ handler


class _Handler(LoopbackHandler):
    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined]

    def error_payload(self, message: str) -> Any:
        return {"error": {"message": message}}

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._serve(body=None)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self.send_json(400, self.error_payload("request body is not JSON"))
            return
        self._serve(body=body)

    def _serve(self, body: Any) -> None:
        state = self.state
        with state.lock:
            state.requests.append(self.record(body))
            fault = state.faults.take()
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
            self.respond(fault, lambda: self._answer(body))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, body: Any) -> Answer:
        state = self.state
        if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            return json_answer(401, self.error_payload("invalid api key"))
        path = self.path.split("?", 1)[0].rstrip("/")
        if self.command == "GET" and path == "/v1/models":
            return json_answer(200, {"object": "list", "data": [{"id": state.model, "object": "model"}]})
        if self.command == "POST" and path == "/v1/chat/completions" and isinstance(body, dict):
            return json_answer(200, chat_response(body, state.model, state.responder))
        if self.command == "POST" and path == "/v1/embeddings" and isinstance(body, dict):
            return self._embeddings(body)
        return json_answer(404, self.error_payload(f"no route {self.command} {path}"))

    def _embeddings(self, body: dict[str, Any]) -> Answer:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return json_answer(
                400,
                {
                    "error": {
                        "message": "'input' must be a string or a non-empty list of strings",
                        "type": "invalid_request_error",
                        "param": "input",
                    }
                },
            )
        tokens = sum(len(text.split()) for text in texts)
        return json_answer(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": self.state.embedder(t)}
                    for i, t in enumerate(texts)
                ],
                "model": body.get("model", self.state.model),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


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
