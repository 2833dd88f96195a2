"""curate: feedback filters, classification, dedup (earliest kept) and PII redaction."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel_assets.core.curation import (
    OUTPUT_COLUMNS,
    classify_workload,
    curate,
    lookback_days,
    redact_records,
)
from flywheel_assets.core.ingest import TRACE_SCHEMA

T0 = 1_735_700_000


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def row(
    record_id: str,
    user: str | list[str] = "hello",
    *,
    timestamp: int = T0,
    system: str = "You are helpful.",
    tools: list[str] | None = None,
    tool_call: str | None = None,
    content: str | None = "ok",
    thumbs: str | None = None,
    rating: float | None = None,
) -> dict:
    """One landed trace row, shaped like ingest's TRACE_SCHEMA rows."""
    users = [user] if isinstance(user, str) else user
    messages = [{"role": "system", "content": system}] + [{"role": "user", "content": u} for u in users]
    tool_specs = [{"type": "function", "function": {"name": t}} for t in tools or []]
    answer = {"role": "assistant"}
    if content is not None:
        answer["content"] = content
    if tool_call:
        answer["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": tool_call, "arguments": "{}"}}]
    raw = {
        "timestamp": timestamp,
        "workload_id": "w",
        "client_id": "web",
        "request": {"model": "prod", "messages": messages, **({"tools": tool_specs} if tool_specs else {})},
        "response": {"choices": [{"message": answer}]},
    }
    return {
        "record_id": record_id,
        "timestamp": timestamp,
        "day": "2025-01-01",
        "workload_id": "w",
        "workload_key": "w",
        "client_id": "web",
        "model": "prod",
        "user_key": _json(users),
        "tool_names": _json(sorted(tools or [])),
        "has_tools": bool(tool_specs),
        "has_tool_calls": bool(tool_call),
        "feedback_thumbs": thumbs,
        "feedback_rating": rating,
        "latency_ms": 100.0,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "workload_description": None,
        "source": "f.jsonl:1",
        "raw": _json(raw),
    }


def part(row_: dict, name: str) -> str:
    """The messages or the answer of a row's record, as compact JSON."""
    record = json.loads(row_["raw"])
    value = record["request"]["messages"] if name == "messages" else record["response"]["choices"][0]["message"]
    return _json(value)


def frame(rows: list[dict]) -> pl.LazyFrame:
    return pl.DataFrame(rows, schema=TRACE_SCHEMA).lazy()


def run(rows, **kw):
    dataset, stats = curate(frame(rows), **kw)
    out = dataset.collect().with_columns(
        messages=pl.col("raw").str.json_path_match("$.request.messages"),
        answer=pl.col("raw").str.json_path_match("$.response.choices[0].message"),
    )
    return out, stats


# --------------------------------------------------------------------------- dedup


def test_output_columns_and_type():
    dataset, _ = curate(frame([row("a")]))
    assert tuple(dataset.collect_schema().names()) == OUTPUT_COLUMNS
    out, stats = run([row("a")])
    assert out["workload_type"].to_list() == ["chat"]
    assert (stats.records_in, stats.records_out, stats.duplicates) == (1, 1, 0)


def test_exact_duplicates_keep_the_earliest():
    out, stats = run(
        [
            row("late", "where is my order", timestamp=T0 + 50, content="second"),
            row("early", "where is my order", timestamp=T0, content="first"),
            row("other", "something else", timestamp=T0 + 10),
        ]
    )
    assert out["record_id"].to_list() == ["early", "other"]
    assert stats.duplicates == 1 and stats.records_out == 2


def test_timestamp_ties_keep_the_smallest_record_id():
    out, _ = run([row("b", timestamp=T0), row("a", timestamp=T0), row("c", timestamp=T0)])
    assert out["record_id"].to_list() == ["a"]


def test_a_different_system_prompt_does_not_prevent_dedup():
    out, stats = run(
        [
            row("v1", "refund please", system="You are a support bot."),
            row("v2", "refund please", system="You are ShopCo's support bot. Be concise.", timestamp=T0 + 1),
        ]
    )
    assert out["record_id"].to_list() == ["v1"]
    assert stats.duplicates == 1


def test_a_different_tool_set_is_a_different_example():
    rows = [
        row("a", "find a store", tools=["find_store"], tool_call="find_store"),
        row("b", "find a store", tools=["find_store", "track"], tool_call="find_store", timestamp=T0 + 1),
        # same tools listed in another order: same key
        row("c", "find a store", tools=["track", "find_store"], tool_call="find_store", timestamp=T0 + 2),
    ]
    out, stats = run(rows)
    assert out["record_id"].to_list() == ["a", "b"]
    assert stats.duplicates == 1


def test_whitespace_and_multi_turn_differences_are_kept():
    out, _ = run(
        [
            row("a", "hello"),
            row("b", "hello ", timestamp=T0 + 1),
            row("c", ["hello", "and more"], timestamp=T0 + 2),
        ]
    )
    assert out.height == 3


_users = st.sampled_from(["a", "b", "c", "ab"])
_record = st.tuples(
    st.lists(_users, min_size=1, max_size=2),
    st.sampled_from([None, ("t1",), ("t1", "t2"), ("t2", "t1")]),
    st.integers(0, 5),  # small range: timestamp ties happen
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_dedup_keeps_exactly_the_earliest_record_per_key(records, rnd):
    ids = [f"r{i:02d}" for i in range(len(records))]
    rnd.shuffle(ids)  # record ids unrelated to input order
    rows = [
        row(rid, users, timestamp=T0 + ts, tools=list(tools) if tools else None, tool_call="t1")
        for rid, (users, tools, ts) in zip(ids, records)
    ]
    rnd.shuffle(rows)
    by_id = {r["record_id"]: r for r in rows}
    key = lambda r: (r["user_key"], r["tool_names"])  # noqa: E731

    out, stats = run(rows)

    kept = [by_id[rid] for rid in out["record_id"]]
    kept_keys = [key(r) for r in kept]
    assert len(kept_keys) == len(set(kept_keys))  # unique
    assert set(kept_keys) == {key(r) for r in rows}  # every input key, once
    for r in kept:
        group = [x for x in rows if key(x) == key(r)]
        earliest = min(group, key=lambda x: (x["timestamp"], x["record_id"]))
        assert r["record_id"] == earliest["record_id"]
    assert stats.records_in == len(rows)
    assert stats.duplicates == len(rows) - out.height == stats.records_in - stats.records_out
    # output is in time order
    assert out["timestamp"].to_list() == sorted(out["timestamp"].to_list())


def test_curate_is_deterministic_whatever_the_input_order():
    rows = [row(f"r{i}", f"q{i % 3}", timestamp=T0 + i % 2) for i in range(9)]
    a, _ = run(rows)
    b, _ = run(list(reversed(rows)))
    assert a.equals(b)


# --------------------------------------------------------------------------- feedback


FEEDBACK_ROWS = [
    row("up", "q1", thumbs="up"),
    row("down", "q2", thumbs="down"),
    row("r1", "q3", rating=1.0),
    row("r2", "q4", rating=2.0),
    row("r3", "q5", rating=3.0),
    row("r4", "q6", rating=4.0),
    row("none", "q7"),
]


def test_no_feedback_filter_keeps_everything():
    out, stats = run(FEEDBACK_ROWS)
    assert out.height == 7 and stats.removed_by_feedback == 0


def test_exclude_negative_drops_thumbs_down_and_low_ratings_but_keeps_unrated():
    out, stats = run(FEEDBACK_ROWS, feedback_filter="exclude_negative")
    assert sorted(out["record_id"]) == ["none", "r3", "r4", "up"]
    assert stats.removed_by_feedback == 3


def test_positive_only_keeps_thumbs_up_and_high_ratings():
    out, stats = run(FEEDBACK_ROWS, feedback_filter="positive_only")
    assert sorted(out["record_id"]) == ["r4", "up"]
    assert stats.removed_by_feedback == 5


def test_feedback_is_filtered_before_dedup():
    # the earliest copy is disliked: the later, unrated copy of the question survives
    rows = [row("bad", "q", thumbs="down"), row("later", "q", timestamp=T0 + 5)]
    out, stats = run(rows, feedback_filter="exclude_negative")
    assert out["record_id"].to_list() == ["later"]
    assert (stats.removed_by_feedback, stats.duplicates) == (1, 0)


# --------------------------------------------------------------------------- classification


def test_tool_workload_drops_records_without_tool_calls():
    rows = [
        row("a", "q1", tools=["find_store"], tool_call="find_store"),
        row("b", "q2", tools=["find_store"], tool_call=None, content="I can't help"),
        row("c", "q3", tools=["find_store"], tool_call="find_store"),
        row("d", "q4"),  # no tools offered, no call
    ]
    out, stats = run(rows)
    assert stats.workload_type == "tool_calling"
    assert set(out["workload_type"]) == {"tool_calling"}
    assert out["record_id"].to_list() == ["a", "c"]
    assert stats.removed_without_tool_call == 2
    assert out["has_tool_calls"].all()


def test_chat_workload_keeps_records_without_tool_calls():
    rows = [row("a", "q1", tools=["t"], tool_call="t"), row("b", "q2"), row("c", "q3")]
    out, stats = run(rows)
    assert stats.workload_type == "chat"
    assert out.height == 3 and stats.removed_without_tool_call == 0


def test_classification_threshold_is_half():
    half = pl.DataFrame([row("a", tools=["t"]), row("b")], schema=TRACE_SCHEMA)
    assert classify_workload(half) == "tool_calling"
    less = pl.DataFrame([row("a", tools=["t"]), row("b"), row("c")], schema=TRACE_SCHEMA)
    assert classify_workload(less) == "chat"
    assert classify_workload(pl.DataFrame(schema=TRACE_SCHEMA)) == "chat"


def test_empty_input_is_an_empty_chat_dataset():
    dataset, stats = curate(frame([]))
    assert dataset.collect().height == 0 and tuple(dataset.collect_schema().names()) == OUTPUT_COLUMNS
    assert (stats.records_in, stats.records_out, stats.workload_type) == (0, 0, "chat")


# --------------------------------------------------------------------------- lookback


def test_lookback_window_ends_at_the_newest_day():
    days = ["2025-01-10", "2025-01-01", "2025-01-08", "2025-01-04", "2025-01-09"]
    assert lookback_days(days, 1) == ["2025-01-10"]
    assert lookback_days(days, 3) == ["2025-01-08", "2025-01-09", "2025-01-10"]
    assert lookback_days(days, 7) == ["2025-01-04", "2025-01-08", "2025-01-09", "2025-01-10"]
    assert lookback_days(days, 30) == sorted(days)
    assert lookback_days([], 7) == []


def test_lookback_window_crosses_month_and_year_ends():
    assert lookback_days(["2024-12-30", "2024-12-31", "2025-01-01"], 2) == [
        "2024-12-31",
        "2025-01-01",
    ]
    assert lookback_days(["2024-02-28", "2024-02-29", "2024-03-01"], 2) == [
        "2024-02-29",
        "2024-03-01",
    ]


# --------------------------------------------------------------------------- PII


PII_CASES = [  # kind, the PII, how it appears in a message
    ("email", "jane.doe+shop@example.co.uk", "write to {} please"),
    ("phone", "+1 415-555-0134", "call me at {} today"),
    ("phone", "(415) 555-0134", "call me at {} today"),
    ("card_number", "4111 1111 1111 1111", "my card {} was charged"),
    ("card_number", "4111-1111-1111-1111", "my card {} was charged"),
    ("ssn", "123-45-6789", "ssn {} on file"),
    ("ip_address", "192.168.10.254", "login from {} failed"),
]


@pytest.mark.parametrize("kind,pii,template", PII_CASES)
def test_pii_is_redacted_in_messages_and_answer_and_counted(kind, pii, template):
    text = template.format(pii)
    rows = [row("a", text, content=f"Noted: {text}")]
    out, stats = run(rows)
    user = json.loads(out["messages"][0])[1]["content"]
    answer = json.loads(out["answer"][0])["content"]
    token = f"[{kind.upper()}]"
    assert user == template.format(token)
    assert answer == "Noted: " + template.format(token)
    assert stats.redactions[kind] == 2
    assert sum(stats.redactions.values()) == 2, stats.redactions


@pytest.mark.parametrize("kind,pii,template", PII_CASES)
def test_pii_after_a_newline_or_tab_is_redacted_and_json_stays_valid(kind, pii, template):
    # in the stored JSON a newline is the escape `\n`: "\\n4111..." must still be caught
    token = f"[{kind.upper()}]"
    for sep in ["\n", "\t", "\r\n", '"', "\\"]:
        rows = [row("a", f"details:{sep}{pii}", content=f"ok{sep}{pii}")]
        out, stats = run(rows)
        messages = json.loads(out["messages"][0])  # still valid JSON
        answer = json.loads(out["answer"][0])
        assert token in messages[1]["content"], (sep, messages[1]["content"])
        assert token in answer["content"], (sep, answer["content"])
        assert stats.redactions[kind] == 2


def test_redaction_keeps_json_valid_and_structure_intact():
    text = "mail a@b.io, call (415) 555-0134, card 4111 1111 1111 1111, ssn 123-45-6789, ip 10.0.0.1"
    rows = [
        row("a", [text, "second turn jane@x.org"], tools=["t"], tool_call="t", content=None),
        row("b", "q", tools=["t"], tool_call="t", content=text),
    ]
    out, stats = run(rows)
    for col in ("messages", "answer"):
        for value in out[col]:
            json.loads(value)
    messages = json.loads(out.filter(pl.col("record_id") == "a")["messages"][0])
    assert [m["role"] for m in messages] == ["system", "user", "user"]
    assert messages[1]["content"] == ("mail [EMAIL], call [PHONE], card [CARD_NUMBER], ssn [SSN], ip [IP_ADDRESS]")
    assert messages[2]["content"] == "second turn [EMAIL]"
    assert stats.redactions == {
        "email": 3,
        "card_number": 2,
        "ssn": 2,
        "phone": 2,
        "ip_address": 2,
    }


NOT_PII = [
    "Where is order ORD-123456?",
    "Track 1Z12345678 please",
    "It happened at 2026-11-14T10:22:01Z",
    "Refund $49.99 on order ORD-555013",
    "Version 3.2 of the app, page 12 of 40",
    "Call between 9 and 5, zip 02108",
    "The meeting is 2025-01-01 at 10:30",
    "Order 1234 5678 9012 3456 shipped",  # card-shaped, but fails the Luhn check
    "Tracking 9400 1000 0000 0000 0000 00",
]


@pytest.mark.parametrize("text", NOT_PII)
def test_ordinary_text_is_not_redacted(text):
    rows = [row("a", text, content=text)]
    out, stats = run(rows)
    assert json.loads(out["messages"][0])[1]["content"] == text
    assert json.loads(out["answer"][0])["content"] == text
    assert sum(stats.redactions.values()) == 0


def test_rows_without_pii_are_left_byte_identical():
    rows = [row("a", "plain question", content="plain answer")]
    out, _ = run(rows)
    assert out["messages"][0] == part(rows[0], "messages")
    assert out["answer"][0] == part(rows[0], "answer")


def test_redaction_can_be_turned_off():
    rows = [row("a", "mail jane@example.com")]
    out, stats = run(rows, redact=False)
    assert "jane@example.com" in out["messages"][0]
    assert stats.redactions == {}


def test_redact_records_handles_nulls_and_empty_series():
    raw = pl.Series("raw", [None, row("a", "a@b.io")["raw"]], pl.String)
    out, counts = redact_records(raw)
    assert out[0] is None
    assert "[EMAIL]" in out[1] and "a@b.io" not in out[1]
    assert counts["email"] == 1
    empty, counts = redact_records(raw.head(0))
    assert empty.len() == 0 and sum(counts.values()) == 0


def test_only_messages_and_answers_are_redacted():
    # the client id and the tool descriptions are not user text: left as they are
    record = json.loads(row("a", "mail a@b.io", tools=["notify"])["raw"])
    record["client_id"] = "ops@example.com"
    record["request"]["tools"][0]["function"]["description"] = "emails support@example.com"
    out, counts = redact_records(pl.Series("raw", [_json(record)]))
    redacted = json.loads(out[0])
    assert redacted["request"]["messages"][1]["content"] == "mail [EMAIL]"
    assert redacted["client_id"] == "ops@example.com"
    assert redacted["request"]["tools"] == record["request"]["tools"]
    assert counts["email"] == 1


_fragments = st.sampled_from(
    [
        "jane@example.com",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "123-45-6789",
        "1234 5678 9012 3456",
        "+1 415-555-0134",
        "(415) 555-0134",
        "10.0.0.1",
        "ORD-123456",
        "2026-11-14",
        "hello",
        "x",
        "1",
        " ",
        "\n",
        "\t",
        '"',
        "\\",
        "é",
        "日本",
        "_",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_fragments, max_size=8).map("".join), min_size=1, max_size=4))
def test_redaction_equals_redacting_each_decoded_string(texts):
    # whatever surrounds the PII (escapes, quotes, unicode), the stored JSON is redacted
    # exactly as if each decoded string had been redacted on its own
    import re

    from flywheel_assets.core.curation import PII_PATTERNS

    def luhn(number: str) -> bool:  # written out independently of the module's
        total = 0
        for position, char in enumerate(reversed([c for c in number if c.isdigit()])):
            digit = int(char) * (2 if position % 2 else 1)
            total += digit - 9 if digit > 9 else digit
        return total % 10 == 0

    def reference(text: str) -> str:
        for name, pattern in PII_PATTERNS.items():
            mark = f"[{name.upper()}]"
            if name == "card_number":
                text = re.sub(pattern, lambda m, mark=mark: mark if luhn(m.group()) else m.group(), text)
            else:
                text = re.sub(pattern, mark, text)
        return text

    rows = [row(f"r{i}", t, content=t or "ok", timestamp=T0 + i) for i, t in enumerate(texts)]
    out, _ = run(rows, redact=True)
    by_id = {r["record_id"]: r for r in rows}
    for rid, messages, answer in out.select("record_id", "messages", "answer").iter_rows():
        src = by_id[rid]
        assert json.loads(messages) == [
            {**m, "content": reference(m["content"])} for m in json.loads(part(src, "messages"))
        ]
        assert json.loads(answer) == {
            k: reference(v) if k == "content" else v for k, v in json.loads(part(src, "answer")).items()
        }


def test_exact_copies_of_a_record_from_two_files_are_kept_once():
    # the same line in two drop files: same record id, different sources
    first, copy = row("a", "q"), {**row("a", "q"), "source": "g.jsonl:7"}
    out, stats = run([first, copy, row("b", "other")])
    assert out["record_id"].to_list() == ["a", "b"]
    assert out["source"][0] == "f.jsonl:1"
    assert stats.duplicates == 1 and stats.record_ids.to_list() == ["a", "b"]


# --------------------------------------------------------------------------- near-duplicates


NEAR = "please check the delivery status of the blue winter coat I ordered last week for my sister"


def test_near_duplicates_are_kept_and_marked_with_their_earliest_record():
    rows = [
        row("late", NEAR.replace("sister", "brother"), timestamp=T0 + 5),  # last of 17 words: 15/17
        row("early", NEAR, timestamp=T0),
        row("variant", NEAR.upper() + "!!", timestamp=T0 + 9),  # same words: similarity 1
        row("other", "what are your opening hours on sunday", timestamp=T0 + 1),
    ]
    out, stats = run(rows)
    assert dict(out.select("record_id", "near_duplicate_cluster").iter_rows()) == {
        "early": "early",
        "other": "other",
        "late": "early",
        "variant": "early",
    }
    assert stats.records_out == 4 and stats.duplicates == 0
    (cluster,) = stats.near_duplicate_clusters.iter_rows(named=True)
    assert cluster["cluster"] == "early" and cluster["records"] == 3
    assert cluster["record_ids"] == ["early", "late", "variant"] and cluster["prompt"] == NEAR
    assert stats.clusters.to_list() == out["near_duplicate_cluster"].to_list()


def test_the_threshold_decides_what_is_near():
    rows = [row("a", NEAR, timestamp=T0), row("b", NEAR.replace("blue winter", "red summer"), timestamp=T0 + 1)]
    # two adjacent words of 17 changed: 13 of 19 distinct bigrams shared (0.68)
    assert run(rows, near_duplicate_threshold=0.8)[1].near_duplicate_clusters.height == 0
    assert run(rows, near_duplicate_threshold=0.65)[1].clusters.to_list() == ["a", "a"]
