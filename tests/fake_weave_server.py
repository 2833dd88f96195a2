"""A fake W&B Weave trace server on loopback, for tests and benchmarks.

The `weave` package ships no local trace server, so this one speaks just enough of the
trace server's HTTP API for `WeaveTraceSource` (which uses weave's own
`RemoteHTTPTraceServer` binding):

- ``POST /calls/stream_query``: JSON Lines, one call per line, as the real route. It
  honours ``project_id``; ``filter.op_names`` (op refs ``weave:///e/p/op/name:digest``,
  ``...:*`` for every version, or a bare op name) and ``filter.call_ids``; a mongo-like
  ``query`` (``$and``/``$or``/``$not``/``$eq``/``$gt``/``$gte``/``$lt``/``$lte``/``$in``/
  ``$contains`` over ``$getField`` paths and ``$literal`` values, timestamps as epoch
  seconds, ``$convert`` ``to: "exists"``); ``sort_by`` ``started_at`` or ``ended_at``, then
  ``id`` (ascending); ``limit``/``offset``; ``columns``; ``include_feedback``;
  ``latest_only``.
- ``GET /health`` and ``GET /server_info``.

Like the real server (weave >= 0.54 writes through ``calls_complete``):

- **a call becomes visible when it ends**, keeping its original ``started_at``
  (`start_call` / `end_call`); `add_calls` stores calls as they are (an unfinished one is
  visible unfinished, as weave's eager ops and the legacy start/end path make them);
- **an updated call has several physical versions** (the ``calls_complete`` table is a
  ReplacingMergeTree) until merged: a query without ``latest_only`` matches and returns
  each version, one with ``latest_only: true`` only the newest;
- **reactions** (`add_reaction`) are stored as ``wandb.reaction.1`` feedback with the
  payload the server writes (``emoji``, ``alias``, ``detoned``, ``detoned_alias``) and
  returned in ``summary.weave.feedback`` only when the query asks ``include_feedback``.

Calls are kept per project in one array of ``started_at`` microseconds, sorted by
(started_at, id), so a ``started_at`` bound is a bisection and a query costs
O(log history + calls returned), not O(history). A benchmark can add millions of
synthetic calls (`add_synthetic`): they are generated on demand from their index, so
history costs 16 bytes a call.

Faults (`loopback.Fault`) are scripted per ``stream_query`` request in arrival order
(`add_faults`): e.g. `Fault.status(500)` (an error answer), `Fault.cut(n)` (a 200 whose
stream stops after n lines, as a dropped connection) and `Fault.ok()` (a normal answer, to
aim a fault at a later request). `requests` keeps every request's path, body and
Authorization header; `calls_served` counts the calls sent.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
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

ALWAYS_INCLUDED = ("id", "project_id", "trace_id", "op_name", "started_at")


def to_micros(value: Any) -> int:
    """A started_at (datetime, ISO string or epoch seconds) as epoch microseconds."""
    if isinstance(value, (int, float)):
        return round(value * 1_000_000)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(micros: int) -> str:
    seconds, us = divmod(micros, 1_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def op_ref(entity: str, project: str, name: str, digest: str = "v0digest") -> str:
    return f"weave:///{entity}/{project}/op/{name}:{digest}"


class _Store:
    """The calls of one project, sorted by (started_at, id)."""

    def __init__(self) -> None:
        self.starts = array("q")  # started_at, epoch microseconds
        self.refs = array("q")  # >= 0: synthetic call number; < 0: -1 - index into explicit
        self.explicit: list[dict[str, Any]] = []
        self.by_id: dict[str, int] = {}  # explicit call id -> index of its newest version
        self.synthetic: Callable[[int], dict[str, Any]] | None = None
        self.synthetic_ids: Callable[[str], int | None] | None = None
        self.synthetic_count = 0

    def call_at(self, position: int) -> dict[str, Any]:
        ref = self.refs[position]
        if ref < 0:
            return self.explicit[-1 - ref]
        assert self.synthetic is not None
        return self.synthetic(ref)

    def id_at(self, position: int) -> str:
        return self.call_at(position)["id"]

    def is_latest(self, position: int) -> bool:
        ref = self.refs[position]
        return ref >= 0 or self.by_id[self.explicit[-1 - ref]["id"]] == -1 - ref

    def add(self, call: dict[str, Any]) -> None:
        micros = call["_micros"]
        lo = bisect.bisect_left(self.starts, micros)
        hi = bisect.bisect_right(self.starts, micros)
        while lo < hi and self.id_at(lo) < call["id"]:
            lo += 1
        self.by_id[call["id"]] = len(self.explicit)
        self.starts.insert(lo, micros)
        self.refs.insert(lo, -1 - len(self.explicit))
        self.explicit.append(call)

    def find(self, call_id: str) -> list[int]:
        """The positions of a call's versions, by id."""
        if call_id in self.by_id:
            micros = self.explicit[self.by_id[call_id]]["_micros"]
        elif self.synthetic_ids and (number := self.synthetic_ids(call_id)) is not None:
            micros = self.synthetic(number)["_micros"]  # type: ignore[misc]
        else:
            return []
        lo = bisect.bisect_left(self.starts, micros)
        hi = bisect.bisect_right(self.starts, micros)
        return [p for p in range(lo, hi) if self.id_at(p) == call_id]


class FakeWeaveServer(LoopbackFake):
    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self._stores: dict[str, _Store] = {}
        self._lock = threading.Lock()
        self._faults = FaultScript()
        self._running: dict[str, dict[str, Any]] = {}  # started, not visible until they end
        self._feedback: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self.calls_served = 0
        self.loopback_servers = [LoopbackServer(_Handler, fake=self)]

    @property
    def base_url(self) -> str:
        return self.loopback_servers[0].base_url

    # data ------------------------------------------------------------------------------
    def _store(self, project_id: str) -> _Store:
        return self._stores.setdefault(project_id, _Store())

    def add_calls(self, calls: Iterable[dict[str, Any]]) -> None:
        """Store calls (`id`, `project_id`, `op_name`, `started_at`, ... as the wire format),
        visible at once. A call already stored gets a new version (the old one stays, as in
        the real table before a merge)."""
        with self._lock:
            for call in calls:
                call = dict(call)
                micros = to_micros(call["started_at"])
                call["_micros"] = micros
                call["started_at"] = iso(micros)
                if call.get("ended_at") is not None:
                    call["ended_at"] = iso(to_micros(call["ended_at"]))
                call.setdefault("trace_id", call["id"])
                call.setdefault("parent_id", None)
                call.setdefault("attributes", {})
                call.setdefault("inputs", {})
                self._store(call["project_id"]).add(call)

    def start_call(self, call: dict[str, Any]) -> None:
        """A call that started and runs: weave (calls_complete) uploads it only when it
        ends, so no query sees it until `end_call`."""
        with self._lock:
            self._running[call["id"]] = {k: v for k, v in call.items() if k not in ("ended_at", "output")}

    def end_call(self, call_id: str, ended_at: Any, **fields: Any) -> None:
        """The call ends: it becomes visible, with its original `started_at`."""
        with self._lock:
            call = self._running.pop(call_id)
        self.add_calls([{**call, **fields, "ended_at": ended_at}])

    def add_reaction(self, project_id: str, call_id: str, emoji: str) -> None:
        """A reaction on a call, stored with the payload the real server writes."""
        detoned = "".join(ch for ch in emoji if not 0x1F3FB <= ord(ch) <= 0x1F3FF)
        if not detoned or len(detoned) > 2:  # the real server: "exactly one emoji"
            raise ValueError("Value of emoji key in payload must be exactly one emoji")
        aliases = {"👍": ":thumbs_up:", "👎": ":thumbs_down:"}
        payload = {
            "emoji": emoji,
            "alias": aliases.get(emoji, emoji),
            "detoned": detoned,
            "detoned_alias": aliases.get(detoned, detoned),
        }
        with self._lock:
            self._feedback.setdefault((project_id, call_id), []).append(
                {
                    "feedback_type": "wandb.reaction.1",
                    "weave_ref": f"weave:///{project_id}/call/{call_id}",
                    "payload": payload,
                }
            )

    def add_synthetic(
        self,
        project_id: str,
        count: int,
        first_micros: int,
        step_micros: int,
        make: Callable[[int, int], dict[str, Any]],
        id_prefix: str = "syn-",
    ) -> None:
        """`count` calls started every `step_micros`, built on demand by `make(n, micros)`.

        Synthetic calls must start after every call already in the project (a benchmark
        loads history first); their ids are `<id_prefix><n:012d>`.
        """
        with self._lock:
            store = self._store(project_id)
            assert store.synthetic is None, "one synthetic series per project"
            assert not store.starts or first_micros >= store.starts[-1]

            def synthetic(n: int) -> dict[str, Any]:
                micros = first_micros + n * step_micros
                call = make(n, micros)
                call.update(id=f"{id_prefix}{n:012d}", project_id=project_id, _micros=micros, started_at=iso(micros))
                call.setdefault("trace_id", call["id"])
                return call

            def number(call_id: str) -> int | None:
                if call_id.startswith(id_prefix) and call_id[len(id_prefix) :].isdigit():
                    n = int(call_id[len(id_prefix) :])
                    return n if n < count else None
                return None

            store.synthetic, store.synthetic_ids, store.synthetic_count = synthetic, number, count
            store.starts.extend(range(first_micros, first_micros + count * step_micros, step_micros))
            store.refs.extend(range(count))

    def add_faults(self, *faults: Fault) -> None:
        self._faults.extend(faults)

    # query -----------------------------------------------------------------------------
    def stream_query(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        store = self._stores.get(body["project_id"])
        if store is None:
            return
        flt = body.get("filter") or {}
        expr = (body.get("query") or {}).get("$expr")
        by_end = _check_sort(body.get("sort_by"))
        lo_us, hi_us = _started_at_bounds(expr)
        offset, limit = body.get("offset") or 0, body.get("limit")
        columns = body.get("columns")
        op_match = _op_matcher(flt.get("op_names"))
        latest_only = body.get("latest_only") is True
        with self._lock:
            if flt.get("call_ids"):
                positions: Iterable[int] = sorted(p for i in flt["call_ids"] for p in store.find(i))
            else:
                lo = 0 if lo_us is None else bisect.bisect_left(store.starts, lo_us)
                hi = len(store.starts) if hi_us is None else bisect.bisect_right(store.starts, hi_us)
                positions = range(lo, hi)
            rows = (store.call_at(p) for p in positions if not latest_only or store.is_latest(p))
            matches = (c for c in rows if op_match(c["op_name"]) and (expr is None or _evaluate(expr, c)))
            if by_end:  # every match of the started_at range, then ordered by end
                matches = iter(
                    sorted(matches, key=lambda c: (to_micros(c["ended_at"]) if c.get("ended_at") else -1, c["id"]))
                )
            out = []
            for call in matches:
                if offset:
                    offset -= 1
                    continue
                out.append(self._with_feedback(_project(call, columns), body.get("include_feedback")))
                if limit is not None and len(out) >= limit:
                    break
        self.calls_served += len(out)
        yield from out

    def _with_feedback(self, call: dict[str, Any], include: bool | None) -> dict[str, Any]:
        items = self._feedback.get((call["project_id"], call["id"]))
        if not include or not items:
            return call
        summary = dict(call.get("summary") or {})
        summary["weave"] = {**summary.get("weave", {}), "feedback": items}
        return {**call, "summary": summary}


def _check_sort(sort_by: Any) -> bool:
    """True when the query sorts by ended_at (else by started_at, the table's order)."""
    fields = [(s["field"], s.get("direction", "asc")) for s in sort_by or []]
    for first in ("started_at", "ended_at"):
        allowed = [(first, "asc"), ("id", "asc")]
        if not fields or fields == allowed[: len(fields)]:
            return bool(fields) and first == "ended_at"
    raise ValueError(f"the fake sorts by started_at or ended_at, then id, ascending only; got {fields}")


def _op_matcher(op_names: list[str] | None) -> Callable[[str], bool]:
    """Op refs match exactly; `...:*` matches every version; a bare name matches its ops."""
    if not op_names:
        return lambda _: True
    exact = {n for n in op_names if not n.endswith(":*")}
    prefixes = tuple(n[:-1] for n in op_names if n.endswith(":*"))

    def match(op_name: str) -> bool:
        if op_name in exact or (prefixes and op_name.startswith(prefixes)):
            return True
        bare = op_name.rsplit("/op/", 1)[-1].split(":", 1)[0]
        return bare in exact

    return match


def _project(call: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
    if columns is None:
        return {k: v for k, v in call.items() if not k.startswith("_")}
    keep = set(columns) | set(ALWAYS_INCLUDED)
    return {k: v for k, v in call.items() if k in keep}


def _getfield(call: dict[str, Any], path: str) -> Any:
    if path in ("started_at", "ended_at"):
        value = call.get(path)
        return None if value is None else to_micros(value) / 1_000_000
    value: Any = call
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _operand(op: Any, call: dict[str, Any]) -> Any:
    if isinstance(op, dict) and "$getField" in op:
        return _getfield(call, op["$getField"])
    if isinstance(op, dict) and "$literal" in op:
        return op["$literal"]
    if isinstance(op, dict) and "$convert" in op:
        value = _operand(op["$convert"]["input"], call)
        return value is not None if op["$convert"]["to"] == "exists" else value
    return _evaluate(op, call)


def _compare(op: str, a: Any, b: Any) -> bool:
    try:
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op] if a is not None else False
    except TypeError:
        return False


def _evaluate(expr: dict[str, Any], call: dict[str, Any]) -> Any:
    ((op, args),) = expr.items()
    if op == "$convert":
        return _operand(expr, call)
    if op == "$contains":
        text, part = _operand(args["input"], call), _operand(args["substr"], call)
        return isinstance(text, str) and part in text
    if op == "$and":
        return all(_evaluate(e, call) for e in args)
    if op == "$or":
        return any(_evaluate(e, call) for e in args)
    if op == "$not":
        return not _evaluate(args[0], call)
    if op == "$eq":
        return _operand(args[0], call) == _operand(args[1], call)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(op, _operand(args[0], call), _operand(args[1], call))
    if op == "$in":
        return _operand(args[0], call) in [_operand(a, call) for a in args[1]]
    raise ValueError(f"operator {op} is not supported by the fake")


def _started_at_bounds(expr: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """[lo, hi] microsecond bounds implied by top-level started_at comparisons (inclusive)."""
    lo = hi = None
    if not expr:
        return lo, hi
    terms = expr["$and"] if "$and" in expr else [expr]
    for term in terms:
        ((op, args),) = term.items()
        if op not in ("$gt", "$gte", "$lt", "$lte") or len(args) != 2:
            continue
        field_, literal = args
        if field_ != {"$getField": "started_at"} or not isinstance(literal, dict) or "$literal" not in literal:
            continue
        micros = round(literal["$literal"] * 1_000_000)
        if op in ("$gt", "$gte"):
            lo = micros if lo is None else max(lo, micros)
        else:
            hi = micros if hi is None else min(hi, micros)
    return lo, hi


class _Handler(LoopbackHandler):
    @property
    def fake(self) -> FakeWeaveServer:
        return self.server.fake  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.fake.requests.append(self.record(None))
        if self.path in ("/health", "/server_info"):
            self.send_json(200, {"min_required_weave_python_version": "0.0.0"})
        else:
            self.send_json(404, {"detail": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        raw = self.read_body()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        auth = self.headers.get("Authorization")
        self.fake.requests.append(self.record(body))
        if self.fake.api_key is not None and auth != _basic(self.fake.api_key):
            return self.send_json(401, {"detail": "unauthorized"})
        if self.path != "/calls/stream_query":
            return self.send_json(404, {"detail": "not found"})
        self.respond(self.fake._faults.take(), lambda: self._stream_query(body))

    def _stream_query(self, body: Any) -> Answer:
        try:
            lines = [json.dumps(c).encode() + b"\n" for c in self.fake.stream_query(body)]
        except (ValueError, KeyError, TypeError) as err:
            return json_answer(400, {"detail": str(err)})
        return 200, b"".join(lines), {"Content-Type": "application/jsonl"}

    def send(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        if status >= 500:  # an error answer also closes the connection
            headers = {**headers, "Connection": "close"}
        super().send(status, body, headers, length)


def _basic(api_key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()


fake_weave_server = FakeWeaveServer  # the name tests use: ``with fake_weave_server() as server:``


@dataclass
class CallFactory:
    """Builds wire-format Weave calls for tests: chat calls and trace-document calls."""

    entity: str = "acme"
    project: str = "prod"
    counter: int = 0
    chat_op: str = "openai.chat.completions.create"
    doc_op: str = "log_trace"
    digest: str = "v0digest"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def project_id(self) -> str:
        return f"{self.entity}/{self.project}"

    def chat(
        self,
        started_at: Any,
        workload_id: str | None = "tool_router",
        question: str | None = None,
        answer: str | None = None,
        ended: bool = True,
        call_id: str | None = None,
        client_id: str | None = "shop-web",
        tools: list[dict[str, Any]] | None = None,
        parent: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.counter += 1
        n = self.counter
        micros = to_micros(started_at)
        question = question or f"question {n}"
        attributes: dict[str, Any] = {"weave": {"client_version": "0.54.0"}}
        if workload_id is not None:
            attributes["workload_id"] = workload_id
        if client_id is not None:
            attributes["client_id"] = client_id
        inputs: dict[str, Any] = {"model": "prod-model", "messages": [{"role": "user", "content": question}]}
        if tools:
            inputs["tools"] = tools
        call: dict[str, Any] = {
            "id": call_id or f"call-{n:06d}",
            "project_id": self.project_id,
            "op_name": op_ref(self.entity, self.project, self.chat_op, self.digest),
            "started_at": iso(micros),
            "attributes": attributes,
            "inputs": inputs,
        }
        if parent is not None:
            call.update(parent_id=parent["id"], trace_id=parent.get("trace_id", parent["id"]))
        if ended:
            call["ended_at"] = iso(micros + 250_000)
            call["output"] = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": "prod-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer or f"answer {n}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
            call["summary"] = {"weave": {"status": "success", "latency_ms": 250}}
        return call

    def document(
        self, started_at: Any, document: dict[str, Any], call_id: str | None = None, duration_s: float = 0.001
    ) -> dict[str, Any]:
        self.counter += 1
        micros = to_micros(started_at)
        return {
            "id": call_id or f"doc-{self.counter:06d}",
            "project_id": self.project_id,
            "op_name": op_ref(self.entity, self.project, self.doc_op, self.digest),
            "started_at": iso(micros),
            "ended_at": iso(micros + round(duration_s * 1_000_000)),
            "attributes": {"weave": {"client_version": "0.54.0"}},
            "inputs": {"record": "..."},
            "output": document,
        }

    def logged_chat(
        self, started_at: Any, workload_id: str = "tool_router", attributes: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The blueprint's logging pattern: the user's `@weave.op() log_chat(...)` calls
        OpenAI (weave's integration logs that as a child call) and returns the trace
        document. `attributes` are those of an enclosing `weave.attributes(...)` block,
        which weave puts on both calls. Returns (document call, OpenAI child call)."""
        start = to_micros(started_at)
        child = self.chat(iso(start + 1000), workload_id=None, client_id=None)
        child["attributes"].update(attributes or {})
        request = {**child["inputs"], "temperature": 0.3, "max_tokens": 1024}
        document = {
            "timestamp": start // 1_000_000,
            "workload_id": workload_id,
            "client_id": "my_demo_app",
            "request": request,
            "response": child["output"],
        }
        parent = self.document(iso(start), document, duration_s=0.5)
        parent["op_name"] = op_ref(self.entity, self.project, "log_chat", self.digest)
        parent["inputs"] = {"workload_id": workload_id, "messages": request["messages"]}
        parent["attributes"].update(attributes or {})
        child.update(parent_id=parent["id"], trace_id=parent["id"])
        return parent, child
