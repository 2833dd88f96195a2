"""Traces from a W&B Weave project: the trace server's calls query API -> trace records.

`WeaveTraceSource` reads the calls of one Weave project through the `weave` package's own
trace-server binding (`RemoteHTTPTraceServer.calls_query_stream`, i.e.
``POST /calls/stream_query`` answered as JSON Lines, ``latest_only``), filtered
server-side, sorted by (ended_at, id) and paged. Which calls are traces, by default:

- calls whose **output is a trace document** (`request` and `response`, as the Data
  Flywheel Blueprint's documented `@weave.op() log_chat(...)` returns), whatever the op;
- calls of the **Weave OpenAI integration** (`openai.chat.completions.create`) that carry
  the workload attribute (`weave.attributes({"workload_id": ...})`), unless one of their
  ancestors is a document call: that document is the record of the exchange.

(`op_names` replaces that choice by every call of the named ops.) Each call becomes one
record of the trace schema (`flywheel_assets/core/schema.py`): a document is taken as it
is (missing `timestamp`/`workload_id`/`client_id` filled from the call); any other call
is read as a **raw chat call**: its inputs (`model`, `messages`, `tools`, ...) are the
request, its output the chat completion response, `attributes.workload_id` the workload,
`attributes.client_id` the client. Reactions (👍/👎, any skin tone) on either become
`feedback.thumbs`.

**When a call is read.** weave uploads a call when it ends (``calls_complete``), with its
original `started_at`, so the cursor follows `ended_at`: each poll reads the calls that
ended after the cursor and at least `settle_seconds` ago (uploads arrive late), however
long they ran. The server's index is `started_at`, so the query also bounds `started_at`
to `unfinished_wait_seconds` before the cursor (the bounded look-back): a call that runs
longer than that is not read. A call that never ends has no response and is not a trace.

A call that cannot be mapped still becomes a record (without the missing fields), so
landing quarantines it with a reason instead of losing it; every record keeps its call
as `weave_call` (a `weave:///<entity>/<project>/call/<id>` ref).

The sensor (`sensors/weave.py`) keeps a `WeaveCursor` and writes each tick's records as
one JSONL file that the `FileTraceSource` lands, so Weave traces take the same
validation / quarantine / landing path as dropped files.
"""

from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import json
import os
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from flywheel_assets.core.atomic import atomic_path
from flywheel_assets.settings import DEFAULT_START_DATE

# <traces_dir>/weave/: the files the Weave sensor writes and lands itself (the drop-folder sensor skips it)
WEAVE_FOLDER = "weave"
DEFAULT_TRACE_SERVER_URL = "https://trace.wandb.ai"
SAAS_API_URL = "https://api.wandb.ai"
CHAT_COMPLETIONS_OP = "openai.chat.completions.create"
# what a call query returns per call (id, project_id, trace_id, op_name, started_at always)
CALL_COLUMNS = ["inputs", "output", "attributes", "ended_at", "exception", "summary", "parent_id"]
ANCESTOR_COLUMNS = ["output", "ended_at", "parent_id"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# reactions are read by their `detoned` emoji (the server strips skin tones: 👍🏽 -> 👍)
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
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_micros(micros: int) -> str:
    seconds, us = divmod(micros, 1_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------- cursor
@dataclass(frozen=True)
class WeaveCursor:
    """Where the Weave sensor is: every call that ended up to `ended_at` has been taken.

    `ids` are the calls taken that ended exactly at `ended_at` (ties: a later call with the
    same end is still new). `pending` are OpenAI calls taken whose ancestors were not all
    visible and finished yet (one may be a document call, which would be their record) ->
    their `ended_at`; they are re-read by id until that is known or their wait runs out.
    Serialized as JSON in the sensor's cursor.
    """

    ended_at: int | None = None  # epoch microseconds of the end of the last call taken
    ids: tuple[str, ...] = ()
    pending: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> WeaveCursor:
        if not text:
            return cls()
        data = json.loads(text)
        # a v1 cursor followed started_at: go on from that time by ended_at. Long calls v1
        # passed by are read (up to the look-back); the few calls running at that instant,
        # which v1 wrote, are read again once (the datasets' dedup key drops the copy)
        end = data.get("ended_at") or data.get("started_at")
        return cls(
            ended_at=to_micros(end) if end else None,
            ids=tuple(sorted(data.get("ids", []))) if data.get("v") == 2 else (),
            pending={k: to_micros(v) for k, v in sorted(data.get("pending", {}).items())} if data.get("v") == 2 else {},
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 2,
                "ended_at": iso_micros(self.ended_at) if self.ended_at is not None else None,
                "ids": sorted(self.ids),
                "pending": {k: iso_micros(v) for k, v in sorted(self.pending.items())},
            },
            sort_keys=True,
        )

    def key(self) -> str:
        """A file-name-safe id of this cursor: readable time + hash of the whole cursor."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:10]
        if self.ended_at is None:
            return f"start-{digest}"
        stamp = iso_micros(self.ended_at).replace("-", "").replace(":", "")
        return f"{stamp}-{digest}"

    def already_taken(self, micros: int, call_id: str) -> bool:
        if self.ended_at is None:
            return False
        return micros < self.ended_at or (micros == self.ended_at and call_id in self.ids)


@dataclass
class WeavePoll:
    """One poll: the new records, in call order, and the cursor to commit after landing."""

    records: list[dict[str, Any]]
    cursor: WeaveCursor
    calls_read: int = 0  # calls the server sent (including ones already written)
    requests: int = 0
    covered: int = 0  # OpenAI calls left out: an ancestor's trace document is their record
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
    names = (
        "id",
        "project_id",
        "op_name",
        "started_at",
        "ended_at",
        "attributes",
        "inputs",
        "output",
        "exception",
        "summary",
        "parent_id",
    )
    return {name: getattr(call, name, None) for name in names}


def _feedback(summary: Any) -> dict[str, Any] | None:
    weave = summary.get("weave") if isinstance(summary, Mapping) else None
    items = weave.get("feedback") if isinstance(weave, Mapping) else None
    thumbs = set()
    for item in items or []:
        payload = item.get("payload") if isinstance(item, Mapping) else None
        if isinstance(payload, Mapping) and item.get("feedback_type") == "wandb.reaction.1":
            if (mark := _THUMBS.get(str(payload.get("detoned") or payload.get("emoji", "")))) is not None:
                thumbs.add(mark)
    return {"thumbs": thumbs.pop()} if len(thumbs) == 1 else None


def is_trace_document(output: Any) -> bool:
    """The reference's record (`request` + `response`), as a logging op returns it."""
    return isinstance(output, Mapping) and "request" in output and "response" in output


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
    if is_trace_document(output):
        record = dict(output)  # a trace document: the reference's format, kept as it is
        for key, value in (
            ("timestamp", started // 1_000_000),
            ("workload_id", workload_id),
            ("client_id", client_id),
            ("latency_ms", latency_ms),
            ("feedback", _feedback(_plain(c.get("summary")))),
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
    """Write records as JSON lines, atomically and durably (never half a file, and the
    file survives a crash once written: the cursor moves past its records next)."""
    with atomic_path(path, durable=True) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
            out.write("\n")
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
    op_names: list[str] | None = Field(
        default=None,
        description="None: calls whose output is a trace document, and OpenAI calls with the "
        "workload attribute. Else the ops whose calls are traces: names (every version) or "
        "weave:/// op refs; empty: every call of the project.",
    )
    workload_attribute: str = Field(default="workload_id", description="Call attribute naming the workload.")
    client_attribute: str = Field(default="client_id", description="Call attribute naming the client.")
    default_client_id: str | None = Field(
        default=None, description="client_id of calls without that attribute (default: weave:<entity>/<project>)."
    )
    start_date: str = Field(
        default=DEFAULT_START_DATE.isoformat(), description="First poll reads calls started from this day on."
    )
    page_size: int = Field(default=1000, ge=1, le=10_000)
    max_calls_per_tick: int = Field(default=50_000, ge=1, description="The rest waits for the next tick.")
    settle_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Only calls that ended at least this long ago are read, "
        "so calls whose upload reaches the server late (batched, retried) are not skipped.",
    )
    unfinished_wait_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="The look-back: calls that ran up to this long are read "
        "when they end; an OpenAI call waits this long for its ancestors to be known.",
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
            for n in self.op_names or []
        ]
        return refs or None

    def _default_selection(self) -> dict[str, Any]:
        """Trace-document calls (any op) or OpenAI calls with the workload attribute."""

        def exists(path: str) -> dict[str, Any]:
            return {"$convert": {"input": {"$getField": path}, "to": "exists"}}

        return {
            "$or": [
                {"$and": [exists("output.request"), exists("output.response")]},
                {
                    "$and": [
                        exists(f"attributes.{self.workload_attribute}"),
                        {"$contains": {"input": {"$getField": "op_name"}, "substr": {"$literal": CHAT_COMPLETIONS_OP}}},
                    ]
                },
            ]
        }

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

    def _query(self, server, *, call_ids=None, terms=(), offset=0, limit=None, columns=CALL_COLUMNS) -> list:
        """One page of calls. By id (`call_ids`): any op, no selection. Else the traces
        (op filter or the default selection) matching `terms`, in (ended_at, id) order."""
        terms = list(terms)
        flt: dict[str, Any] = {}
        if call_ids is not None:
            flt["call_ids"] = list(call_ids)
        elif (refs := self._op_refs()) is not None:
            flt["op_names"] = refs
        elif self.op_names is None:
            terms.append(self._default_selection())
        req: dict[str, Any] = {
            "project_id": self.project_id,
            "filter": flt,
            "query": {"$expr": {"$and": terms}} if terms else None,
            "sort_by": [{"field": "ended_at", "direction": "asc"}, {"field": "id", "direction": "asc"}],
            "limit": limit,
            "offset": offset,
            "columns": columns,
            "include_feedback": self.include_feedback,
            # collapse the physical versions of an updated call (calls_complete) into one
            "latest_only": True,
        }
        # list(): a page is used only once it arrived whole (a cut stream raises here)
        return list(server.calls_query_stream({k: v for k, v in req.items() if v is not None}))

    def _by_ids(self, server, ids, stats: WeavePoll, columns=CALL_COLUMNS) -> dict[str, Any]:
        found: dict[str, Any] = {}
        ids = sorted(ids)
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            calls = self._query(server, call_ids=chunk, columns=columns)
            stats.requests += 1
            stats.calls_read += len(calls)
            found.update((c.id, c) for c in calls)
        return found

    def iter_calls(
        self, server, since_us: int, until_s: int, started_from_s: int, stats: WeavePoll
    ) -> Iterator[tuple[Any, int]]:
        """(call, ended_at micros) in (ended_at, id) order, for calls that ended from
        `since_us` (floored to a second) to `until_s` and started from `started_from_s`
        (the server's index: it keeps each page's scan to the look-back plus the new
        calls), paged by keyset + offset.

        Each page asks `ended_at >= <second of the last call received>` with an offset of
        the calls already received in that second, so a page costs O(page), however long
        the tick's backlog (a plain offset re-skips it all).
        """
        lower_s = since_us // 1_000_000
        received: list[int] = []  # micros of every call received this tick, in order
        while lower_s < until_s:
            offset = len(received) - bisect_left(received, lower_s * 1_000_000)
            terms = [
                {"$gte": [{"$getField": "started_at"}, {"$literal": started_from_s}]},
                {"$gte": [{"$getField": "ended_at"}, {"$literal": lower_s}]},
                {"$lt": [{"$getField": "ended_at"}, {"$literal": until_s}]},
            ]
            page = self._query(server, terms=terms, offset=offset, limit=self.page_size)
            stats.requests += 1
            stats.calls_read += len(page)
            for call in page:
                micros = to_micros(call.ended_at)
                received.append(micros)
                yield call, micros
            if len(page) < self.page_size:
                return
            lower_s = max(lower_s, received[-1] // 1_000_000)

    def covered_by_documents(self, server, calls: Sequence[Any], stats: WeavePoll) -> dict[str, bool | None]:
        """For each call: True when an ancestor's output is a trace document (that call is
        the record of the exchange), False when none is, None while an ancestor is not
        visible or not finished yet. One request per level of the call tree."""
        result = {c.id: False for c in calls if not c.parent_id}
        looking = {c.id: c.parent_id for c in calls if c.parent_id}
        while looking:
            ancestors = self._by_ids(server, set(looking.values()), stats, columns=ANCESTOR_COLUMNS)
            higher = {}
            for call_id, ancestor_id in looking.items():
                ancestor = ancestors.get(ancestor_id)
                if ancestor is None or ancestor.ended_at is None:
                    result[call_id] = None
                elif is_trace_document(_plain(ancestor.output)):
                    result[call_id] = True
                elif ancestor.parent_id:
                    higher[call_id] = ancestor.parent_id
                else:
                    result[call_id] = False
            looking = higher
        return result

    def poll(self, cursor: WeaveCursor, now: dt.datetime | None = None) -> WeavePoll:
        """The calls that ended after `cursor`, mapped to records, and the cursor after them.

        Raises on any server or transport error (after the binding's retries): the caller
        then writes nothing and keeps its cursor, so the next poll reads the same calls.
        """
        now_us = to_micros(now or dt.datetime.now(dt.UTC))
        until_s = (now_us - round(self.settle_seconds * 1_000_000)) // 1_000_000
        lookback_us = round(self.unfinished_wait_seconds * 1_000_000)
        give_up_before = now_us - lookback_us
        server = self._binding()
        result = WeavePoll(records=[], cursor=cursor)
        pending = dict(cursor.pending)

        # 1. OpenAI calls waiting for their ancestors, re-read by id
        waiting = self._by_ids(server, pending, result) if pending else {}
        for call_id in [i for i in pending if i not in waiting]:  # deleted meanwhile
            del pending[call_id]

        # 2. calls that ended after the cursor (server-side: ended_at >= its second)
        since_us = (
            cursor.ended_at
            if cursor.ended_at is not None
            else to_micros(dt.datetime.fromisoformat(self.start_date).replace(tzinfo=dt.UTC))
        )
        started_from_s = (since_us - lookback_us) // 1_000_000
        last_us, last_ids = cursor.ended_at, set(cursor.ids)
        taken: dict[str, Any] = {}
        for call, micros in self.iter_calls(server, since_us, until_s, started_from_s, result):
            if call.id in taken or call.id in pending or cursor.already_taken(micros, call.id):
                continue  # a page boundary shifted by a late insert: read twice
            if micros >= until_s * 1_000_000:
                continue
            taken[call.id] = call
            if last_us is None or micros > last_us:
                last_us, last_ids = micros, {call.id}
            else:
                last_ids.add(call.id)
            if len(taken) >= self.max_calls_per_tick:
                result.truncated = True
                break

        # 3. an OpenAI call is written unless a document call above it is its record
        calls = [*waiting.values(), *taken.values()]
        chats = [c for c in calls if not is_trace_document(_plain(c.output))]
        covered = self.covered_by_documents(server, chats, result) if chats else {}
        for call in calls:
            known = covered.get(call.id, False)
            if known is None and to_micros(call.ended_at) >= give_up_before:
                pending[call.id] = to_micros(call.ended_at)
                continue
            pending.pop(call.id, None)
            if known:
                result.covered += 1
            else:
                result.records.append(self.to_trace(call))
        result.cursor = WeaveCursor(
            ended_at=last_us, ids=tuple(sorted(last_ids)), pending=dict(sorted(pending.items()))
        )
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
        return Path(traces_dir) / WEAVE_FOLDER / f"{self.file_stem()}-{cursor.key()}.jsonl"


def trace_server_url(env: Mapping[str, str] | None = None) -> str:
    """The trace server as weave finds it (`weave.trace.env.weave_trace_server_url`, not
    imported: `import weave` takes seconds): WF_TRACE_SERVER_URL; else, for a dedicated or
    self-managed W&B (WANDB_PUBLIC_BASE_URL, else WANDB_BASE_URL, else the `base_url` that
    `wandb login --host` saved, other than api.wandb.ai), `<that URL>/traces`; else the
    multi-tenant https://trace.wandb.ai."""
    env = os.environ if env is None else env
    base = (env.get("WANDB_PUBLIC_BASE_URL") or "").rstrip("/")
    if not base:
        settings = configparser.ConfigParser()
        settings.read(
            [
                os.path.join(env.get("WANDB_CONFIG_DIR") or os.path.expanduser("~/.config/wandb"), "settings"),
                os.path.join(os.getcwd(), "wandb", "settings"),
            ]
        )
        saved = settings.get("default", "base_url", fallback=SAAS_API_URL)
        base = env.get("WANDB_BASE_URL", saved).rstrip("/")
    default = DEFAULT_TRACE_SERVER_URL if base == SAAS_API_URL else f"{base}/traces"
    return env.get("WF_TRACE_SERVER_URL", default)
