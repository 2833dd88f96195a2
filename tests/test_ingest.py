"""Landing: validate_batch, land_file, read_partition and the file trace readers."""

from __future__ import annotations

import datetime as dt
import gzip
import inspect
import json
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flywheel_assets.core.ingest as ingest_module
import resources.traces as traces_module
from flywheel_assets.core.ingest import (
    MANIFEST,
    QUALITY_COLUMNS,
    TRACE_SCHEMA,
    UNATTRIBUTED,
    TimeBounds,
    land_file,
    land_files,
    read_manifest,
    read_partition,
    read_unattributed,
    stored_traces,
    validate_batch,
    with_quality_columns,
)
from flywheel_assets.sample_data import generate_labeled_records, write_sample_traces
from partitions.keys import workload_key
from resources.traces import FileTraceSource, iter_jsonl_batches, iter_parquet_batches

DAY1 = 1_735_700_000  # 2025-01-01T02:53:20Z
DAY2 = DAY1 + 86_400  # 2025-01-02
BOUNDS = TimeBounds(dt.date(2025, 1, 1), dt.date(2025, 2, 1))


def trace(
    i: int = 0,
    *,
    workload_id: str = "support_chat",
    timestamp: int = DAY1,
    user: str | None = None,
    tools: bool = False,
) -> dict:
    message = (
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": "find_store", "arguments": '{"city": "Denver"}'},
                }
            ],
        }
        if tools
        else {"role": "assistant", "content": f"answer {i}"}
    )
    request = {
        "model": "prod-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": user if user is not None else f"question {i}"},
        ],
    }
    if tools:
        request["tools"] = [
            {"type": "function", "function": {"name": "track_shipment"}},
            {"type": "function", "function": {"name": "find_store"}},
        ]
    return {
        "timestamp": timestamp,
        "workload_id": workload_id,
        "client_id": "web",
        "request": request,
        "response": {
            "choices": [{"message": message}],
            "usage": {"prompt_tokens": 10 + i, "completion_tokens": 3},
        },
    }


def line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def pairs(records, source="f.jsonl"):
    return [(f"{source}:{n}", r if isinstance(r, str) else line(r)) for n, r in enumerate(records, 1)]


def write_jsonl(path: Path, records, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else line(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def hidden_entries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


def landing_folders(landing: Path) -> list[str]:
    """The landings (folders); beside them lie the source index and the generation counter."""
    return sorted(p.name for p in landing.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- validate_batch


def test_validate_batch_splits_valid_and_quarantined():
    bad = line(trace(9))[:40]
    valid, quarantined = validate_batch(pairs([trace(1), bad, trace(2, tools=True)]), BOUNDS)
    assert valid.height == 2 and quarantined.height == 1
    assert quarantined["reason"].to_list() == ["bad_json"]
    assert quarantined["raw"].to_list() == [bad]
    assert quarantined["source"].to_list() == ["f.jsonl:2"]

    row = valid.row(1, named=True)
    assert row["day"] == "2025-01-01"
    assert row["workload_key"] == "support_chat"
    assert json.loads(row["user_key"]) == ["question 2"]
    assert json.loads(row["tool_names"]) == ["find_store", "track_shipment"]  # sorted
    assert row["has_tool_calls"] is True
    assert row["prompt_tokens"] == 12
    assert row["has_tools"] is True
    assert row["raw"] == line(trace(2, tools=True))  # the record itself, verbatim
    assert valid.row(0, named=True)["has_tool_calls"] is False
    assert valid.row(0, named=True)["has_tools"] is False
    assert json.loads(valid.row(0, named=True)["tool_names"]) == []


def test_record_id_is_a_stable_hash_of_the_raw_line():
    valid_a, _ = validate_batch(pairs([trace(1), trace(2)]), BOUNDS)
    valid_b, _ = validate_batch(pairs([trace(1), trace(2)], source="other.jsonl"), BOUNDS)
    assert valid_a["record_id"].to_list() == valid_b["record_id"].to_list()
    assert valid_a["record_id"].n_unique() == 2


def test_time_bounds_quarantine_records_outside_the_window_with_their_day():
    before = trace(1, timestamp=DAY1 - 2 * 86_400)  # 2024-12-30
    first_day = trace(2, timestamp=int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()))
    last_day = trace(3, timestamp=int(dt.datetime(2025, 1, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()))
    future = trace(4, timestamp=int(dt.datetime(2025, 2, 1, tzinfo=dt.UTC).timestamp()))
    valid, quarantined = validate_batch(pairs([before, first_day, last_day, future]), BOUNDS)
    assert valid["day"].to_list() == ["2025-01-01", "2025-01-31"]
    assert dict(zip(quarantined["reason"], quarantined["day"])) == {
        "before_start_date": "2024-12-30",
        "future_timestamp": "2025-02-01",
    }
    assert set(quarantined["workload_key"]) == {"support_chat"}


def test_millisecond_timestamps_are_quarantined_not_a_crash():
    # 13 digits: epoch milliseconds, a common producer mistake; beyond year 9999 as seconds
    ms = trace(1, timestamp=DAY1 * 1000)
    year_33658 = trace(2, timestamp=999_999_999_999)
    valid, quarantined = validate_batch(pairs([ms, year_33658, trace(3)]), BOUNDS)
    assert valid.height == 1
    assert quarantined["reason"].to_list() == ["future_timestamp", "future_timestamp"]


def test_quarantined_records_are_attributed_when_the_raw_text_allows():
    truncated_late = line(trace(1, workload_id="tool_router"))[:-20]  # id and timestamp survive
    assert '"workload_id"' in truncated_late and '"timestamp"' in truncated_late
    truncated_early = line(trace(2))[:15]  # only part of the timestamp
    no_workload = trace(3)
    del no_workload["workload_id"]
    text_timestamp = trace(4, timestamp="abc")
    empty = trace(5, timestamp=DAY2)
    empty["response"]["choices"] = []
    _, q = validate_batch(pairs([truncated_late, truncated_early, no_workload, text_timestamp, empty]), BOUNDS)
    got = [(r["reason"], r["day"], r["workload_key"], r["workload_id"]) for r in q.iter_rows(named=True)]
    assert got == [
        ("bad_json", "2025-01-01", "tool_router", "tool_router"),
        ("bad_json", UNATTRIBUTED, UNATTRIBUTED, None),
        ("missing_field", UNATTRIBUTED, UNATTRIBUTED, None),
        ("wrong_type", UNATTRIBUTED, UNATTRIBUTED, "support_chat"),
        ("empty_response", "2025-01-02", "support_chat", "support_chat"),
    ]


def test_quarantine_attribution_uses_the_safe_key_of_a_hostile_id():
    bad = trace(1, workload_id="../../etc")
    bad["response"]["choices"] = []
    _, q = validate_batch(pairs([bad]), BOUNDS)
    assert q["workload_id"].to_list() == ["../../etc"]
    assert q["workload_key"].to_list() == [workload_key("../../etc")]


@pytest.mark.parametrize(
    "raw",
    [
        '{"workload_id": "a\\q", "timestamp": 1735700000, "req',  # invalid escape
        '{"workload_id": "a\\ud800", "timestamp": 1735700000, "req',  # lone surrogate
        '{"workload_id": "a\\u12", "timestamp": 1735700000, "req',  # short unicode escape
        '{"workload_id": "w", "timestamp": 999999999999, "req',  # year 33658
    ],
)
def test_odd_raw_text_is_quarantined_not_a_crash(raw):
    valid, quarantined = validate_batch([("f:1", raw)], BOUNDS)
    assert valid.height == 0
    assert quarantined["reason"].to_list() == ["bad_json"]
    assert quarantined["raw"].to_list() == [raw]


def test_dict_records_are_validated_like_lines():
    dict_pairs = [("p:1", trace(1)), ("p:2", {"workload_id": "w"})]
    valid, quarantined = validate_batch(dict_pairs, BOUNDS)
    assert valid.height == 1
    assert quarantined["reason"].to_list() == ["missing_field"]
    assert json.loads(quarantined["raw"][0]) == {"workload_id": "w"}


def test_non_json_values_from_parquet_are_quarantined_not_a_crash():
    # a Parquet `timestamp` column of timestamp type arrives as a datetime
    record = trace(1)
    record["timestamp"] = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    valid, quarantined = validate_batch([("p:1", record)], BOUNDS)
    assert valid.height == 0
    assert quarantined["reason"].to_list() == ["wrong_type"]


# --------------------------------------------------------------------------- land_file


def land(landing: Path, records, fingerprint="fp1", source_id="src", batch_size=None):
    items = pairs(records)
    size = batch_size or max(len(items), 1)
    batches = iter([items[i : i + size] for i in range(0, len(items), size)])
    return land_file(batches, source_id=source_id, fingerprint=fingerprint, landing_dir=landing, bounds=BOUNDS)


def test_land_file_writes_one_folder_per_day_and_workload(tmp_path):
    records = [
        trace(1, timestamp=DAY1),
        trace(2, timestamp=DAY2),
        trace(3, timestamp=DAY2, workload_id="tool_router", tools=True),
        line(trace(4, timestamp=DAY2))[:-5],  # bad JSON, attributed to day 2 / support_chat
        line(trace(5))[:10],  # unattributed
    ]
    result = land(tmp_path, records, batch_size=2)
    assert result.landed is True
    assert result.partitions == {
        "2025-01-01|support_chat": {"valid": 1, "quarantined": 0},
        "2025-01-02|support_chat": {"valid": 1, "quarantined": 1},
        "2025-01-02|tool_router": {"valid": 1, "quarantined": 0},
        f"{UNATTRIBUTED}|{UNATTRIBUTED}": {"valid": 0, "quarantined": 1},
    }
    assert result.workload_ids == {"support_chat": "support_chat", "tool_router": "tool_router"}
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert files == [
        "src/day=2025-01-01/workload=support_chat/valid-00000.parquet",
        "src/day=2025-01-02/workload=support_chat/quarantine-00001.parquet",
        "src/day=2025-01-02/workload=support_chat/valid-00000.parquet",
        "src/day=2025-01-02/workload=tool_router/valid-00001.parquet",
        "src/day=unattributed/workload=unattributed/quarantine-00002.parquet",
    ]
    assert read_manifest(tmp_path / "src")["fingerprint"] == "fp1"
    assert read_unattributed(tmp_path).height == 1
    assert hidden_entries(tmp_path) == []


def test_land_file_is_a_no_op_for_the_same_fingerprint(tmp_path):
    first = land(tmp_path, [trace(1), trace(2)])
    manifest_mtime = (tmp_path / "src" / MANIFEST).stat().st_mtime_ns

    def must_not_be_read():
        raise AssertionError("an unchanged file must not be read again")
        yield  # pragma: no cover

    again = land_file(must_not_be_read(), source_id="src", fingerprint="fp1", landing_dir=tmp_path, bounds=BOUNDS)
    assert again.landed is False
    assert again.partitions == first.partitions
    assert again.workload_ids == first.workload_ids
    assert (tmp_path / "src" / MANIFEST).stat().st_mtime_ns == manifest_mtime


def test_concurrent_landings_of_one_file_validate_it_once(tmp_path):
    # backfill runs and the drop-folder sensor all land the drop folder at the same time
    reading = threading.Event()

    def slow_batches():
        reading.set()
        time.sleep(0.5)
        yield pairs([trace(1), trace(2)])

    def must_not_be_read():
        raise AssertionError("the file was validated twice")
        yield  # pragma: no cover

    landed = {}
    first = threading.Thread(
        target=lambda: landed.setdefault(
            "first", land_file(slow_batches(), source_id="src", fingerprint="fp", landing_dir=tmp_path, bounds=BOUNDS)
        )
    )
    first.start()
    assert reading.wait(5)
    landed["second"] = land_file(
        must_not_be_read(), source_id="src", fingerprint="fp", landing_dir=tmp_path, bounds=BOUNDS
    )
    first.join()
    assert landed["first"].landed and not landed["second"].landed
    assert landed["second"].partitions == landed["first"].partitions


def test_a_changed_file_replaces_its_old_landing_without_duplicates(tmp_path):
    land(tmp_path, [trace(1), trace(2), trace(3, timestamp=DAY2)], fingerprint="v1")
    # the file grew (appended records) and one day disappeared from it
    result = land(tmp_path, [trace(1), trace(2), trace(4), trace(5)], fingerprint="v2")
    assert result.landed is True
    valid, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    assert sorted(valid["user_key"]) == [json.dumps([f"question {i}"]) for i in (1, 2, 4, 5)]
    assert valid["record_id"].n_unique() == valid.height == 4
    old_day, _ = read_partition(tmp_path, "2025-01-02", "support_chat")
    assert old_day.height == 0
    assert read_manifest(tmp_path / "src")["fingerprint"] == "v2"
    assert hidden_entries(tmp_path) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_read_leaves_the_previous_landing_intact_and_no_temp_folders(tmp_path, workers):
    land(tmp_path, [trace(1), trace(2)], fingerprint="v1")
    before, _ = read_partition(tmp_path, "2025-01-01", "support_chat")

    def broken_batches():
        yield pairs([trace(7), trace(8)])
        yield pairs([trace(9, timestamp=DAY2)])
        yield pairs([trace(10)])
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        land_file(
            broken_batches(),
            source_id="src",
            fingerprint="v2",
            landing_dir=tmp_path,
            bounds=BOUNDS,
            workers=workers,  # with 2, batches in flight in worker processes are waited for
        )
    assert hidden_entries(tmp_path) == []
    assert landing_folders(tmp_path) == ["src"]
    assert read_manifest(tmp_path / "src")["fingerprint"] == "v1"
    after, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    assert after.equals(before)
    assert read_partition(tmp_path, "2025-01-02", "support_chat")[0].height == 0


def test_a_failed_first_landing_leaves_nothing(tmp_path):
    def broken_batches():
        yield pairs([trace(1)])
        raise ValueError("boom")

    with pytest.raises(ValueError):
        land_file(broken_batches(), source_id="src", fingerprint="v1", landing_dir=tmp_path, bounds=BOUNDS)
    assert landing_folders(tmp_path) == [] and hidden_entries(tmp_path) == []


def test_read_partition_ignores_leftovers_of_a_crashed_landing(tmp_path):
    # a process killed mid-landing leaves its hidden staging folder; it must not be read
    land(tmp_path, [trace(1), trace(2)])
    staging = tmp_path / ".src-crashed"
    (tmp_path / "src").rename(staging)
    land(tmp_path, [trace(1), trace(2)])
    valid, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    assert valid.height == 2


# --------------------------------------------------------------------------- content identity


def drop_folder(tmp_path: Path) -> tuple[Path, FileTraceSource]:
    traces = tmp_path / "traces"
    traces.mkdir()
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), validation_workers=1)
    return traces, source


def set_mtime(path: Path, seconds: int) -> None:
    """A distinct mtime, so a rewrite shows in the stat signature whatever the clock's grain."""
    os.utime(path, (DAY1 + seconds, DAY1 + seconds))


def landed_user_keys(source: FileTraceSource, day: str = "2025-01-01") -> list[str]:
    valid, _ = read_partition(source.landing_path, day, "support_chat")
    return sorted(valid["user_key"])


def keys(*numbers: int) -> list[str]:
    return sorted(json.dumps([f"question {i}"]) for i in numbers)


def test_a_byte_identical_file_dropped_again_with_a_new_mtime_lands_nothing(tmp_path):
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1), trace(2)])
    (first,) = source.land()
    write_jsonl(path, [trace(1), trace(2)])  # dropped again (cp over itself), a new mtime
    set_mtime(path, 100)
    (again,) = source.land()
    assert first.landed and not again.landed
    assert (again.source_id, again.generation) == (first.source_id, first.generation)
    assert landed_user_keys(source) == keys(1, 2)


def test_a_file_is_hashed_only_when_its_stat_signature_changes(tmp_path, monkeypatch):
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1)])
    source.land()
    hashed, real_digest = [], ingest_module.content_digest

    def counting_digest(p: Path) -> str:
        hashed.append(p.name)
        return real_digest(p)

    monkeypatch.setattr(ingest_module, "content_digest", counting_digest)
    source.land()
    assert hashed == []
    set_mtime(path, 100)
    source.land()
    source.land()
    assert hashed == ["a.jsonl"]


def test_a_renamed_file_lands_nothing_and_leaves_no_old_landing(tmp_path):
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1), trace(2)])
    (first,) = source.land()
    renamed = path.rename(traces / "b.jsonl")
    (again,) = source.land()
    assert not again.landed
    assert (again.source_id, again.generation) == (first.source_id, first.generation)
    assert landed_user_keys(source) == keys(1, 2)
    # the renamed file alone holds that content now: when it changes, the landing goes
    write_jsonl(renamed, [trace(1), trace(2), trace(3)])
    set_mtime(renamed, 100)
    (changed,) = source.land()
    assert changed.landed
    assert landed_user_keys(source) == keys(1, 2, 3)
    assert landing_folders(source.landing_path) == [changed.source_id]


def test_a_file_moved_as_a_copy_and_a_delete_leaves_no_old_landing(tmp_path):
    # a move across filesystems is a copy then a delete, possibly seen between the two
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1)])
    source.land()
    copy = traces / "b.jsonl"
    shutil.copyfile(path, copy)
    source.land()
    path.unlink()
    write_jsonl(copy, [trace(1), trace(2)])
    set_mtime(copy, 100)
    source.land()
    assert landed_user_keys(source) == keys(1, 2)


def test_a_copy_under_a_second_name_is_landed_once(tmp_path):
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1), trace(2)])
    copy = traces / "sub" / "copy.jsonl"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    original, copied = source.land()
    assert original.landed and not copied.landed
    assert (copied.source_id, copied.generation) == (original.source_id, original.generation)
    assert landed_user_keys(source) == keys(1, 2)
    # the copy changes: the original still holds the first content, so its landing stays
    write_jsonl(copy, [trace(3)])
    source.land()
    assert landed_user_keys(source) == keys(1, 2, 3)


def test_content_that_comes_back_at_a_path_is_landed_again(tmp_path):
    traces, source = drop_folder(tmp_path)
    path = traces / "a.jsonl"
    results = []
    for step, number in enumerate([1, 2, 1]):  # A -> B -> A
        write_jsonl(path, [trace(number)])
        set_mtime(path, step)
        (result,) = source.land()
        assert result.landed
        assert landed_user_keys(source) == keys(number)
        results.append(result)
    assert results[0].source_id == results[2].source_id != results[1].source_id
    assert results[0].generation < results[1].generation < results[2].generation
    assert landing_folders(source.landing_path) == [results[2].source_id]


def test_a_file_changed_to_content_landed_for_another_file_gets_a_new_generation(tmp_path):
    # nothing is validated again, but the partitions changed (the file's old records went)
    traces, source = drop_folder(tmp_path)
    write_jsonl(traces / "a.jsonl", [trace(1)])
    path = write_jsonl(traces / "b.jsonl", [trace(2)])
    first_a, _ = source.land()
    write_jsonl(path, [trace(1)])
    set_mtime(path, 100)
    again_a, now_b = source.land()
    assert not now_b.landed and now_b.source_id == first_a.source_id
    assert now_b.generation > first_a.generation
    assert again_a.generation == now_b.generation  # one landing, one generation
    assert landed_user_keys(source) == keys(1)


def test_a_deleted_file_keeps_its_landing(tmp_path):
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1)])
    write_jsonl(traces / "b.jsonl", [trace(2)])
    source.land()
    path.unlink()
    source.land()
    assert landed_user_keys(source) == keys(1, 2)


def test_concurrent_landers_of_a_drop_folder_validate_a_file_once(tmp_path):
    # the sensor and raw_traces runs land the drop folder at the same time
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1), trace(2)])
    reading, go_on = threading.Event(), threading.Event()

    def first_reader(p: Path):
        reading.set()  # this lander holds the landing lock from here to its swap
        assert go_on.wait(5)
        yield pairs([trace(1), trace(2)], source="a.jsonl")

    def must_not_be_read(p: Path):
        raise AssertionError("the file was validated twice")

    def land(read_batches):
        return land_files([path], read_batches, landing_dir=source.landing_path, bounds=BOUNDS).results

    landed = {}
    first = threading.Thread(target=lambda: landed.setdefault("first", land(first_reader)))
    first.start()
    assert reading.wait(5)
    second = threading.Thread(target=lambda: landed.setdefault("second", land(must_not_be_read)))
    second.start()
    go_on.set()
    first.join()
    second.join()
    (first_result,), (second_result,) = landed["first"], landed["second"]
    assert first_result.landed and not second_result.landed
    assert second_result.generation == first_result.generation
    assert landed_user_keys(source) == keys(1, 2)


def test_a_landing_named_by_path_before_is_replaced_not_duplicated(tmp_path):
    # landings made before content identity were named after the file's path
    traces, source = drop_folder(tmp_path)
    path = write_jsonl(traces / "a.jsonl", [trace(1)])
    land_file(
        iter([pairs([trace(1)])]),
        source_id=ingest_module._legacy_landing_name(path),
        fingerprint="size-mtime",
        landing_dir=source.landing_path,
        bounds=BOUNDS,
    )
    (result,) = source.land()
    assert landing_folders(source.landing_path) == [result.source_id]
    assert landed_user_keys(source) == keys(1)


# --------------------------------------------------------------------------- quality columns
SCHEMAS = [
    {"type": "function", "function": {"name": "track_shipment", "parameters": {"type": "object"}}},
    {
        "type": "function",
        "function": {
            "name": "find_store",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]


def answered(i: int, *, calls=None, content=None, tools=SCHEMAS, **response) -> dict:
    """trace(i) answered by the served model `response["model"]` with `calls` (name, arguments)
    to `tools`, or with `content`."""
    record = trace(i, tools=calls is not None)
    message = {"role": "assistant", "content": content}
    if calls is not None:
        record["request"]["tools"] = tools
        message["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    finish = response.pop("finish_reason", "stop")
    record["response"] |= {"choices": [{"message": message | response.pop("message", {}), "finish_reason": finish}]}
    record["response"] |= response
    return record


QUALITY_CASES = [
    # (record, served_model, finish_reason, refused, (calls, naming an offered tool, valid))
    (answered(0, content="Open at 9.", model="llama-1b-lora"), "llama-1b-lora", "stop", False, (0, 0, 0)),
    (answered(1, content="Open at 9."), "prod-model", "stop", False, (0, 0, 0)),  # no response.model
    (answered(2, content="I'm sorry, but I can't help with that."), "prod-model", "stop", True, (0, 0, 0)),
    (answered(3, content="partial", finish_reason="content_filter"), "prod-model", "content_filter", True, (0, 0, 0)),
    (answered(4, content="Here", message={"refusal": {"kind": "policy"}}), "prod-model", "stop", True, (0, 0, 0)),
    (answered(5, content="ok", model=7), "7", "stop", False, (0, 0, 0)),  # a number: its JSON text
    (
        answered(6, calls=[("find_store", '{"city": "Oslo"}'), ("find_store", '{"town": 1}'), ("refund", "{}")]),
        "prod-model",
        "stop",
        False,
        (3, 2, 1),
    ),
    (answered(7, calls=[("track_shipment", '{"id": ')]), "prod-model", "stop", False, (1, 1, 0)),  # not JSON
    (answered(8, calls=[("find_store", "{}")], tools=None), "prod-model", "stop", False, (0, 0, 0)),  # none offered
]


def test_quality_columns_are_computed_when_a_trace_lands():
    valid, quarantined = validate_batch(pairs([case[0] for case in QUALITY_CASES]), BOUNDS)
    assert quarantined.height == 0
    rows = valid.select(QUALITY_COLUMNS).rows()
    expected = [(model, finish, refused, *calls) for _, model, finish, refused, calls in QUALITY_CASES]
    assert rows == expected


def test_a_part_landed_before_the_quality_columns_gets_them_from_its_raw_text(tmp_path):
    """Landings written by the previous version lack the columns: read_partition derives them
    by the function ingest uses, so old and new parts read as one frame."""
    records = [case[0] for case in QUALITY_CASES]
    land(tmp_path, records[:5], source_id="new")
    old, _ = validate_batch(pairs(records[5:], source="old.jsonl"), BOUNDS)
    part = tmp_path / "old" / "day=2025-01-01" / "workload=support_chat" / "valid-00000.parquet"
    part.parent.mkdir(parents=True)
    old.drop(QUALITY_COLUMNS).write_parquet(part)  # the schema before this change

    valid, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    fresh, _ = validate_batch(pairs(records), BOUNDS)
    assert valid.schema == fresh.schema
    by_id = {row[0]: row[1:] for row in valid.select("record_id", *QUALITY_COLUMNS).rows()}
    assert by_id == {row[0]: row[1:] for row in fresh.select("record_id", *QUALITY_COLUMNS).rows()}
    # a stored raw_traces day of the old schema, read lazily (canary), is upgraded the same way
    stored = with_quality_columns(old.drop(QUALITY_COLUMNS).lazy()).collect()
    assert stored.equals(old)


def test_stored_days_of_both_schemas_read_as_one_frame():
    records = [case[0] for case in QUALITY_CASES]
    new, _ = validate_batch(pairs(records[:5]), BOUNDS)
    old, _ = validate_batch(pairs(records[5:]), BOUNDS)
    days = [old.drop(QUALITY_COLUMNS).lazy(), new.lazy()]  # an old day first: its schema leads
    # with_quality: the old day's columns computed from its raw text, as at landing
    assert stored_traces(days, with_quality=True).collect().equals(pl.concat([old, new]))
    # without: every row kept, the old day's answer columns null (for readers that use none)
    plain = stored_traces(days).collect()
    assert plain.select(*TRACE_SCHEMA).drop(QUALITY_COLUMNS).equals(pl.concat([old, new]).drop(QUALITY_COLUMNS))
    assert plain.get_column("served_model").to_list() == [None] * old.height + new.get_column("served_model").to_list()
    assert stored_traces([]).collect().schema == pl.Schema(TRACE_SCHEMA)


# --------------------------------------------------------------------------- read_partition


def test_read_partition_returns_only_its_slice_sorted(tmp_path):
    land(
        tmp_path,
        [
            trace(1, timestamp=DAY1 + 50),
            trace(2, timestamp=DAY2),
            trace(3, timestamp=DAY1 + 10, workload_id="tool_router"),
        ],
        source_id="a",
    )
    land(
        tmp_path,
        [trace(4, timestamp=DAY1 + 5), trace(5, timestamp=DAY1 + 100), line(trace(6))[:-3]],
        source_id="b",
    )
    valid, quarantined = read_partition(tmp_path, "2025-01-01", "support_chat")
    assert valid["timestamp"].to_list() == [DAY1 + 5, DAY1 + 50, DAY1 + 100]
    assert set(valid["day"]) == {"2025-01-01"}
    assert set(valid["workload_key"]) == {"support_chat"}
    assert set(valid["source"].str.split(":").list.first()) == {"f.jsonl"}
    assert quarantined.height == 1 and quarantined["reason"][0] == "bad_json"
    assert read_partition(tmp_path, "2025-01-01", "tool_router")[0].height == 1
    assert read_partition(tmp_path, "2025-01-03", "support_chat")[0].height == 0
    empty_valid, empty_q = read_partition(tmp_path / "nothing", "2025-01-01", "x")
    assert empty_valid.height == 0 and empty_q.height == 0
    assert empty_valid.columns == valid.columns


def test_read_partition_order_is_stable_on_equal_timestamps(tmp_path):
    land(tmp_path, [trace(i, timestamp=DAY1) for i in range(5)], source_id="a")
    first, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    second, _ = read_partition(tmp_path, "2025-01-01", "support_chat")
    assert first.equals(second)
    # ties on timestamp are ordered by record id (the order curation keeps), then source
    assert first.select("record_id", "source").rows() == sorted(first.select("record_id", "source").rows())


# --------------------------------------------------------------------------- file readers


def test_jsonl_reader_streams_batches(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [trace(i) for i in range(7)])
    gen = iter_jsonl_batches(path, batch_size=3)
    assert inspect.isgenerator(gen)
    first = next(gen)
    assert [s for s, _ in first] == ["t.jsonl:1", "t.jsonl:2", "t.jsonl:3"]
    assert [len(list(b)) for b in gen] == [3, 1]


def test_jsonl_reader_is_lazy():
    # nothing is opened until the first batch is asked for
    gen = iter_jsonl_batches(Path("/nonexistent/never.jsonl"), batch_size=10)
    with pytest.raises(FileNotFoundError):
        next(gen)


def test_jsonl_reader_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(line(trace(1)) + "\n\n   \n" + line(trace(2)) + "\r\n")
    batches = list(iter_jsonl_batches(path, batch_size=10))
    records = list(batches[0])
    assert [s for s, _ in records] == ["t.jsonl:1", "t.jsonl:4"]
    assert records[1][1] == line(trace(2))  # \r\n stripped


def test_jsonl_reader_survives_invalid_utf8(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(trace(1)).encode() + b"\n\xff\xfe garbage\n")
    (batch,) = list(iter_jsonl_batches(path, batch_size=10))
    valid, quarantined = validate_batch(batch, BOUNDS)
    assert valid.height == 1 and quarantined["reason"].to_list() == ["bad_json"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.sampled_from(["a", "bb", "", "  ", "ccc\r", "é", '{"x": 1}']), max_size=40),
    trailing_newline=st.booleans(),
    batch_size=st.integers(1, 7),
    block_bytes=st.integers(1, 16),
)
def test_jsonl_byte_ranges_hold_every_line_once_whatever_the_scan_block(
    tmp_path, monkeypatch, lines, trailing_newline, batch_size, block_bytes
):
    # the reader finds batch boundaries by counting newlines in blocks; a boundary falling
    # anywhere in a block (or a block holding several) must not lose, repeat or renumber lines
    monkeypatch.setattr(traces_module, "_SCAN_BLOCK_BYTES", block_bytes)
    path = tmp_path / "t.jsonl"
    path.write_bytes(("\n".join(lines) + ("\n" if trailing_newline and lines else "")).encode())
    got = [record for batch in iter_jsonl_batches(path, batch_size) for record in batch]
    expected = [(f"t.jsonl:{n}", text.rstrip("\r")) for n, text in enumerate(lines, 1) if text.strip()]
    assert got == expected


def test_records_name_their_file_by_its_path_in_the_drop_folder(tmp_path):
    # two folders may hold the same file name: the sources must still differ
    # (the contents differ too: a byte-identical copy is landed once)
    traces = tmp_path / "traces"
    for number, folder in enumerate(("eu", "us")):
        (traces / folder).mkdir(parents=True)
        write_jsonl(traces / folder / "calls.jsonl", [trace(number)])
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"))
    source.land()
    valid, _ = read_partition(source.landing_path, "2025-01-01", "support_chat")
    assert sorted(valid["source"]) == ["eu/calls.jsonl:1", "us/calls.jsonl:1"]


def test_a_decoded_record_with_a_lone_surrogate_is_quarantined_not_a_crash():
    # json.loads (a Weave call, a Parquet row decoded in Python) accepts "\ud800"
    record = trace(1)
    record["request"]["messages"][-1]["content"] = "broken \ud800 text"
    valid, quarantined = validate_batch([("weave:1", record)], BOUNDS)
    assert valid.height == 0
    assert quarantined["reason"].to_list() == ["bad_json"]
    assert "\\ud800" in quarantined["raw"][0]  # kept, escaped


def test_gzip_jsonl_reads_like_plain_jsonl(tmp_path):
    records = [trace(i) for i in range(5)]
    plain = list(iter_jsonl_batches(write_jsonl(tmp_path / "a.jsonl", records), 2))
    gz = list(iter_jsonl_batches(write_jsonl(tmp_path / "a.jsonl.gz", records, gz=True), 2))
    assert [[raw for _, raw in b] for b in plain] == [[raw for _, raw in b] for b in gz]


def write_parquet(path: Path, records: list[dict]) -> Path:
    table = pa.table(
        {
            "timestamp": pa.array([r.get("timestamp") for r in records], pa.int64()),
            "workload_id": [r.get("workload_id") for r in records],
            "client_id": [r.get("client_id") for r in records],
            "request": [r["request"] if isinstance(r["request"], str) else json.dumps(r["request"]) for r in records],
            "response": [json.dumps(r["response"]) for r in records],
            "feedback": [json.dumps(r["feedback"]) if r.get("feedback") else None for r in records],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


def test_parquet_reader_decodes_json_columns_and_drops_nulls(tmp_path):
    with_feedback = trace(1)
    with_feedback["feedback"] = {"thumbs": "down"}
    bad_request = trace(3)
    bad_request["request"] = "{not json"
    path = write_parquet(tmp_path / "t.parquet", [with_feedback, trace(2), bad_request])
    batches = list(iter_parquet_batches(path, batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    (s1, r1), (s2, r2) = batches[0]
    assert (s1, s2) == ("t.parquet:1", "t.parquet:2")
    assert r1["request"] == with_feedback["request"] and r1["feedback"] == {"thumbs": "down"}
    assert "feedback" not in r2  # null column dropped, not passed as None
    valid, quarantined = validate_batch(batches[0] + batches[1], BOUNDS)
    assert valid.height == 2
    assert valid["feedback_thumbs"].to_list() == ["down", None]
    assert quarantined.height == 1
    assert quarantined["reason"][0] in {"wrong_type", "not_chat_request"}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_file_trace_source_lands_each_format_once(tmp_path, fmt):
    traces = tmp_path / "traces"
    traces.mkdir()
    records = [trace(i, timestamp=DAY1 + i) for i in range(5)]
    if fmt == "parquet":
        path = write_parquet(traces / "a.parquet", records)
    else:
        path = write_jsonl(traces / f"a.{fmt}", records, gz=fmt.endswith("gz"))
    (traces / ".hidden.jsonl").write_text("garbage\n")
    (traces / "notes.txt").write_text("garbage\n")
    source = FileTraceSource(
        traces_dir=str(traces),
        landing_dir=str(tmp_path / "landing"),
        batch_size=2,
        validation_workers=1,  # formats here; worker processes have their own test
    )
    assert source.files() == [path]
    (result,) = source.land()
    assert result.landed is True
    assert result.partitions == {"2025-01-01|support_chat": {"valid": 5, "quarantined": 0}}
    valid, _ = read_partition(source.landing_path, "2025-01-01", "support_chat")
    assert valid["timestamp"].to_list() == [DAY1 + i for i in range(5)]
    assert [r.landed for r in source.land()] == [False]
    # a changed file is landed again, replacing the old landing
    if fmt == "parquet":
        write_parquet(path, records + [trace(5, timestamp=DAY1 + 5)])
    else:
        write_jsonl(path, records + [trace(5, timestamp=DAY1 + 5)], gz=fmt.endswith("gz"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert [r.landed for r in source.land()] == [True]
    valid, _ = read_partition(source.landing_path, "2025-01-01", "support_chat")
    assert valid.height == 6


def test_missing_traces_dir_says_what_to_do(tmp_path):
    source = FileTraceSource(traces_dir=str(tmp_path / "nope"), landing_dir=str(tmp_path / "l"))
    with pytest.raises(FileNotFoundError, match="FLYWHEEL_TRACES_DIR"):
        source.files()


# --------------------------------------------------------------------------- sample data

EXPECTED_REASON = {
    "invalid_json": {"bad_json"},
    "missing_workload_id": {"missing_field"},
    "non_numeric_timestamp": {"wrong_type"},
    "non_chat_request": {"not_chat_request"},
    "empty_choices": {"empty_response"},
    "empty_message": {"empty_response"},
    "oversized": {"oversized"},
}


def test_sample_traces_land_with_every_malformed_record_quarantined(tmp_path):
    kwargs = dict(seed=0, days=3, end_date="2025-03-03", malformed_rate=0.1)
    n = 900
    paths = write_sample_traces(tmp_path / "traces", n=n, **kwargs)
    labels = {item.line: item for item in generate_labeled_records(n, **kwargs)}
    malformed = Counter(item.malformed for item in labels.values() if item.malformed)
    assert set(malformed) == set(EXPECTED_REASON)  # the sample exercises every kind

    source = FileTraceSource(
        traces_dir=str(tmp_path / "traces"),
        landing_dir=str(tmp_path / "landing"),
        start_date="2025-01-01",
        batch_size=250,
    )
    results = source.land()
    assert [r.landed for r in results] == [True] * len(paths)
    valid_count = sum(c["valid"] for r in results for c in r.partitions.values())
    quarantined_count = sum(c["quarantined"] for r in results for c in r.partitions.values())
    lines_written = sum(1 for p in paths for raw in p.read_text().splitlines() if raw.strip())
    assert lines_written == n
    assert valid_count + quarantined_count == n  # nothing lost

    landing = source.landing_path
    quarantine = pl.concat([pl.read_parquet(p) for p in sorted(landing.rglob("quarantine-*.parquet"))])
    assert quarantine.height == quarantined_count
    seen = Counter()
    for raw, reason in quarantine.select("raw", "reason").iter_rows():
        label = labels[raw]
        assert label.malformed is not None, f"a valid record was quarantined: {reason}"
        assert reason in EXPECTED_REASON[label.malformed], (label.malformed, reason)
        seen[label.malformed] += 1
    assert seen == malformed  # every malformed record quarantined, each exactly once
    assert valid_count == n - sum(malformed.values())


def test_sample_parquet_traces_quarantine_oversized_records(tmp_path):
    kwargs = dict(seed=0, days=2, end_date="2025-03-03", malformed_rate=0.05)
    n = 400
    write_sample_traces(tmp_path / "traces", n=n, fmt="parquet", **kwargs)
    source = FileTraceSource(traces_dir=str(tmp_path / "traces"), landing_dir=str(tmp_path / "landing"))
    results = source.land()
    counts = [c for r in results for c in r.partitions.values()]
    assert sum(c["valid"] + c["quarantined"] for c in counts) == n
    quarantine = pl.concat([pl.read_parquet(p) for p in sorted(source.landing_path.rglob("quarantine-*.parquet"))])
    assert "oversized" in set(quarantine["reason"])
    valid = pl.concat([pl.read_parquet(p) for p in sorted(source.landing_path.rglob("valid-*.parquet"))])
    assert valid["raw"].str.len_bytes().max() <= 1 << 20


def test_validating_in_worker_processes_lands_the_same_records(tmp_path):
    traces = tmp_path / "traces"
    write_sample_traces(traces, n=600, seed=4, days=2)
    landed = {}
    for workers in (1, 2):
        source = FileTraceSource(
            traces_dir=str(traces),
            landing_dir=str(tmp_path / f"landing-{workers}"),
            start_date="2020-01-01",
            batch_size=100,
            validation_workers=workers,
        )
        results = source.land()
        records = pl.concat(
            [pl.read_parquet(p) for p in sorted(source.landing_path.rglob("*.parquet"))], how="diagonal"
        )
        landed[workers] = (
            [(r.partitions, r.workload_ids) for r in results],
            sorted(records["source"].to_list()),
        )
        assert not list(source.landing_path.glob(".*"))  # no staging folder left behind
    assert landed[1] == landed[2]
