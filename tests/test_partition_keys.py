"""workload_key: any user-supplied workload id -> a safe, stable, unique partition key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_assets.core.ingest import TimeBounds, land_file, read_partition
from partitions.keys import SAFE_WORKLOAD_KEY, workload_key

HOSTILE_IDS = [
    "../x",
    "../../etc/passwd",
    "a|b",
    "a/b",
    "a\\b",
    "a,b",
    "a b",
    " leading",
    "trailing ",
    "line\nbreak",
    "abc\n",  # a safe-looking id with a trailing newline
    "tab\there",
    "日本語",
    "Café",
    "Cafe\u0301",  # same text as "Café", other unicode normal form: still a distinct id
    "x" * 300,
    "y" * 65,
    ".",
    "..",
    "",
    "-leading-dash",
    "_leading_underscore",
    "UPPER",
    'a:b*c?d<e>f"g',
    "null\x00byte",
    "emoji 🚀",
]


def is_safe(key: str) -> bool:
    # fullmatch: `$` alone would also accept a key ending with "\n"
    return SAFE_WORKLOAD_KEY.fullmatch(key) is not None


@pytest.mark.parametrize("workload_id", HOSTILE_IDS)
def test_hostile_ids_get_safe_keys(workload_id):
    key = workload_key(workload_id)
    assert is_safe(key), repr(key)
    assert len(key) <= 64
    assert "|" not in key and "," not in key and "/" not in key and "\\" not in key
    assert key not in {".", ".."}
    assert key == key.strip()
    assert Path(key).name == key  # one path component
    assert workload_key(workload_id) == key  # stable


def test_hostile_ids_never_share_a_key():
    keys = [workload_key(w) for w in HOSTILE_IDS]
    assert len(set(keys)) == len(HOSTILE_IDS)


def test_hostile_keys_stay_readable():
    assert workload_key("Café").startswith("cafe-")
    assert workload_key("../../etc/passwd").startswith("etc-passwd-")


@pytest.mark.parametrize(
    "workload_id",
    [
        "tool_router",
        "support-chat",
        "a",
        "q1",
        "z" * 64,
        "support.router",
        "agent.tool_router",
        "v1.2.3",
    ],
)
def test_safe_ids_are_their_own_key(workload_id):
    assert workload_key(workload_id) == workload_id


@pytest.mark.parametrize("workload_id", [".hidden", "trailing.", "a..b", "..", "."])
def test_dots_that_are_unsafe_in_a_file_name_are_hashed(workload_id):
    key = workload_key(workload_id)
    assert key != workload_id and is_safe(key) and not key.startswith(".")


def test_a_safe_id_that_looks_like_a_hashed_key_does_not_collide():
    # "Foo" is hashed into "foo-<10 hex>"; an id that is literally that string must not
    # take the same key, or two workloads' data would be merged.
    hashed = workload_key("Foo")
    assert hashed != "Foo"
    assert workload_key(hashed) != hashed
    assert is_safe(workload_key(hashed))


def test_keys_are_stable_across_calls():
    assert [workload_key(w) for w in HOSTILE_IDS] == [workload_key(w) for w in HOSTILE_IDS]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_a_safe_key(workload_id):
    key = workload_key(workload_id)
    assert is_safe(key)
    assert workload_key(workload_id) == key


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_different_ids_never_share_a_key(a, b):
    if a != b:
        assert workload_key(a) != workload_key(b)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcF-_0123456789|/. \n", max_size=20))
def test_near_safe_ids_never_collide_with_their_key(workload_id):
    # an id and the key of another id are both plausible workload ids
    key = workload_key(workload_id)
    if key != workload_id:
        assert workload_key(key) != key


# --------------------------------------------------------------------------- end to end


def _trace(workload_id: str, i: int) -> str:
    return json.dumps(
        {
            "timestamp": 1_735_700_000 + i,
            "workload_id": workload_id,
            "client_id": "c",
            "request": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
        },
        ensure_ascii=False,
    )


def test_landing_hostile_ids_stays_inside_the_landing_dir_and_keeps_the_original_id(tmp_path):
    landing = tmp_path / "landing"
    outside_before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(landing)}
    ids = [w for w in HOSTILE_IDS if w]  # "" is quarantined as a bad workload id
    batch = [(f"f:{i}", _trace(w, i)) for i, w in enumerate(ids)]
    result = land_file(
        iter([batch]),
        source_id="hostile",
        fingerprint="1",
        landing_dir=landing,
        bounds=TimeBounds(dt.date(2025, 1, 1), dt.date(2025, 2, 1)),
    )
    # nothing written outside the landing folder, and every file is inside it
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(landing)} == outside_before
    written = [p for p in landing.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert path.resolve().is_relative_to(landing.resolve())
    # every id kept, one partition each, original id recoverable from the key
    assert sorted(result.workload_ids.values()) == sorted(ids)
    assert len(result.workload_ids) == len(ids)
    for key, original in result.workload_ids.items():
        assert key == workload_key(original)
        assert is_safe(key)
        valid, quarantined = read_partition(landing, "2025-01-01", key)
        assert valid["workload_id"].to_list() == [original]
        assert quarantined.height == 0
    all_valid = pl.concat([pl.read_parquet(p) for p in written if p.name.startswith("valid-")])
    assert sorted(all_valid["workload_id"].to_list()) == sorted(ids)


def test_a_workload_landed_before_dots_were_allowed_keeps_its_key(tmp_path, monkeypatch):
    """`support.router` was landed as `support-router-<hash>` by an older version; its new
    records join that partition (and a landing area from before the key registry is read
    from its manifests), while a workload first seen now gets its readable dotted key."""
    from flywheel_assets.core import ingest

    landing = tmp_path / "landing"
    bounds = TimeBounds(dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    old_key = "support-router-694f0b2819"
    monkeypatch.setattr(ingest, "workload_key", lambda w: old_key if w == "support.router" else workload_key(w))
    land_file(
        iter([[("old:1", _trace("support.router", 1))]]),
        source_id="old",
        fingerprint="1",
        landing_dir=landing,
        bounds=bounds,
    )
    monkeypatch.undo()
    (landing / ingest.WORKLOAD_KEYS).unlink()  # as an older version left it
    result = land_file(
        iter([[("new:1", _trace("support.router", 2)), ("new:2", _trace("billing.refunds", 3))]]),
        source_id="new",
        fingerprint="1",
        landing_dir=landing,
        bounds=bounds,
    )
    assert result.workload_ids == {old_key: "support.router", "billing.refunds": "billing.refunds"}
    assert read_partition(landing, "2025-01-01", old_key)[0]["source"].to_list() == ["old:1", "new:1"]
    assert ingest.read_workload_keys(landing) == {"support.router": old_key, "billing.refunds": "billing.refunds"}


def test_ids_with_lone_surrogates_get_distinct_safe_keys():
    # json.loads("\"a\\ud800\"") yields a lone surrogate, which strict UTF-8 cannot encode
    keys = {workload_key("a\ud800"), workload_key("a\ud801"), workload_key("a")}
    assert len(keys) == 3
    assert all(is_safe(k) for k in keys)


def test_trace_partition_boxes_cover_exactly_the_asked_partitions():
    """Each box is a Dagster key range (days x workloads); together they cover what was
    asked, nothing else, and a full week of every workload is one box."""
    import itertools

    import dagster as dg

    from partitions.slices import trace_partition_boxes, trace_partitions

    order = ["wa", "wb", "wc"]
    days = [f"2025-01-0{d}" for d in range(1, 8)]
    week = [(d, w) for d in days for w in order]
    assert len(trace_partition_boxes(week, order)) == 1
    asked = {
        ("2025-01-01", "wa"),
        ("2025-01-01", "wb"),
        ("2025-01-02", "wb"),
        ("2025-01-02", "wc"),
        ("2025-01-03", "wb"),
        ("2025-01-03", "wc"),
        ("2025-01-05", "wa"),
    }
    boxes = trace_partition_boxes(asked, order)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", order)
        covered = list(
            itertools.chain.from_iterable(
                trace_partitions.get_partition_keys_in_range(
                    dg.PartitionKeyRange(f"{box[0][0]}|{box[0][1]}", f"{box[-1][0]}|{box[-1][1]}"),
                    dynamic_partitions_store=instance,
                )
                for box in boxes
            )
        )
    assert sorted(covered) == sorted(f"{d}|{w}" for d, w in asked)  # each once, none extra
    assert len(boxes) == 3  # d1 x [wa, wb]; d2..d3 x [wb, wc]; d5 x [wa]
