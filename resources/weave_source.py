"""Traces from a W&B Weave project: the trace server's calls query API -> trace records.

`WeaveTraceSource` reads the calls of one Weave project through the `weave` package's own
trace-server binding (`RemoteHTTPTraceServer.calls_query_stream`, i.e.
``POST /calls/stream_query`` answered as JSON Lines), filtered server-side by op and by
``started_at``, sorted by (started_at, id) and paged. Each call becomes one record of the
trace schema (`flywheel_assets/core/schema.py`):

- a call whose **output is a trace document** (has `request` and `response`, as the
  reference's logging op returns) is that document; missing `timestamp`/`workload_id`/
  `client_id` are filled from the call;
- any other call is read as a **raw chat call** (the Weave OpenAI integration's
  `openai.chat.completions.create`, or any op whose inputs are a chat request): its
  inputs (`model`, `messages`, `tools`, ...) are the request, its output the chat
  completion response, `attributes.workload_id` the workload, `attributes.client_id` the
  client. Reactions (👍/👎) become `feedback.thumbs`.

A call that cannot be mapped still becomes a record (without the missing fields), so
landing quarantines it with a reason instead of losing it; every record keeps its call
as `weave_call` (a `weave:///<entity>/<project>/call/<id>` ref).

The sensor (`sensors/weave.py`) keeps a `WeaveCursor` and writes each tick's records as
one JSONL file that the `FileTraceSource` lands, so Weave traces take the same
validation / quarantine / landing path as dropped files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

DEFAULT_TRACE_SERVER_URL = "https://trace.wandb.ai"
CHAT_COMPLETIONS_OP = "openai.chat.completions.create"
# what a call query returns per call (id, project_id, trace_id, op_name, started_at always)
CALL_COLUMNS = ["inputs", "output", "attributes", "ended_at", "exception", "summary"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_THUMBS = {"👍": "up", "👎": "down", ":+1:": "up", ":-1:": "down", "+1": "up", "-1": "down"}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- time helpers
def to_micros(value: dt.datetime | str | float | int) -> int:
    """Epoch microseconds, exactly (no float rounding for datetimes and ISO strings)."""
    if isinstance(value, (int, float)):
        return round(value * 1_000_000)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_micros(micros: int) -> str:
    seconds, us = divmod(micros, 1_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(microsecond=us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------- cursor
@dataclass(frozen=True)
class WeaveCursor:
    """Where the Weave sensor is: every call up to `started_at` has been written.

    `ids` are the calls written that started exactly at `started_at` (ties: a later call
    with the same timestamp is still new). `pending` are calls seen unfinished (no
    `ended_at` yet) -> their `started_at`; they are re-read by id until they finish or
    their wait runs out. Serialized as JSON in the sensor's cursor.
    """

    started_at: int | None = None  # epoch microseconds of the last written call
    ids: tuple[str, ...] = ()
    pending: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "WeaveCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            started_at=to_micros(data["started_at"]) if data.get("started_at") else None,
            ids=tuple(sorted(data.get("ids", []))),
            pending={k: to_micros(v) for k, v in sorted(data.get("pending", {}).items())},
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "started_at": iso_micros(self.started_at) if self.started_at is not None else None,
                "ids": sorted(self.ids),
                "pending": {k: iso_micros(v) for k, v in sorted(self.pending.items())},
            },
            sort_keys=True,
        )

    def key(self) -> str:
        """A file-name-safe id of this cursor: readable time + hash of the whole cursor."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:10]
        if self.started_at is None:
            return f"start-{digest}"
        stamp = iso_micros(self.started_at).replace("-", "").replace(":", "")
        return f"{stamp}-{digest}"

    def already_written(self, micros: int, call_id: str) -> bool:
        if self.started_at is None:
            return False
        return micros < self.started_at or (micros == self.started_at and call_id in self.ids)


@dataclass
class WeavePoll:
    """One poll: the new records, in call order, and the cursor to commit after landing."""

    records: list[dict[str, Any]]
    cursor: WeaveCursor
    calls_read: int = 0  # calls the server sent (including ones already written)
    requests: int = 0
    pending_written_unfinished: int = 0  # calls that never finished, written as they were
    truncated: bool = False  # max_calls_per_tick reached: more calls wait for the next tick


# -------------------------------------------------------------------------------- mapping
def _plain(value: Any) -> Any:
    """A call field as plain JSON-able Python (pydantic models / datetimes included)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime):
        return iso_micros(to_micros(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def call_fields(call: Any) -> dict[str, Any]:
    """The fields of a call (weave's `Call` model or a wire dict) as a plain dict."""
    if isinstance(call, Mapping):
        return dict(call)
    names = ("id", "project_id", "op_name", "started_at", "ended_at", "attributes", "inputs",
             "output", "exception", "summary")
    return {name: getattr(call, name, None) for name in names}


def _feedback(summary: Any) -> dict[str, Any] | None:
    weave = summary.get("weave") if isinstance(summary, Mapping) else None
    items = weave.get("feedback") if isinstance(weave, Mapping) else None
    thumbs = set()
    for item in items or []:
        payload = item.get("payload") if isinstance(item, Mapping) else None
        if isinstance(payload, Mapping) and item.get("feedback_type") == "wandb.reaction.1":
            if (mark := _THUMBS.get(str(payload.get("emoji", "")))) is not None:
                thumbs.add(mark)
    return {"thumbs": thumbs.pop()} if len(thumbs) == 1 else None


def call_to_trace(
    call: Any,
    *,
    workload_attribute: str = "workload_id",
    client_attribute: str = "client_id",
    default_client_id: str | None = None,
) -> dict[str, Any]:
    """One Weave call as a trace record (fields it cannot fill are left out, not guessed)."""
    c = call_fields(call)
    attributes = _plain(c.get("attributes") or {})
    output = _plain(c.get("output"))
    started = to_micros(c["started_at"])
    ended = to_micros(c["ended_at"]) if c.get("ended_at") else None
    latency_ms = round((ended - started) / 1000, 3) if ended is not None else None
    workload_id = attributes.get(workload_attribute)
    client_id = attributes.get(client_attribute) or default_client_id
    if isinstance(output, Mapping) and "request" in output and "response" in output:
        record = dict(output)  # a trace document: the reference's format, kept as it is
        for key, value in (
            ("timestamp", started // 1_000_000),
            ("workload_id", workload_id),
            ("client_id", client_id),
            ("latency_ms", latency_ms),
        ):
            if record.get(key) is None and value is not None:
                record[key] = value
    else:
        inputs = _plain(c.get("inputs") or {})
        request = {k: v for k, v in inputs.items() if k != "self" and not k.startswith("_")}
        record = {
            "timestamp": started // 1_000_000,
            "workload_id": workload_id,
            "client_id": client_id,
            "request": request,
            "response": output,
            "latency_ms": latency_ms,
            "feedback": _feedback(_plain(c.get("summary"))),
            "workload_description": attributes.get("workload_description"),
        }
        if c.get("exception"):
            record["error"] = str(c["exception"])[:2000]
        record = {k: v for k, v in record.items() if v is not None}
    record["weave_call"] = f"weave:///{c.get('project_id')}/call/{c['id']}"
    return record


# ----------------------------------------------------------------------------- file output
def write_jsonl_atomic(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write records as JSON lines: a hidden temp file, fsync, rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
                out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


# ------------------------------------------------------------------------------- resource
class WeaveTraceSource(dg.ConfigurableResource):
    """The calls of one W&B Weave project, read through the Weave trace server API."""

    entity: str = Field(description="W&B entity (team or user) of the Weave project.")
    project: str = Field(description="Weave project name.")
    api_key: str | None = Field(default=None, description="W&B API key (use dg.EnvVar).")
    base_url: str = Field(
        default=DEFAULT_TRACE_SERVER_URL,
        description="Weave trace server URL (dedicated / self-managed: <host>/traces).",
    )
    op_names: list[str] = Field(
        default=[CHAT_COMPLETIONS_OP],
        description="Ops whose calls are traces: names (every version) or weave:/// op refs. "
        "Empty: every call of the project.",
    )
    workload_attribute: str = Field(default="workload_id", description="Call attribute naming the workload.")
    client_attribute: str = Field(default="client_id", description="Call attribute naming the client.")
    default_client_id: str | None = Field(
        default=None, description="client_id of calls without that attribute (default: weave:<entity>/<project>)."
    )
    start_date: str = Field(default="2025-01-01", description="First poll reads calls started from this day on.")
    page_size: int = Field(default=1000, ge=1, le=10_000)
    max_calls_per_tick: int = Field(default=50_000, ge=1, description="The rest waits for the next tick.")
    settle_seconds: float = Field(
        default=120.0, ge=0, description="Only calls started at least this long ago are read, so "
        "calls that reach the server late (batched uploads, calls stored when they end) are not skipped.",
    )
    unfinished_wait_seconds: float = Field(
        default=3600.0, ge=0, description="How long an unfinished call is waited for; then it is "
        "written as it is (landing quarantines it: no response).",
    )
    include_feedback: bool = Field(default=True, description="Ask for reactions (-> feedback.thumbs).")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, description="Retries on 5xx/429/connection errors, with backoff.")

    @property
    def project_id(self) -> str:
        return f"{self.entity}/{self.project}"

    def file_stem(self) -> str:
        """The project as a file-name prefix; a hash keeps altered or long names apart."""
        raw = f"{self.entity}__{self.project}"
        safe = _SAFE.sub("_", raw)
        if safe == raw and len(raw) <= 80:
            return raw
        return f"{safe[:60]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"

    # -- the wire --------------------------------------------------------------------------
    def _op_refs(self) -> list[str] | None:
        refs = [
            n if n.startswith("weave:///") else f"weave:///{self.entity}/{self.project}/op/{n}:*"
            for n in self.op_names
        ]
        return refs or None

    def _binding(self):
        # imported here: `import weave` takes seconds, and only polls need it
        from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer

        retries, timeout = self.max_retries, self.timeout_s

        class _Binding(RemoteHTTPTraceServer):
            """weave's binding, with our timeout and retry budget on its generated client."""

            def _rebuild_client(self) -> None:
                super()._rebuild_client()
                self._stainless_client = self._stainless_client.copy(max_retries=retries, timeout=timeout)

        return _Binding(self.base_url, should_batch=False, password=self.api_key or "")

    def _query(self, server, *, call_ids=None, since_s=None, until_s=None, offset=0, limit=None) -> list:
        terms = []
        if since_s is not None:
            terms.append({"$gte": [{"$getField": "started_at"}, {"$literal": since_s}]})
        if until_s is not None:
            terms.append({"$lt": [{"$getField": "started_at"}, {"$literal": until_s}]})
        flt: dict[str, Any] = {}
        if (refs := self._op_refs()) is not None:
            flt["op_names"] = refs
        if call_ids is not None:
            flt["call_ids"] = list(call_ids)
        req: dict[str, Any] = {
            "project_id": self.project_id,
            "filter": flt,
            "query": {"$expr": {"$and": terms}} if terms else None,
            "sort_by": [{"field": "started_at", "direction": "asc"}, {"field": "id", "direction": "asc"}],
            "limit": limit,
            "offset": offset,
            "columns": CALL_COLUMNS,
            "include_feedback": self.include_feedback,
        }
        # list(): a page is used only once it arrived whole (a cut stream raises here)
        return list(server.calls_query_stream({k: v for k, v in req.items() if v is not None}))

    def iter_calls(self, server, since_us: int, until_s: int, stats: WeavePoll) -> Iterator[tuple[Any, int]]:
        """(call, started_at micros) in (started_at, id) order, from
        `since_us` (floored to a second) to `until_s`, paged by keyset + offset.

        Each page asks `started_at >= <second of the last call received>` with an offset
        of the calls already received in that second, so a page costs the server
        O(page), however long the tick's backlog (a plain offset re-skips it all).
        """
        lower_s = since_us // 1_000_000
        received: list[int] = []  # micros of every call received this tick, in order
        while lower_s < until_s:
            offset = len(received) - bisect_left(received, lower_s * 1_000_000)
            page = self._query(server, since_s=lower_s, until_s=until_s, offset=offset, limit=self.page_size)
            stats.requests += 1
            stats.calls_read += len(page)
            for call in page:
                micros = to_micros(call.started_at)
                received.append(micros)
                yield call, micros
            if len(page) < self.page_size:
                return
            lower_s = max(lower_s, received[-1] // 1_000_000)

    def poll(self, cursor: WeaveCursor, now: dt.datetime | None = None) -> WeavePoll:
        """The calls after `cursor`, mapped to records, and the cursor after them.

        Raises on any server or transport error (after the binding's retries): the caller
        then writes nothing and keeps its cursor, so the next poll reads the same calls.
        """
        now_us = to_micros(now or dt.datetime.now(dt.timezone.utc))
        until_s = (now_us - round(self.settle_seconds * 1_000_000)) // 1_000_000
        give_up_before = now_us - round(self.unfinished_wait_seconds * 1_000_000)
        server = self._binding()
        records: list[dict[str, Any]] = []
        pending = dict(cursor.pending)
        result = WeavePoll(records=records, cursor=cursor)

        def take(call: Any, micros: int) -> bool:
            """Map a finished (or given-up) call; False when it must wait, unfinished."""
            if call.ended_at is None and micros >= give_up_before:
                return False
            if call.ended_at is None:
                result.pending_written_unfinished += 1
            records.append(self.to_trace(call))
            return True

        # 1. calls that were unfinished at an earlier tick, re-read by id
        ids = sorted(pending)
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            calls = {c.id: c for c in self._query(server, call_ids=chunk)}
            result.requests += 1
            result.calls_read += len(calls)
            for call_id in chunk:
                call = calls.get(call_id)
                if call is None:  # deleted meanwhile: nothing to write
                    if pending[call_id] < give_up_before:
                        del pending[call_id]
                elif take(call, pending[call_id]):
                    del pending[call_id]

        # 2. calls started after the cursor (server-side: started_at >= its second)
        last_us, last_ids = cursor.started_at, set(cursor.ids)
        since_us = cursor.started_at if cursor.started_at is not None else to_micros(
            dt.datetime.fromisoformat(self.start_date).replace(tzinfo=dt.timezone.utc)
        )
        seen: set[str] = set()
        taken = 0
        for call, micros in self.iter_calls(server, since_us, until_s, result):
            if call.id in seen:  # a page boundary shifted by a late insert: read twice
                continue
            seen.add(call.id)
            if cursor.already_written(micros, call.id) or call.id in pending or micros >= until_s * 1_000_000:
                continue
            if not take(call, micros):
                pending[call.id] = micros
            if last_us is None or micros > last_us:
                last_us, last_ids = micros, {call.id}
            else:
                last_ids.add(call.id)
            taken += 1
            if taken >= self.max_calls_per_tick:
                result.truncated = True
                break
        result.cursor = WeaveCursor(started_at=last_us, ids=tuple(sorted(last_ids)), pending=pending)
        return result

    def to_trace(self, call: Any) -> dict[str, Any]:
        return call_to_trace(
            call,
            workload_attribute=self.workload_attribute,
            client_attribute=self.client_attribute,
            default_client_id=self.default_client_id or f"weave:{self.project_id}",
        )

    def window_file(self, traces_dir: str | Path, cursor: WeaveCursor) -> Path:
        """Where the records read after `cursor` go: one name per starting cursor, so a
        retried tick (same cursor) rewrites the same file instead of adding a second one."""
        return Path(traces_dir) / "weave" / f"{self.file_stem()}-{cursor.key()}.jsonl"


def weave_source_from_env() -> WeaveTraceSource:
    """The resource as `definitions.py` registers it, from the environment: the project from
    FLYWHEEL_WEAVE_ENTITY / FLYWHEEL_WEAVE_PROJECT or W&B's WANDB_ENTITY / WANDB_PROJECT, the
    key WANDB_API_KEY (an EnvVar: never in config or logs), the server WF_TRACE_SERVER_URL
    (weave's own variable), the ops FLYWHEEL_WEAVE_OPS (comma-separated)."""
    ops = os.environ.get("FLYWHEEL_WEAVE_OPS")
    return WeaveTraceSource(
        # FLYWHEEL_WEAVE_ENTITY/PROJECT (flywheel settings) win over W&B's own variables
        entity=os.environ.get("FLYWHEEL_WEAVE_ENTITY") or dg.EnvVar("WANDB_ENTITY"),
        project=os.environ.get("FLYWHEEL_WEAVE_PROJECT") or dg.EnvVar("WANDB_PROJECT"),
        api_key=dg.EnvVar("WANDB_API_KEY"),
        base_url=os.environ.get("WF_TRACE_SERVER_URL", DEFAULT_TRACE_SERVER_URL),
        op_names=[o.strip() for o in ops.split(",") if o.strip()] if ops is not None else [CHAT_COMPLETIONS_OP],
        start_date=os.environ.get("FLYWHEEL_START_DATE", "2025-01-01"),
    )
