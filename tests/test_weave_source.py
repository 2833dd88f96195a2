"""WeaveTraceSource against a fake Weave trace server on loopback: mapping, paging, cursor."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from fake_weave_server import CallFactory, Fault, fake_weave_server, iso, op_ref, to_micros
from flywheel_assets.core.schema import Rejection, TraceRecord, validate_trace
from resources.weave_source import WeaveCursor, WeaveTraceSource, call_to_trace

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
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
        entity="acme", project="prod", api_key="secret-key", base_url=server.base_url,
        settle_seconds=0, max_retries=0, page_size=10,
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
        "model": "prod-model", "messages": [{"role": "user", "content": "where is order 123?"}],
        "tools": TOOLS, "temperature": 0.2,
    }
    assert record["response"]["choices"][0]["message"]["content"] == "answer 1"
    assert record["latency_ms"] == 250.0
    assert record["feedback"] == {"thumbs": "down"}
    assert record["weave_call"] == "weave:///acme/prod/call/call-000001"
    assert isinstance(validate_trace(record), TraceRecord)


def test_a_trace_document_output_is_the_record_filled_from_the_call(calls):
    document = {
        "timestamp": int(T0) - 60, "workload_id": "support_chat", "client_id": "helpdesk",
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
def test_poll_pages_with_server_side_op_and_started_at_filters(server, calls):
    server.add_calls(calls.chat(T0 + i * 7.5) for i in range(25))
    other = CallFactory(chat_op="my_agent.plan", counter=100)
    server.add_calls([other.chat(T0 + 1)])  # another op: not a trace
    poll = source(server).poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll.records] == [f"call-{i:06d}" for i in range(1, 26)]
    assert poll.requests == 3 and poll.calls_read == 25
    assert poll.cursor.started_at == to_micros(T0 + 24 * 7.5) and poll.cursor.ids == ("call-000025",)
    for body in stream_queries(server):
        assert body["project_id"] == "acme/prod"
        assert body["filter"]["op_names"] == [
            "weave:///acme/prod/op/openai.chat.completions.create:*"
        ]
        bounds = body["query"]["$expr"]["$and"]
        assert bounds[0]["$gte"][0] == {"$getField": "started_at"}
        assert bounds[1] == {"$lt": [{"$getField": "started_at"}, {"$literal": int(NOW.timestamp())}]}
        assert body["sort_by"] == [{"field": "started_at", "direction": "asc"}, {"field": "id", "direction": "asc"}]
        assert body["limit"] == 10
    assert server.requests[-1].authorization.startswith("Basic ")


def test_keyset_paging_reads_each_call_once_when_many_share_a_second(server, calls):
    burst = [calls.chat(T0 + 0.001 * i) for i in range(23)]  # 23 calls inside one second
    tail = [calls.chat(T0 + 5 + i) for i in range(4)]
    server.add_calls(burst + tail)
    poll = source(server).poll(WeaveCursor(), now=NOW)
    ids = [r["weave_call"].rsplit("/", 1)[1] for r in poll.records]
    assert ids == [c["id"] for c in burst + tail]
    pages = [(b["query"]["$expr"]["$and"][0]["$gte"][1]["$literal"], b["offset"]) for b in stream_queries(server)]
    second = int(T0)
    assert pages[1:] == [(second, 10), (second, 20)]  # offset stays within the one second


def test_a_later_poll_reads_only_new_calls_and_ties_are_not_lost(server, calls):
    first = [calls.chat(T0 + i) for i in range(5)]
    server.add_calls(first)
    ws = source(server)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert len(poll1.records) == 5
    tie = calls.chat(T0 + 4, call_id="call-zzz-tie")  # same started_at as the last one read
    later = [calls.chat(T0 + 10 + i) for i in range(3)]
    server.add_calls([tie, *later])
    server.requests.clear()
    served = server.calls_served
    poll2 = ws.poll(poll1.cursor, now=NOW)
    assert [r["weave_call"].rsplit("/", 1)[1] for r in poll2.records] == ["call-zzz-tie"] + [c["id"] for c in later]
    (body,) = stream_queries(server)
    assert body["query"]["$expr"]["$and"][0]["$gte"][1] == {"$literal": int(T0 + 4)}  # from the cursor
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


def test_an_unfinished_call_is_waited_for_then_written_once(server, calls):
    running = calls.chat(NOW.timestamp() - 60, ended=False)
    done = calls.chat(NOW.timestamp() - 50)
    server.add_calls([running, done])
    ws = source(server, unfinished_wait_seconds=3600)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert [r["weave_call"][-11:] for r in poll1.records] == [done["id"]]
    assert list(poll1.cursor.pending) == [running["id"]]
    assert WeaveCursor.parse(poll1.cursor.to_json()) == poll1.cursor
    poll2 = ws.poll(poll1.cursor, now=NOW)  # still running: nothing new
    assert poll2.records == [] and poll2.cursor == poll1.cursor
    finished = calls.chat(NOW.timestamp() - 60, call_id=running["id"], answer="late answer")
    server.add_calls([finished])
    poll3 = ws.poll(poll2.cursor, now=NOW)
    assert [r["response"]["choices"][0]["message"]["content"] for r in poll3.records] == ["late answer"]
    assert poll3.cursor.pending == {}
    assert ws.poll(poll3.cursor, now=NOW).records == []


def test_a_call_that_never_finishes_is_written_after_the_wait_for_quarantine(server, calls):
    server.add_calls([calls.chat(NOW.timestamp() - 60, ended=False)])
    ws = source(server, unfinished_wait_seconds=600)
    poll1 = ws.poll(WeaveCursor(), now=NOW)
    assert poll1.records == [] and len(poll1.cursor.pending) == 1
    poll2 = ws.poll(poll1.cursor, now=NOW + dt.timedelta(hours=1))
    assert len(poll2.records) == 1 and poll2.pending_written_unfinished == 1
    assert poll2.cursor.pending == {}
    assert validate_trace(poll2.records[0]).reason == "missing_field"  # no response: quarantined


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
    cursor = WeaveCursor(started_at=to_micros(T0), ids=("a", "b"))
    path = ws.window_file("/traces", cursor)
    assert path.parent.as_posix() == "/traces/weave"
    assert path.name.startswith("Acme_Corp__prod_x-") and path.name.endswith(".jsonl")
    assert path == ws.window_file("/traces", WeaveCursor.parse(cursor.to_json()))
    assert path != ws.window_file("/traces", WeaveCursor(started_at=to_micros(T0), ids=("a",)))
