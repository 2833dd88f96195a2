"""WeaveTraceSource against a fake Weave trace server on loopback: mapping, paging, cursor."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import httpx
import pytest
from fake_weave_server import CallFactory, Fault, fake_weave_server, iso, op_ref, to_micros

from flywheel_assets.core.schema import Rejection, TraceRecord, validate_trace
from flywheel_assets.settings import SettingsError, load_settings
from resources.weave_source import WeaveCursor, WeaveTraceSource, call_to_trace

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T0 = (NOW - dt.timedelta(days=2)).timestamp()  # a recent day: inside the day partitions
TOOLS = [{"type": "function", "function": {"name": "get_order_status", "parameters": {"type": "object"}}}]


@pytest.fixture
def server():
    with fake_weave_server(api_key="secret-key") as running:
        yield running


@pytest.fixture
def calls():
    return CallFactory()


def source(server, **overrides) -> WeaveTraceSource:
    config = dict(
        entity="acme",
        project="prod",
        api_key="secret-key",
        base_url=server.base_url,
        settle_seconds=0,
        max_retries=0,
        page_size=10,
    )
    return WeaveTraceSource(**{**config, **overrides})


def stream_queries(server):
    return [r.body for r in server.requests if r.path == "/calls/stream_query"]


# ----------------------------------------------------------------------------- mapping
def test_a_chat_call_maps_to_a_valid_trace_record(calls):
    call = calls.chat(T0, workload_id="tool_router", question="where is order 123?", tools=TOOLS)
    call["inputs"]["self"] = "<openai client>"
    call["inputs"]["temperature"] = 0.2
    call["summary"]["weave"]["feedback"] = [
        {"feedback_type": "wandb.reaction.1", "payload": {"emoji": "👎"}},
    ]
    record = call_to_trace(call, default_client_id="fallback")
    assert record["timestamp"] == int(T0)
    assert record["workload_id"] == "tool_router" and record["client_id"] == "shop-web"
    assert record["request"] == {
        "model": "prod-model",
        "messages": [{"role": "user", "content": "where is order 123?"}],
        "tools": TOOLS,
        "temperature": 0.2,
    }
    assert record["response"]["choices"][0]["message"]["content"] == "answer 1"
    assert record["latency_ms"] == 250.0
    assert record["feedback"] == {"thumbs": "down"}
    assert record["weave_call"] == "weave:///acme/prod/call/call-000001"
    assert isinstance(validate_trace(record), TraceRecord)


def test_a_trace_document_output_is_the_record_filled_from_the_call(calls):
    document = {
        "timestamp": int(T0) - 60,
        "workload_id": "support_chat",
        "client_id": "helpdesk",
        "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
        "workload_description": "help centre",
    }
    record = call_to_trace(calls.document(T0, document))
    assert {k: record[k] for k in document} == document  # the reference's record, untouched
    assert isinstance(validate_trace(record), TraceRecord)
    partial = {k: v for k, v in document.items() if k not in ("timestamp", "client_id")}
    call = calls.document(T0, partial)
    call["attributes"] = {"workload_id": "other", "client_id": "from-attributes"}
    filled = call_to_trace(call)
    assert filled["timestamp"] == int(T0) and filled["client_id"] == "from-attributes"
    assert filled["workload_id"] == "support_chat"  # the document's own value wins


def test_a_call_that_cannot_be_mapped_is_kept_for_quarantine(calls):
    no_workload = call_to_trace(calls.chat(T0, workload_id=None))
    assert "workload_id" not in no_workload
    assert validate_trace(no_workload) == Rejection(reason="missing_field", detail="workload_id: Field required")
    failed = calls.chat(T0, ended=False)
    failed.update(ended_at=iso(to_micros(T0) + 1000), exception="RateLimitError: 429")
    record = call_to_trace(failed, default_client_id="weave:acme/prod")
    assert "response" not in record and record["error"] == "RateLimitError: 429"
    assert record["client_id"] == "shop-web"
    assert isinstance(validate_trace(record), Rejection)


# ------------------------------------------------------------------- querying and paging
def test_poll_pages_with_server_side_selection_and_ended_at_filters(server, calls):
    server.add_calls(calls.chat(T0 + i * 7.5) for i in range(25))
    other = CallFactory(chat_op="my_agent.plan", counter=100)
    server.add_calls([other.chat(T0 + 1)])  # another op: not a trace
    poll = source(server).poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll.records] == [f"call-{i:06d}" for i in range(1, 26)]
    assert poll.requests == 3 and poll.calls_read == 25
    assert poll.cursor.ended_at == to_micros(T0 + 24 * 7.5) + 250_000 and poll.cursor.ids == ("call-000025",)
    for body in stream_queries(server):
        assert body["project_id"] == "acme/prod" and body["filter"] == {}
        started, ended_from, ended_before, selection = body["query"]["$expr"]["$and"]
        # the bounded look-back: calls that ended after the cursor started at most an hour before it
        assert started == {
            "$gte": [{"$getField": "started_at"}, {"$literal": int(to_micros("2025-01-01") // 1e6) - 3600}]
        }
        assert ended_from["$gte"][0] == {"$getField": "ended_at"}
        assert ended_before == {"$lt": [{"$getField": "ended_at"}, {"$literal": int(NOW.timestamp())}]}
        assert "$or" in selection
        assert body["sort_by"] == [{"field": "ended_at", "direction": "asc"}, {"field": "id", "direction": "asc"}]
        assert body["limit"] == 10 and body["latest_only"] is True
    assert server.requests[-1].authorization.startswith("Basic ")


def test_keyset_paging_reads_each_call_once_when_many_share_a_second(server, calls):
    burst = [calls.chat(T0 + 0.001 * i) for i in range(23)]  # 23 calls inside one second
    tail = [calls.chat(T0 + 5 + i) for i in range(4)]
    server.add_calls(burst + tail)
    poll = source(server).poll(WeaveCursor(), now=NOW)
    ids = [r["weave_call"].rsplit("/", 1)[1] for r in poll.records]
    assert ids == [c["id"] for c in burst + tail]
    pages = [(b["query"]["$expr"]["$and"][1]["$gte"][1]["$literal"], b["offset"]) for b in stream_queries(server)]
    second = int(T0)
    assert pages[1:] == [(second, 10), (second, 20)]  # offset stays within the one second


def test_a_later_poll_reads_only_new_calls_and_ties_are_not_lost(server, calls):
    first = [calls.chat(T0 + i) for i in range(5)]
    server.add_calls(first)
    ws = source(server)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert len(poll1.records) == 5
    tie = calls.chat(T0 + 4, call_id="call-zzz-tie")  # ends with the last one read
    later = [calls.chat(T0 + 10 + i) for i in range(3)]
    server.add_calls([tie, *later])
    server.requests.clear()
    served = server.calls_served
    poll2 = ws.poll(poll1.cursor, now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll2.records] == ["call-zzz-tie"] + [c["id"] for c in later]
    (body,) = stream_queries(server)
    assert body["query"]["$expr"]["$and"][1]["$gte"][1] == {"$literal": int(T0 + 4)}  # from the cursor
    assert server.calls_served - served == 5  # from the cursor's second on, not the history
    poll3 = ws.poll(poll2.cursor, now=NOW)
    assert poll3.records == [] and poll3.cursor == poll2.cursor


def test_calls_newer_than_the_settle_time_wait_for_a_later_poll(server, calls):
    server.add_calls([calls.chat(NOW.timestamp() - 600), calls.chat(NOW.timestamp() - 30)])
    ws = source(server, settle_seconds=120)
    poll = ws.poll(WeaveCursor(), now=NOW)
    assert len(poll.records) == 1
    later = ws.poll(poll.cursor, now=NOW + dt.timedelta(minutes=5))
    assert [r["weave_call"][-6:] for r in later.records] == ["000002"]


def test_max_calls_per_tick_defers_the_rest_without_skipping(server, calls):
    server.add_calls(calls.chat(T0 + i // 3) for i in range(12))  # ties of 3
    ws = source(server, max_calls_per_tick=5, page_size=4)
    seen, cursor = [], WeaveCursor()
    for _ in range(4):
        poll = ws.poll(cursor, now=NOW)
        seen += [r["weave_call"] for r in poll.records]
        cursor = poll.cursor
    assert len(seen) == len(set(seen)) == 12


def test_an_unfinished_call_is_read_once_it_ends(server, calls):
    """weave's eager ops (and the legacy start/end upload) make a running call visible."""
    running = calls.chat(NOW.timestamp() - 60, ended=False)
    done = calls.chat(NOW.timestamp() - 50)
    server.add_calls([running, done])
    ws = source(server)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"][-11:] for r in poll1.records] == [done["id"]]
    assert WeaveCursor.parse(poll1.cursor.to_json()) == poll1.cursor
    poll2 = ws.poll(poll1.cursor, now=NOW)  # still running: nothing new
    assert poll2.records == [] and poll2.cursor == poll1.cursor
    finished = calls.chat(NOW.timestamp() - 60, call_id=running["id"], answer="late answer")
    finished["ended_at"] = iso(to_micros(NOW) - 10_000_000)
    server.add_calls([finished])  # its end: a second version of the call
    poll3 = ws.poll(poll2.cursor, now=NOW)
    assert [r["response"]["choices"][0]["message"]["content"] for r in poll3.records] == ["late answer"]
    assert ws.poll(poll3.cursor, now=NOW).records == []


def test_a_call_longer_than_settle_seconds_is_read_once_when_it_ends(server, calls):
    """weave uploads a call when it ends, with its original started_at: by then the
    calls that started after it have been read."""
    now = NOW.timestamp()
    long_call = calls.chat(now - 900, call_id="call-long", answer="after ten minutes")
    server.start_call(long_call)
    server.add_calls([calls.chat(now - 600)])  # started later, short: read first
    ws = source(server, settle_seconds=120)
    poll1 = ws.poll(WeaveCursor(), now=NOW - dt.timedelta(minutes=5))
    assert [r["weave_call"][-11:] for r in poll1.records] == ["call-000002"]
    server.end_call("call-long", ended_at=now - 300, output=long_call["output"])
    poll2 = ws.poll(poll1.cursor, now=NOW)
    assert [r["response"]["choices"][0]["message"]["content"] for r in poll2.records] == ["after ten minutes"]
    assert poll2.records[0]["timestamp"] == int(now - 900)  # its own start
    assert ws.poll(poll2.cursor, now=NOW + dt.timedelta(minutes=10)).records == []  # once


def test_the_fake_shows_a_call_only_once_it_ends(server, calls):
    call = calls.chat(T0, call_id="call-running")
    server.start_call(call)
    query = {"project_id": "acme/prod", "filter": {"call_ids": ["call-running"]}}
    assert list(server.stream_query(query)) == []
    server.end_call("call-running", ended_at=T0 + 30, output=call["output"])
    (visible,) = server.stream_query(query)
    assert (visible["started_at"], visible["ended_at"]) == (iso(to_micros(T0)), iso(to_micros(T0 + 30)))


def test_the_fake_returns_each_version_of_an_updated_call_unless_latest_only(server, calls):
    server.add_calls([calls.chat(T0, call_id="call-x", ended=False)])
    server.add_calls([calls.chat(T0, call_id="call-x")])
    query = {"project_id": "acme/prod", "filter": {"call_ids": ["call-x"]}}
    assert sorted(c.get("ended_at") is not None for c in server.stream_query(query)) == [False, True]
    (latest,) = server.stream_query({**query, "latest_only": True})
    assert latest["ended_at"] is not None


# ---------------------------------------------------------------------------- failures
def test_a_server_error_fails_the_poll_and_a_retry_reads_everything(server, calls):
    server.add_calls(calls.chat(T0 + i) for i in range(15))
    ws = source(server)
    server.add_faults(Fault.status(500))
    with pytest.raises(Exception, match="500|Internal"):
        ws.poll(WeaveCursor(), now=NOW)
    server.add_faults(Fault.ok(), Fault.status(500))  # page 1 answered, page 2 fails
    with pytest.raises(Exception, match="500|Internal"):
        ws.poll(WeaveCursor(), now=NOW)
    poll = ws.poll(WeaveCursor(), now=NOW)
    assert len(poll.records) == 15


def test_a_transient_error_is_retried_within_the_poll(server, calls):
    server.add_calls(calls.chat(T0 + i) for i in range(3))
    server.add_faults(Fault.status(503))
    poll = source(server, max_retries=1).poll(WeaveCursor(), now=NOW)
    assert len(poll.records) == 3 and len(stream_queries(server)) == 2


def test_a_stream_cut_mid_page_fails_the_poll(server, calls):
    server.add_calls(calls.chat(T0 + i) for i in range(8))
    server.add_faults(Fault.cut(3))
    with pytest.raises(httpx.HTTPError):
        source(server).poll(WeaveCursor(), now=NOW)


def test_a_wrong_api_key_is_refused(server, calls):
    server.add_calls([calls.chat(T0)])
    with pytest.raises(Exception, match="401|nauthori"):
        source(server, api_key="wrong").poll(WeaveCursor(), now=NOW)


# ------------------------------------------------------------------------------ config
def test_op_names_are_weave_refs_and_files_are_named_by_cursor(server, calls):
    ref = op_ref("acme", "prod", "log_trace", "abc123")
    ws = source(server, op_names=["my_op", ref], entity="Acme Corp", project="prod/x")
    assert ws._op_refs() == ["weave:///Acme Corp/prod/x/op/my_op:*", ref]
    cursor = WeaveCursor(ended_at=to_micros(T0), ids=("a", "b"))
    path = ws.window_file("/traces", cursor)
    assert path.parent.as_posix() == "/traces/weave"
    assert path.name.startswith("Acme_Corp__prod_x-") and path.name.endswith(".jsonl")
    assert path == ws.window_file("/traces", WeaveCursor.parse(cursor.to_json()))
    assert path != ws.window_file("/traces", WeaveCursor(ended_at=to_micros(T0), ids=("a",)))


@pytest.mark.parametrize(
    ("ops", "op_names"),
    [
        (None, None),  # unset: trace documents and OpenAI calls with the workload attribute
        ("", None),  # empty counts as unset (charts and compose files carry `VAR: ""`)
        ("my_op, weave:///acme/prod/op/log:abc,", ["my_op", "weave:///acme/prod/op/log:abc"]),
        ("*", []),  # every call of the project
    ],
)
def test_flywheel_weave_ops_chooses_the_calls_that_are_traces(ops, op_names):
    from flywheel_assets.definitions import build_weave_source

    env = {} if ops is None else {"FLYWHEEL_WEAVE_OPS": ops}
    assert build_weave_source(load_settings(env)).op_names == op_names


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ("*, my_op", "FLYWHEEL_WEAVE_OPS='*, my_op' mixes `*` (every call) with op names"),
        (" , ", "FLYWHEEL_WEAVE_OPS=' , ' lists nothing"),
    ],
)
def test_a_bad_flywheel_weave_ops_names_the_variable(ops, message):
    with pytest.raises(SettingsError) as err:
        load_settings({"FLYWHEEL_WEAVE_OPS": ops})
    assert message in str(err.value)


def test_the_weave_project_and_first_day_come_from_the_settings(monkeypatch):
    from flywheel_assets.definitions import build_weave_source

    for var, value in {"WANDB_ENTITY": "wandb-team", "WANDB_PROJECT": "traces", "WANDB_API_KEY": "k"}.items():
        monkeypatch.setenv(var, value)
    own = build_weave_source(
        load_settings(
            {"FLYWHEEL_WEAVE_ENTITY": "acme", "FLYWHEEL_WEAVE_PROJECT": "prod", "FLYWHEEL_START_DATE": "2026-11-14"}
        )
    )
    assert (own.entity, own.project, own.start_date) == ("acme", "prod", "2026-11-14")
    # unset or empty: W&B's own variables, read when the resource starts; the first day is the
    # day partitions' (an empty FLYWHEEL_START_DATE was passed on as "" and failed the first poll)
    fallback = build_weave_source(load_settings({"FLYWHEEL_WEAVE_PROJECT": "", "FLYWHEEL_START_DATE": ""}))
    with dg.build_resources({"weave_source": fallback}) as started:
        assert (started.weave_source.entity, started.weave_source.project) == ("wandb-team", "traces")
    assert fallback.start_date == load_settings({}).start_date.isoformat() == "2025-01-01"


# ------------------------------------------------- the blueprint's logging pattern
def test_the_blueprint_logging_pattern_is_read_by_default(server, calls):
    """`@weave.op() log_chat(...)` returns the trace document; its OpenAI child carries no
    workload. Both are read by default, each exchange once: the document."""
    pairs = [calls.logged_chat(T0 + i, workload_id="agent.tool_router") for i in range(3)]
    server.add_calls(call for pair in pairs for call in pair)
    direct = calls.chat(T0 + 10, workload_id="agent.chat")  # OpenAI call with weave.attributes
    tool = calls.chat(T0 + 11, workload_id="agent.chat")
    tool["op_name"] = op_ref("acme", "prod", "lookup_order")  # not a trace: neither kind
    server.add_calls([direct, tool])
    poll = source(server).poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll.records] == [p[0]["id"] for p in pairs] + [direct["id"]]
    assert [r["workload_id"] for r in poll.records] == ["agent.tool_router"] * 3 + ["agent.chat"]
    assert all(isinstance(validate_trace(r), TraceRecord) for r in poll.records)
    assert poll.records[0]["client_id"] == "my_demo_app"


def test_a_document_call_and_its_openai_child_with_attributes_are_one_record(server, calls):
    """Under `weave.attributes({"workload_id": ...})` both calls carry the workload; the
    child ends, and is uploaded, before its document parent: it waits for the parent."""
    parent, child = calls.logged_chat(NOW.timestamp() - 60, attributes={"workload_id": "agent.tool_router"})
    server.start_call(parent)
    server.add_calls([child])
    ws = source(server)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert poll1.records == [] and list(poll1.cursor.pending) == [child["id"]]
    server.end_call(parent["id"], ended_at=parent["ended_at"], output=parent["output"])
    poll2 = ws.poll(poll1.cursor, now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll2.records] == [parent["id"]]
    assert poll2.covered == 1 and poll2.cursor.pending == {}
    assert ws.poll(poll2.cursor, now=NOW).records == []


def test_an_openai_call_under_other_ops_is_read_when_none_returns_a_document(server, calls):
    agent = calls.chat(T0, workload_id=None)
    agent.update(op_name=op_ref("acme", "prod", "agent_step"), output={"answer": "done"})
    child = calls.chat(T0 + 0.1, workload_id="agent.chat", parent=agent)
    server.add_calls([agent, child])
    poll = source(server).poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll.records] == [child["id"]]


def test_reactions_on_document_and_chat_calls_become_feedback_whatever_the_skin_tone(server, calls):
    parent, child = calls.logged_chat(T0)
    chat = calls.chat(T0 + 5)
    server.add_calls([parent, child, chat])
    server.add_reaction("acme/prod", parent["id"], "👍🏽")
    server.add_reaction("acme/prod", chat["id"], "👎🏿")
    poll = source(server).poll(WeaveCursor(), now=NOW)
    assert [r.get("feedback") for r in poll.records] == [{"thumbs": "up"}, {"thumbs": "down"}]
    assert all(isinstance(validate_trace(r), TraceRecord) for r in poll.records)
    without = source(server, include_feedback=False).poll(WeaveCursor(), now=NOW)
    assert [r.get("feedback") for r in without.records] == [None, None]


# --------------------------------------------------------------------- where, how
@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "https://trace.wandb.ai"),
        ({"WANDB_BASE_URL": "https://api.wandb.ai/"}, "https://trace.wandb.ai"),
        ({"WANDB_BASE_URL": "https://acme.wandb.io"}, "https://acme.wandb.io/traces"),
        (
            {"WANDB_BASE_URL": "http://wandb.internal:8080/", "WANDB_PUBLIC_BASE_URL": "https://wandb.acme.com"},
            "https://wandb.acme.com/traces",
        ),
        (
            {"WANDB_BASE_URL": "https://acme.wandb.io", "WF_TRACE_SERVER_URL": "http://127.0.0.1:6345"},
            "http://127.0.0.1:6345",
        ),
        ({"saved": "https://wandb.acme.com"}, "https://wandb.acme.com/traces"),  # `wandb login --host`
    ],
)
def test_the_trace_server_url_is_found_as_weave_finds_it(tmp_path, monkeypatch, env, expected):
    from weave.trace.env import weave_trace_server_url

    for var in ("WANDB_BASE_URL", "WANDB_PUBLIC_BASE_URL", "WF_TRACE_SERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    env = dict(env)
    if saved := env.pop("saved", None):
        (tmp_path / "settings").write_text(f"[default]\nbase_url = {saved}\n")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("WANDB_ENTITY", "acme")
    monkeypatch.setenv("WANDB_PROJECT", "prod")
    assert weave_trace_server_url() == expected  # weave's own answer
    from flywheel_assets.definitions import build_weave_source

    assert build_weave_source(load_settings()).base_url == expected


def test_a_cursor_of_the_started_at_version_goes_on_from_its_time_by_end(server, calls):
    started = iso(to_micros(T0))
    old = f'{{"v": 1, "started_at": "{started}", "ids": ["call-000001"], "pending": {{"call-9": "{started}"}}}}'
    cursor = WeaveCursor.parse(old)
    assert cursor == WeaveCursor(ended_at=to_micros(T0))
    server.add_calls([calls.chat(T0 - 100), calls.chat(T0 + 10)])  # ended before / after it
    assert [r["weave_call"][-11:] for r in source(server).poll(cursor, now=NOW).records] == ["call-000002"]
