"""What every loopback fake server in tests/ shares: the server, the handler, recorded
requests and scripted faults. Each fake keeps only its service's routes and answers.

- `LoopbackServer(Handler, **attributes)`: a `ThreadingHTTPServer` on 127.0.0.1 (a free
  port) served from a daemon thread; a context manager. The handler reads `attributes` on
  `self.server` (e.g. the fake's state). `server.wake` ends every hang; `stop` sets it.
- `LoopbackFake`: the base of a fake made of such servers (start, stop, ``with``).
- `LoopbackHandler`: HTTP/1.1 keep-alive, TCP_NODELAY, quiet; `read_body`, `send`,
  `send_json`, `record` (a `RecordedRequest`) and `respond(fault, answer)`, which applies a
  `Fault` around the fake's own answer.
- `Fault`: `status(code, retry_after=, message=)` (an error answer, with Retry-After when
  given), `body(payload, status_code)` (any JSON, e.g. missing fields), `hang(seconds)`
  (no answer until then, or until the server stops; then the normal answer), `drop()`
  (connection closed before the request is processed), `drop_after()` (processed, then
  closed without an answer: what makes naive retries create duplicates), `cut(lines)` (a
  200 whose body stops after n lines, as a dropped stream) and `ok()` (a normal answer, to
  aim a fault at a later request).
- `FaultScript`: faults for the coming requests, in arrival order, each optionally aimed
  at a method, a path (regex) or a service and repeated `times`; optionally also a random
  fault at a given rate from a seeded generator.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

POLL_INTERVAL_S = 0.05  # how often serve_forever looks for a shutdown request


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering normally, for one request."""

    kind: str  # "ok" | "status" | "body" | "hang" | "drop" | "drop_after" | "cut"
    status_code: int = 200
    retry_after: float | None = None
    message: str = "injected fault"
    payload: Any = None
    hang_s: float | None = None  # None: until the server stops
    lines: int = 0

    @classmethod
    def ok(cls) -> Fault:
        return cls("ok")

    @classmethod
    def status(cls, code: int = 500, retry_after: float | None = None, message: str = "injected fault") -> Fault:
        return cls("status", status_code=code, retry_after=retry_after, message=message)

    @classmethod
    def body(cls, payload: Any, status_code: int = 200) -> Fault:
        return cls("body", status_code=status_code, payload=payload)

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        return cls("hang", hang_s=seconds)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def drop_after(cls) -> Fault:
        return cls("drop_after")

    @classmethod
    def cut(cls, lines: int) -> Fault:
        return cls("cut", lines=lines)


# what a flaky service or network does now and then
TRANSIENT_FAULTS = (
    Fault.status(500),
    Fault.status(502),
    Fault.status(503),
    Fault.status(429, retry_after=0),
    Fault.drop(),
    Fault.drop_after(),
    Fault.hang(0.05),
)


@dataclass
class _Aimed:
    fault: Fault
    method: str | None
    path: re.Pattern
    service: str | None
    remaining: int


class FaultScript:
    """Faults for the coming requests (see the module docstring); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aimed: list[_Aimed] = []
        self._rate = 0.0
        self._kinds: tuple[Fault, ...] = TRANSIENT_FAULTS
        self._services: set[str] | None = None
        self._rng = random.Random(0)

    def add(
        self, fault: Fault, *, method: str | None = None, path: str = ".*", service: str | None = None, times: int = 1
    ) -> None:
        if times > 0:
            with self._lock:
                self._aimed.append(_Aimed(fault, method, re.compile(path), service, times))

    def extend(self, faults: Iterable[Fault]) -> None:
        """One fault a request, in this order, whatever the request."""
        for fault in faults:
            self.add(fault)

    def set_rate(
        self, rate: float, *, seed: int = 0, kinds: Iterable[Fault] | None = None, services: Iterable[str] | None = None
    ) -> None:
        """Each request (to one of `services`, default all) gets one of `kinds` with chance `rate`."""
        with self._lock:
            self._rate, self._rng = rate, random.Random(seed)
            self._kinds = tuple(kinds or TRANSIENT_FAULTS)
            self._services = None if services is None else set(services)

    def take(self, method: str = "", path: str = "", service: str | None = None) -> Fault | None:
        """The fault for this request, if any: the first aimed at it, else maybe a random one."""
        with self._lock:
            for aimed in self._aimed:
                if aimed.method in (None, method) and aimed.service in (None, service) and aimed.path.search(path):
                    aimed.remaining -= 1
                    if aimed.remaining == 0:
                        self._aimed.remove(aimed)
                    return aimed.fault
            if self._rate and (self._services is None or service in self._services) and self._rng.random() < self._rate:
                return self._rng.choice(self._kinds)
        return None


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any
    authorization: str | None
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    service: str = ""
    outcome: str = "ok"  # "ok" or the kind of fault it got


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block shutdown
    block_on_close = False
    # listen() backlog, read when the socket is bound: the default 5 overflows when 32
    # clients connect at once, and each overflowed connect waits a 1 s SYN retransmit
    request_queue_size = 256
    wake: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout, a test's drop): not the server's problem


class LoopbackServer:
    """``with LoopbackServer(Handler, state=...) as server:`` serves on ``server.base_url``."""

    def __init__(
        self, handler_class: type[BaseHTTPRequestHandler], *, wake: threading.Event | None = None, **attributes: Any
    ) -> None:
        self.handler_class = handler_class
        self.attributes = attributes
        self.wake = wake or threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LoopbackServer:
        self.wake.clear()
        httpd = _Server(("127.0.0.1", 0), self.handler_class)
        httpd.wake = self.wake
        for name, value in self.attributes.items():
            setattr(httpd, name, value)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            daemon=True,
            name=f"loopback-{self.handler_class.__qualname__}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        stop_all([self])

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"


class LoopbackFake:
    """A fake service made of loopback servers (`loopback_servers`): start, stop, ``with``."""

    loopback_servers: list[LoopbackServer]

    def start(self) -> Self:
        for server in self.loopback_servers:
            server.start()
        return self

    def stop(self) -> None:
        stop_all(self.loopback_servers)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_all(servers: Iterable[LoopbackServer]) -> None:
    """Stop servers at once: each shutdown waits up to one serve_forever poll."""
    running = [s for s in servers if s._httpd is not None]
    for server in running:
        server.wake.set()  # wakes hanging handlers
    stoppers = [threading.Thread(target=s._httpd.shutdown) for s in running]  # type: ignore[union-attr]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()
    for server in running:
        server._httpd.server_close()  # type: ignore[union-attr]
        server._thread.join(timeout=5)  # type: ignore[union-attr]
        server._httpd = server._thread = None


Answer = tuple[int, bytes, dict[str, str]]  # status, body, headers (default Content-Type: JSON)


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, json.dumps(payload).encode(), headers or {}


class LoopbackHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests
    # headers and body go out in two writes: without TCP_NODELAY, Nagle plus the client's
    # delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: tests and benchmarks make thousands of requests

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def record(self, body: Any, **fields: Any) -> RecordedRequest:
        return RecordedRequest(
            self.command,
            fields.pop("path", self.path),
            body,
            self.headers.get("Authorization"),
            headers={k.lower(): v for k, v in self.headers.items()},
            **fields,
        )

    def send(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send(*json_answer(status, payload, headers))

    def error_payload(self, message: str) -> Any:
        """The service's error body for an injected status fault."""
        return {"detail": message}

    def respond(self, fault: Fault | None, answer: Callable[[], Answer]) -> None:
        """Send the fake's `answer()`, or what `fault` does instead."""
        kind = fault.kind if fault is not None else "ok"
        if kind == "drop":
            self.close_connection = True
            return
        if kind == "status":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self.send_json(fault.status_code, self.error_payload(fault.message), headers)
            return
        if kind == "body":
            self.send_json(fault.status_code, fault.payload)
            return
        if kind == "hang":
            self.server.wake.wait(fault.hang_s)
        result = answer()
        if kind == "drop_after":
            self.close_connection = True
        elif kind == "cut":
            status, body, headers = result
            first_lines = b"".join(body.splitlines(keepends=True)[: fault.lines])
            self.send(status, first_lines, headers, length=len(body) + 1)  # promises more than comes
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send(*result)
