"""Tests of the seeded production-traffic generator (flywheel_assets.sample_data)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import subprocess
import sys
from collections import Counter

import polars as pl
import pytest

from flywheel_assets.sample_data import (
    FORMATS,
    MALFORMED_KINDS,
    TOOL_ROUTER_TOOLS,
    Serving,
    generate_labeled_records,
    generate_records,
    main,
    write_sample_traces,
    writers,
)

N = 5000
END = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def labeled():
    return list(generate_labeled_records(N, seed=0))


def _defect(line: str) -> str | None:
    """Independent validator: the malformed kind a line exhibits, or None if valid."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return "invalid_json"
    if "workload_id" not in rec:
        return "missing_workload_id"
    if not isinstance(rec.get("timestamp"), int):
        return "non_numeric_timestamp"
    if "messages" not in rec["request"]:
        return "non_chat_request"
    if not rec["response"]["choices"]:
        return "empty_choices"
    msg = rec["response"]["choices"][0]["message"]
    if msg.get("content") is None and not msg.get("tool_calls"):
        return "empty_message"
    if any(len(m.get("content") or "") > 1024 * 1024 for m in rec["request"]["messages"]):
        return "oversized"
    return None


def _valid(labeled):
    return [json.loads(x.line) for x in labeled if x.malformed is None]


def _user_key(rec) -> tuple[str, ...]:
    return tuple(m["content"] for m in rec["request"]["messages"] if m["role"] == "user")


def test_deterministic_bytes_and_seed_sensitivity():
    a = list(generate_records(1500, seed=7))
    b = list(generate_records(1500, seed=7))
    c = list(generate_records(1500, seed=8))
    assert a == b
    assert a != c
    assert a == [x.line for x in generate_labeled_records(1500, seed=7)]


def test_written_files_are_byte_identical(tmp_path):
    for fmt in ("jsonl", "jsonl.gz"):
        p1 = write_sample_traces(tmp_path / f"a-{fmt}", 800, seed=3, days=3, fmt=fmt)
        p2 = write_sample_traces(tmp_path / f"b-{fmt}", 800, seed=3, days=3, fmt=fmt)
        assert [p.name for p in p1] == [p.name for p in p2]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(p1, p2))


def test_count_mix_and_malformed_fraction(labeled):
    assert len(labeled) == N
    detected = [_defect(x.line) for x in labeled]
    # the labels agree with an independent validator
    assert detected == [x.malformed for x in labeled]
    frac = sum(d is not None for d in detected) / N
    assert 0.015 < frac < 0.05
    mix = Counter(x.workload_id for x in labeled)
    assert set(mix) == {"tool_router", "support_chat", "query_rewrite"}
    assert 0.33 < mix["tool_router"] / N < 0.47
    assert all(0.22 < mix[w] / N < 0.38 for w in ("support_chat", "query_rewrite"))


def test_every_malformed_kind_occurs_and_oversized_is_rare(labeled):
    kinds = Counter(x.malformed for x in labeled if x.malformed)
    assert set(kinds) == set(MALFORMED_KINDS)
    assert kinds["oversized"] <= 7  # at most one per day file
    big = [x for x in labeled if x.malformed == "oversized"]
    assert all(len(x.line) > 1024 * 1024 for x in big)


def test_oversized_capped_per_day_regardless_of_n():
    kinds = Counter(x.malformed for x in generate_labeled_records(20000, seed=1, days=2))
    assert kinds["oversized"] <= 2
    assert kinds["missing_workload_id"] > 50


def test_no_malformed_when_rate_zero():
    lines = list(generate_labeled_records(2000, seed=1, malformed_rate=0.0))
    assert all(x.malformed is None and _defect(x.line) is None for x in lines)


def test_tool_router_tools_and_arguments(labeled):
    names = {t["function"]["name"] for t in TOOL_ROUTER_TOOLS}
    assert len(names) >= 6
    seen = Counter()
    for rec in _valid(labeled):
        if rec["workload_id"] != "tool_router":
            assert "tools" not in rec["request"]
            assert rec["response"]["choices"][0]["message"]["content"]
            continue
        req, choice = rec["request"], rec["response"]["choices"][0]
        assert {t["function"]["name"] for t in req["tools"]} == names
        assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in req["tools"])
        assert req["tool_choice"] == "auto"
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert isinstance(call["function"]["arguments"], str)
        args = json.loads(call["function"]["arguments"])
        assert isinstance(args, dict) and args
        schema = next(
            t["function"]["parameters"] for t in TOOL_ROUTER_TOOLS if t["function"]["name"] == call["function"]["name"]
        )
        assert set(args) == set(schema["required"])
        user = req["messages"][-1]["content"]
        for value in args.values():  # every argument is copied from the message
            assert str(value) in user, (value, user)
        seen[call["function"]["name"]] += 1
    assert set(seen) == names
    assert min(seen.values()) > 50


KEYWORDS = {
    "get_order_status": "status",
    "cancel_order": "cancel",
    "track_shipment": "track",
    "update_address": "address",
    "issue_refund": "refund",
    "search_products": "search",
    "find_store": "store",
    "apply_coupon": r"coupon|promo",
}


def test_tool_is_signalled_by_one_keyword(labeled):
    """The routed tool follows from the wording: exactly one tool keyword per message."""
    for rec in _valid(labeled):
        if rec["workload_id"] == "tool_router":
            user = rec["request"]["messages"][-1]["content"].lower()
            hits = [name for name, kw in KEYWORDS.items() if re.search(kw, user)]
            name = rec["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
            assert hits == [name], user


def test_response_shape_and_usage(labeled):
    for rec in _valid(labeled)[:500]:
        resp = rec["response"]
        assert resp["object"] == "chat.completion"
        assert resp["model"] == rec["request"]["model"]
        assert resp["created"] >= rec["timestamp"]
        assert resp["choices"][0]["index"] == 0
        assert resp["choices"][0]["message"]["role"] == "assistant"
        u = resp["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
        assert rec["request"]["messages"][0]["role"] == "system"
        assert isinstance(rec["latency_ms"], float) and rec["latency_ms"] > 0


def test_feedback_mostly_positive(labeled):
    valid = _valid(labeled)
    fb = [r["feedback"] for r in valid if "feedback" in r]
    assert 0.15 < len(fb) / len(valid) < 0.25
    positive = sum(f.get("thumbs") == "up" or f.get("rating", 0) >= 4 for f in fb)
    assert positive / len(fb) > 0.7
    assert all(f.get("thumbs") in ("up", "down") or 1 <= f["rating"] <= 5 for f in fb)


PII_RE = {
    "email": re.compile(r"[\w.]+@[\w.]+\.\w+"),
    "phone": re.compile(r"(\+1 \d{3}-|\(\d{3}\) )555-\d{4}"),
    "card": re.compile(r"\b\d{4} \d{4,6} \d{4,5}"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "ipv4": re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b"),
}


def test_pii_present(labeled):
    found = Counter()
    for rec in _valid(labeled):
        text = " ".join(_user_key(rec))
        for kind, rx in PII_RE.items():
            if rx.search(text):
                found[kind] += 1
    assert set(found) == set(PII_RE)
    labels = Counter(x.pii for x in labeled if x.pii)
    assert 0.03 < sum(labels.values()) / N < 0.08


def test_duplicates(labeled):
    valid = [(x, json.loads(x.line)) for x in labeled if x.malformed is None]
    lines = Counter(x.line for x, _ in valid)
    assert any(c > 1 for c in lines.values())  # double-logged, byte-identical lines
    keys = Counter(_user_key(r) for _, r in valid)
    dup_records = sum(c - 1 for c in keys.values())
    # injected exact + near duplicates (~8.5%) plus natural FAQ repeats
    assert 0.085 < dup_records / len(valid) < 0.25
    variants = Counter(x.variant for x, _ in valid if x.variant)
    assert set(variants) == {"exact_duplicate", "near_duplicate", "whitespace_variant"}
    # a whitespace variant has a user key of its own that collides once stripped
    stripped = Counter(tuple(" ".join(c.split()) for c in k) for k in keys)
    for x, rec in valid:
        if x.variant == "whitespace_variant":
            assert stripped[tuple(" ".join(c.split()) for c in _user_key(rec))] >= 2
        if x.variant in ("exact_duplicate", "near_duplicate"):
            assert keys[_user_key(rec)] >= 2


def test_days_span_and_files(tmp_path):
    paths = write_sample_traces(tmp_path, 1400, seed=2, days=7, end_date="2026-11-20")
    assert [p.name for p in paths] == [f"traces-{END - dt.timedelta(days=6 - i)}.jsonl" for i in range(7)]
    total = 0
    for p in paths:
        day = dt.date.fromisoformat(p.name[len("traces-") : -len(".jsonl")])
        lines = p.read_text().splitlines()
        assert 120 < len(lines) < 280
        total += len(lines)
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("timestamp"), int):
                assert dt.datetime.fromtimestamp(rec["timestamp"], dt.UTC).date() == day
    assert total == 1400
    assert sorted(tmp_path.iterdir()) == paths  # no temporary leftovers


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch, fmt):
    paths = write_sample_traces(tmp_path, 300, seed=1, days=1, fmt=fmt)
    before = paths[0].read_bytes()
    whole_days = writers.iter_days

    def failing_midway(items):
        for i, item in enumerate(items):
            if i == 100:
                raise RuntimeError("disk gone")
            yield item

    monkeypatch.setattr(
        writers, "iter_days", lambda *a, **kw: ((date, failing_midway(items)) for date, items in whole_days(*a, **kw))
    )
    with pytest.raises(RuntimeError, match="disk gone"):
        write_sample_traces(tmp_path, 300, seed=2, days=1, fmt=fmt)
    assert paths[0].read_bytes() == before
    assert sorted(tmp_path.iterdir()) == paths


def test_gzip_output_readable_with_polars(tmp_path):
    paths = write_sample_traces(tmp_path, 600, seed=4, days=2, fmt="jsonl.gz", malformed_rate=0.0)
    assert [p.suffixes[-2:] for p in paths] == [[".jsonl", ".gz"]] * 2
    df = pl.concat([pl.read_ndjson(gzip.decompress(p.read_bytes())) for p in paths], how="diagonal_relaxed")
    assert df.height == 600
    assert {"timestamp", "workload_id", "client_id", "request", "response"} <= set(df.columns)
    # with malformed records the lines still decompress and count right
    paths = write_sample_traces(tmp_path / "m", 600, seed=4, days=2, fmt="jsonl.gz")
    assert sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in paths) == 600


def test_parquet_output_readable_with_polars(tmp_path):
    paths = write_sample_traces(tmp_path, 3000, seed=5, days=3, fmt="parquet")
    assert all(p.suffix == ".parquet" for p in paths) and len(paths) == 3
    df = pl.concat([pl.read_parquet(p) for p in paths])
    assert df.height == 3000
    assert df.schema["timestamp"] == pl.Int64
    assert df.schema["request"] == pl.String and df.schema["response"] == pl.String
    reqs = [json.loads(s) for s in df["request"]]  # no invalid_json kind in parquet
    assert sum("messages" not in r for r in reqs) > 0  # non-chat requests kept
    assert df["workload_id"].null_count() > 0
    assert df["timestamp"].null_count() > 0
    feedback = [json.loads(f) for f in df["feedback"].drop_nulls()]
    assert feedback and all(set(f) <= {"thumbs", "rating"} for f in feedback)


def test_workload_subset():
    lines = [json.loads(x) for x in generate_records(300, workloads="query_rewrite", malformed_rate=0.0)]
    assert {r["workload_id"] for r in lines} == {"query_rewrite"}
    assert len({r["client_id"] for r in lines}) >= 2
    with pytest.raises(ValueError):
        list(generate_records(10, workloads=["nope"]))


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "--out",
            str(out),
            "--records",
            "300",
            "--days",
            "3",
            "--seed",
            "9",
            "--end-date",
            "2026-01-02",
            "--format",
            "jsonl.gz",
            "--workloads",
            "tool_router,support_chat",
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["traces-2025-12-31.jsonl.gz", "traces-2026-01-01.jsonl.gz", "traces-2026-01-02.jsonl.gz"]
    assert "300" in capsys.readouterr().out
    assert main(["--out", str(out), "--workloads", "bogus"]) == 2
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--format", "csv"])


def test_runs_as_a_module(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "-m",
            "flywheel_assets.sample_data",
            "--out",
            str(tmp_path),
            "--records",
            "50",
            "--days",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 50 records to 1 files" in done.stdout


def test_default_traffic_is_unchanged_by_the_serving_options():
    plain = list(generate_records(400, seed=5))
    assert list(generate_records(400, seed=5, serving=Serving())) == plain
    assert not any('"simulation"' in line for line in plain)


def test_post_promotion_traffic_served_by_a_promoted_candidate_is_labelled_simulated():
    records = [
        json.loads(line)
        for line in generate_records(300, seed=1, malformed_rate=0, serving=Serving(served_model="tiny-demo"))
    ]
    assert {r["request"]["model"] for r in records} == {"tiny-demo"}
    assert {r["response"]["model"] for r in records} == {"tiny-demo"}
    assert all(r["simulation"]["simulated"] and r["simulation"]["served_by"] == "tiny-demo" for r in records)


def test_a_canary_split_serves_its_share_with_its_latency_factor():
    serving = Serving(served_model="old", canary_model="new", canary_share=0.3, canary_latency_factor=2.0)
    records = [
        json.loads(line)
        for line in generate_records(4000, seed=2, malformed_rate=0, workloads="tool_router", serving=serving)
    ]
    by_model = {m: [r["latency_ms"] for r in records if r["response"]["model"] == m] for m in ("old", "new")}
    assert 0.27 < len(by_model["new"]) / len(records) < 0.33
    ratio = sorted(by_model["new"])[len(by_model["new"]) // 2] / sorted(by_model["old"])[len(by_model["old"]) // 2]
    assert 1.8 < ratio < 2.2
    assert all(r["simulation"]["canary"] == (r["response"]["model"] == "new") for r in records)


def test_drift_offers_and_calls_a_tool_never_seen_before():
    records = [
        json.loads(line)
        for line in generate_records(
            2000, seed=3, malformed_rate=0, workloads="tool_router", serving=Serving(drift=True)
        )
    ]
    calls = Counter(r["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] for r in records)
    assert 0.35 < calls["exchange_item"] / len(records) < 0.45
    assert all("exchange_item" in {t["function"]["name"] for t in r["request"]["tools"]} for r in records)
    exchange = next(
        r
        for r in records
        if r["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "exchange_item"
    )
    arguments = json.loads(exchange["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert arguments["order_id"] in exchange["request"]["messages"][-1]["content"]


def test_cli_simulated_traffic(tmp_path, capsys):
    rc = main(
        [
            "--out",
            str(tmp_path),
            "--records",
            "100",
            "--days",
            "1",
            "--served-model",
            "tiny-demo",
            "--canary-model",
            "tiny-demo-v2",
            "--canary-share",
            "0.5",
            "--drift",
        ]
    )
    assert rc == 0
    assert (
        "SIMULATED post-promotion records (served by tiny-demo, 50% by canary tiny-demo-v2" in capsys.readouterr().out
    )
    assert main(["--out", str(tmp_path), "--canary-share", "0.5"]) == 2  # a share needs a canary model
