"""The ingest sensors, called as functions with `build_sensor_context`: Weave polling (fake
Weave trace server on loopback) and the drop folder. Called as functions because Dagster's
`evaluate_tick` cannot see a dynamic partition the same tick adds (it fails to load
partitions), while under the daemon the run of a partition added in its tick succeeds."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as START
from fake_weave_server import CallFactory, Fault, fake_weave_server

from flywheel_assets.core.ingest import day_of
from partitions.keys import workload_key
from partitions.slices import trace_partitions
from resources.traces import FileTraceSource
from resources.weave_source import WeaveCursor, WeaveTraceSource
from sensors import drop_folder
from sensors.drop_folder import DropFolderCursor, drop_folder_sensor
from sensors.weave import weave_trace_sensor

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T0 = (NOW - dt.timedelta(days=3)).replace(hour=12, minute=0, second=0).timestamp()
DAY = 86_400


@pytest.fixture
def server():
    with fake_weave_server(api_key="k") as running:
        yield running


@pytest.fixture(scope="module")
def shared_instance():
    with dg.instance_for_test() as inst:  # ~2 s to create: one per module
        yield inst


@pytest.fixture
def instance(shared_instance):
    for key in shared_instance.get_dynamic_partitions("workload"):
        shared_instance.delete_dynamic_partition("workload", key)
    return shared_instance


def resources(tmp_path: Path, server=None, **weave) -> dict:
    (tmp_path / "traces").mkdir(exist_ok=True)
    out = {"trace_source": FileTraceSource(traces_dir=str(tmp_path / "traces"), landing_dir=str(tmp_path / "landing"))}
    if server is not None:
        config = dict(
            entity="acme",
            project="prod",
            api_key="k",
            base_url=server.base_url,
            settle_seconds=0,
            max_retries=0,
            page_size=50,
        )
        out["weave_source"] = WeaveTraceSource(**{**config, **weave})
    return out


def tick(sensor, instance, res, cursor=None):
    """One evaluation, and the cursor Dagster would store after it (None: unchanged)."""
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=res))
    if isinstance(result, dg.SensorResult):
        new_workloads = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        if new_workloads:  # what the daemon does with the request
            instance.add_dynamic_partitions("workload", new_workloads)
    return result


def next_cursor(result, cursor):
    return result.cursor if isinstance(result, dg.SensorResult) and result.cursor is not None else cursor


def landed_valid(tmp_path: Path) -> pl.DataFrame:
    files = sorted((tmp_path / "landing").glob("[!.]*/day=*/workload=*/valid-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def partitions(result, instance) -> set[str]:
    """The day x workload partitions the result's runs cover (each run is a key range)."""
    covered = set()
    for request in result.run_requests:
        window = dg.PartitionKeyRange(request.tags[START], request.tags[END])
        covered |= set(trace_partitions.get_partition_keys_in_range(window, dynamic_partitions_store=instance))
    return covered


# ------------------------------------------------------------------------------ weave
def test_a_weave_tick_lands_the_calls_and_requests_their_partitions(tmp_path, server, instance):
    calls = CallFactory()
    server.add_calls(calls.chat(T0 + i * 600, workload_id="tool_router") for i in range(6))
    server.add_calls(calls.chat(T0 + DAY + i, workload_id="Support Chat/EU") for i in range(3))
    instance.add_dynamic_partitions("workload", ["tool_router"])
    res = resources(tmp_path, server)
    result = tick(weave_trace_sensor, instance, res)
    odd = workload_key("Support Chat/EU")
    assert partitions(result, instance) == {f"{day_of(int(T0))}|tool_router", f"{day_of(int(T0 + DAY))}|{odd}"}
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[odd]]  # only the new one
    assert all(r.tags["flywheel/trigger"] == "weave" for r in result.run_requests)
    (written,) = (tmp_path / "traces" / "weave").iterdir()
    assert written.name.startswith("acme__prod-start-") and written.suffix == ".jsonl"
    assert len(written.read_text().splitlines()) == 9
    valid = landed_valid(tmp_path)
    assert valid.height == 9 and set(valid["workload_id"]) == {"tool_router", "Support Chat/EU"}
    cursor = WeaveCursor.parse(result.cursor)
    assert cursor.ended_at is not None and cursor.ids == ("call-000009",)


def test_repeated_ticks_add_no_duplicates_and_only_new_calls(tmp_path, server, instance):
    calls = CallFactory()
    server.add_calls(calls.chat(T0 + i) for i in range(10))
    res = resources(tmp_path, server)
    first = tick(weave_trace_sensor, instance, res)
    cursor = next_cursor(first, None)
    again = tick(weave_trace_sensor, instance, res, cursor)
    assert isinstance(again, dg.SkipReason)  # same cursor, nothing new: nothing written
    server.add_calls(calls.chat(T0 + DAY + i, workload_id="query_rewrite") for i in range(4))
    third = tick(weave_trace_sensor, instance, res, cursor)
    assert partitions(third, instance) == {f"{day_of(int(T0 + DAY))}|query_rewrite"}
    cursor = next_cursor(third, cursor)
    assert isinstance(tick(weave_trace_sensor, instance, res, cursor), dg.SkipReason)
    assert len(list((tmp_path / "traces" / "weave").iterdir())) == 2
    valid = landed_valid(tmp_path)
    assert valid.height == 14 and valid["record_id"].n_unique() == 14


def test_a_tick_retried_from_the_same_cursor_rewrites_its_file(tmp_path, server, instance):
    """A tick that died after writing, before its cursor was saved, runs again."""
    calls = CallFactory()
    server.add_calls(calls.chat(T0 + i) for i in range(5))
    res = resources(tmp_path, server)
    cursor = next_cursor(tick(weave_trace_sensor, instance, res), None)
    server.add_calls(calls.chat(T0 + 100 + i) for i in range(3))
    crashed = tick(weave_trace_sensor, instance, res, cursor)  # its cursor is never committed
    server.add_calls(calls.chat(T0 + 200 + i) for i in range(2))
    retried = tick(weave_trace_sensor, instance, res, cursor)
    assert WeaveCursor.parse(retried.cursor).ended_at > WeaveCursor.parse(crashed.cursor).ended_at
    assert len(list((tmp_path / "traces" / "weave").iterdir())) == 2  # the retry replaced the file
    valid = landed_valid(tmp_path)
    assert valid.height == 10 and valid["record_id"].n_unique() == 10


@pytest.mark.parametrize("fault", [Fault.status(500), Fault.cut(7)], ids=["http-500", "cut-stream"])
def test_a_failed_tick_writes_nothing_and_the_next_one_loses_nothing(tmp_path, server, instance, fault):
    calls = CallFactory()
    server.add_calls(calls.chat(T0 + i) for i in range(20))
    res = resources(tmp_path, server, page_size=8)
    cursor = next_cursor(tick(weave_trace_sensor, instance, res), None)
    server.add_calls(calls.chat(T0 + DAY + i * 10) for i in range(30))
    server.add_faults(Fault.ok(), Fault.ok(), fault)  # the third page of the tick fails
    with pytest.raises(Exception):  # noqa: B017  (whatever weave's client raises for this fault)
        tick(weave_trace_sensor, instance, res, cursor)  # Dagster keeps the old cursor
    assert len(list((tmp_path / "traces" / "weave").iterdir())) == 1
    result = tick(weave_trace_sensor, instance, res, cursor)
    assert partitions(result, instance) == {f"{day_of(int(T0 + DAY))}|tool_router"}
    valid = landed_valid(tmp_path)
    assert valid.height == 50 and valid["record_id"].n_unique() == 50


def test_bad_calls_are_quarantined_and_never_block_the_cursor(tmp_path, server, instance):
    calls = CallFactory()
    server.add_calls([calls.chat(T0, workload_id=None), calls.chat(T0 + 1), calls.chat(T0 + 2, workload_id="../etc")])
    # named ops: every call of them is read, with or without the workload attribute
    res = resources(tmp_path, server, op_names=["openai.chat.completions.create"])
    result = tick(weave_trace_sensor, instance, res)
    assert partitions(result, instance) == {
        f"{day_of(int(T0))}|tool_router",
        f"{day_of(int(T0))}|{workload_key('../etc')}",
    }
    assert landed_valid(tmp_path).height == 2
    quarantined = pl.read_parquet(next((tmp_path / "landing").glob("*/day=unattributed/*/quarantine-*.parquet")))
    assert quarantined["reason"].to_list() == ["missing_field"]
    assert '"weave_call":"weave:///acme/prod/call/call-000001"' in quarantined["raw"][0]
    assert WeaveCursor.parse(result.cursor).ids == ("call-000003",)


# ------------------------------------------------------------------------ drop folder
def write_traces(path: Path, workload: str, timestamps: list[int]) -> Path:
    lines = [
        json.dumps(
            {
                "timestamp": t,
                "workload_id": workload,
                "client_id": "app",
                "request": {"model": "m", "messages": [{"role": "user", "content": f"q {workload} {t}"}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": f"a {t}"}}]},
            }
        )
        for t in timestamps
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class CountingFileTraceSource(FileTraceSource):
    """Records which files each tick asked to land."""

    def land_report(self, paths=None):
        LANDED_CALLS.append(sorted(p.name for p in paths) if paths is not None else None)
        return super().land_report(paths)


LANDED_CALLS: list = []


def test_drop_folder_ticks_land_only_new_files_and_request_their_partitions(tmp_path, instance):
    LANDED_CALLS.clear()
    traces = tmp_path / "traces"
    write_traces(traces / "old.jsonl", "tool_router", [int(T0)])
    res = {"trace_source": CountingFileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"))}
    first = tick(drop_folder_sensor, instance, res)
    assert partitions(first, instance) == {f"{day_of(int(T0))}|tool_router"}
    cursor = next_cursor(first, None)
    second = tick(drop_folder_sensor, instance, res, cursor)
    assert not second.run_requests and "no new or changed" in second.skip_reason.skip_message
    cursor = next_cursor(second, cursor)
    new = write_traces(traces / "sub" / "new.jsonl", "support_chat", [int(T0 + DAY)])
    past = T0 - 30 * DAY
    os.utime(new, (past, past))  # copied with its old mtime kept (cp -p): still new
    third = tick(drop_folder_sensor, instance, res, cursor)
    assert partitions(third, instance) == {f"{day_of(int(T0 + DAY))}|support_chat"}
    assert [r.partition_keys for r in third.dynamic_partitions_requests] == [["support_chat"]]
    assert "new.jsonl" in LANDED_CALLS[-1]
    assert landed_valid(tmp_path).height == 2


def test_drop_folder_a_dropped_week_is_one_ingest_run(tmp_path, instance):
    """Seen live: one run (one Python process) per day x workload; 21 for the demo week."""
    traces = tmp_path / "traces"
    instance.add_dynamic_partitions("workload", ["support_chat"])
    stamps = [int(T0 - d * DAY) for d in range(3)]
    write_traces(traces / "router.jsonl", "tool_router", stamps)  # a new workload: added last
    write_traces(traces / "chat.jsonl", "support_chat", stamps)
    res = {"trace_source": FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"))}
    result = tick(drop_folder_sensor, instance, res)
    (run,) = result.run_requests
    days = sorted(day_of(t) for t in stamps)
    assert (run.tags[START], run.tags[END]) == (f"{days[0]}|support_chat", f"{days[-1]}|tool_router")
    assert partitions(result, instance) == {f"{d}|{w}" for d in days for w in ("support_chat", "tool_router")}


def test_drop_folder_requests_only_the_partitions_that_received_records(tmp_path, instance):
    """A gap (a workload without traffic on a day) splits the ranges: none covers it.
    (Dagster reads a multi-partition key range as days x workloads, a box.)"""
    traces = tmp_path / "traces"
    write_traces(traces / "a.jsonl", "wa", [int(T0 - 2 * DAY), int(T0)])
    write_traces(traces / "b.jsonl", "wb", [int(T0 - 2 * DAY), int(T0 - DAY), int(T0)])
    res = {"trace_source": FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"))}
    result = tick(drop_folder_sensor, instance, res)
    days = [day_of(int(T0 - d * DAY)) for d in (2, 1, 0)]
    assert len(result.run_requests) == 3  # d0 x [wa, wb], d1 x [wb], d2 x [wa, wb]
    assert partitions(result, instance) == {
        f"{days[0]}|wa",
        f"{days[0]}|wb",
        f"{days[1]}|wb",
        f"{days[2]}|wa",
        f"{days[2]}|wb",
    }


def test_drop_folder_checks_only_recent_files_between_full_scans(tmp_path, instance, monkeypatch):
    monkeypatch.setattr(drop_folder, "GRACE_NS", 0)
    LANDED_CALLS.clear()
    traces = tmp_path / "traces"
    for i in range(5):
        write_traces(traces / f"old-{i}.jsonl", "tool_router", [int(T0) + i])
    res = {"trace_source": CountingFileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"))}
    cursor = next_cursor(tick(drop_folder_sensor, instance, res), None)
    assert len(LANDED_CALLS[-1]) == 5
    time.sleep(0.05)  # past the kernel's timestamp granularity
    write_traces(traces / "new.jsonl", "tool_router", [int(T0) + 99])
    result = tick(drop_folder_sensor, instance, res, cursor)
    assert LANDED_CALLS[-1] == ["new.jsonl"]  # the 5 old files were only stat-ed
    assert partitions(result, instance) == {f"{day_of(int(T0))}|tool_router"}
    cursor = next_cursor(result, cursor)
    full = DropFolderCursor(ctime_ns=DropFolderCursor.parse(cursor).ctime_ns, tick=drop_folder.FULL_SCAN_EVERY)
    safety_net = tick(drop_folder_sensor, instance, res, full.to_json())
    assert len(LANDED_CALLS[-1]) == 6 and not safety_net.run_requests  # all checked, none changed


def test_drop_folder_requests_files_landed_by_a_tick_that_crashed(tmp_path, instance):
    traces = tmp_path / "traces"
    write_traces(traces / "a.jsonl", "tool_router", [int(T0)])
    res = resources(tmp_path)
    cursor = next_cursor(tick(drop_folder_sensor, instance, res), None)
    b = write_traces(traces / "b.jsonl", "tool_router", [int(T0 + DAY)])
    res["trace_source"].land([b])  # landed (a crashed tick, or a raw_traces run), never requested
    result = tick(drop_folder_sensor, instance, res, cursor)
    assert partitions(result, instance) == {f"{day_of(int(T0 + DAY))}|tool_router"}
    assert next_cursor(result, cursor) != cursor


def test_drop_folder_skips_weave_files_and_days_outside_the_partitions(tmp_path, instance):
    traces = tmp_path / "traces"
    write_traces(traces / "weave" / "acme__prod-start-x.jsonl", "tool_router", [int(T0)])
    write_traces(traces / "mixed.jsonl", "tool_router", [int(T0), 1_600_000_000, int(NOW.timestamp()) + 30 * DAY])
    result = tick(drop_folder_sensor, instance, resources(tmp_path))
    assert partitions(result, instance) == {f"{day_of(int(T0))}|tool_router"}  # 2020 and next month: quarantined
    assert landed_valid(tmp_path).height == 1
    assert not any(p.name.startswith("acme__prod") for p in (tmp_path / "landing").iterdir())


def test_drop_folder_without_its_folder_skips_with_a_remedy(tmp_path, instance):
    res = {"trace_source": FileTraceSource(traces_dir=str(tmp_path / "missing"), landing_dir=str(tmp_path / "l"))}
    result = tick(drop_folder_sensor, instance, res)
    assert isinstance(result, dg.SkipReason) and "FLYWHEEL_TRACES_DIR" in result.skip_message


# ------------------------------------------------------- drop folder: content identity
def run_keys(result) -> set[str]:
    return {r.run_key for r in (result.run_requests or [])} if isinstance(result, dg.SensorResult) else set()


def set_mtime(path: Path, seconds: int) -> None:
    """A distinct mtime, so a rewrite shows in the stat signature whatever the clock's grain."""
    os.utime(path, (T0 + seconds, T0 + seconds))


def first_tick(tmp_path: Path, instance, timestamps=(int(T0), int(T0) + 60)):
    """A drop folder with one file, after a committed tick that requested it."""
    res = resources(tmp_path)
    path = write_traces(tmp_path / "traces" / "a.jsonl", "tool_router", list(timestamps))
    result = tick(drop_folder_sensor, instance, res)
    assert run_keys(result)
    return res, path, result


def test_drop_folder_an_identical_file_dropped_again_requests_nothing(tmp_path, instance):
    res, path, first = first_tick(tmp_path, instance)
    cursor = next_cursor(first, None)
    write_traces(path, "tool_router", [int(T0), int(T0) + 60])  # the same bytes, a new mtime
    set_mtime(path, 100)
    again = tick(drop_folder_sensor, instance, res, cursor)
    assert run_keys(again) == set()
    assert landed_valid(tmp_path).height == 2


def test_drop_folder_a_renamed_file_requests_nothing_and_is_not_duplicated(tmp_path, instance):
    res, path, first = first_tick(tmp_path, instance)
    path.rename(path.with_name("renamed.jsonl"))
    again = tick(drop_folder_sensor, instance, res, next_cursor(first, None))
    assert run_keys(again) == set()
    valid = landed_valid(tmp_path)
    assert valid.height == 2 and valid["record_id"].n_unique() == 2


def test_drop_folder_a_copy_under_a_second_name_requests_nothing_and_is_not_duplicated(tmp_path, instance):
    res, path, first = first_tick(tmp_path, instance)
    copy = tmp_path / "traces" / "sub" / "copy.jsonl"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    again = tick(drop_folder_sensor, instance, res, next_cursor(first, None))
    assert run_keys(again) == set()
    assert landed_valid(tmp_path).height == 2


def test_drop_folder_a_changed_file_is_landed_again_under_new_run_keys(tmp_path, instance):
    res, path, first = first_tick(tmp_path, instance)
    write_traces(path, "tool_router", [int(T0), int(T0) + 60, int(T0) + 120])
    changed = tick(drop_folder_sensor, instance, res, next_cursor(first, None))
    assert partitions(changed, instance) == partitions(first, instance)
    assert run_keys(changed) and not run_keys(changed) & run_keys(first)
    assert landed_valid(tmp_path).height == 3


def test_drop_folder_content_that_comes_back_is_requested_again(tmp_path, instance):
    res, path, first = first_tick(tmp_path, instance)
    cursor, seen = next_cursor(first, None), run_keys(first)
    for step, timestamps in enumerate([[int(T0) + 1], [int(T0), int(T0) + 60]]):  # A -> B -> A
        write_traces(path, "tool_router", timestamps)
        set_mtime(path, step)
        result = tick(drop_folder_sensor, instance, res, cursor)
        assert partitions(result, instance) == partitions(first, instance)
        assert run_keys(result) and not run_keys(result) & seen
        cursor, seen = next_cursor(result, cursor), seen | run_keys(result)
    assert landed_valid(tmp_path).height == 2


def test_drop_folder_a_tick_that_crashed_is_requested_again_under_the_same_keys(tmp_path, instance):
    res, _, first = first_tick(tmp_path, instance)
    cursor = next_cursor(first, None)
    b = write_traces(tmp_path / "traces" / "b.jsonl", "tool_router", [int(T0 + DAY)])
    crashed = tick(drop_folder_sensor, instance, res, cursor)  # its cursor is never committed
    b.rename(b.with_name("c.jsonl"))  # even renamed meanwhile: the landing is still owed
    retried = tick(drop_folder_sensor, instance, res, cursor)
    assert run_keys(retried) == run_keys(crashed) and partitions(retried, instance) == {
        f"{day_of(int(T0 + DAY))}|tool_router"
    }
    assert run_keys(tick(drop_folder_sensor, instance, res, next_cursor(retried, cursor))) == set()


class ConcurrentlyLandingSource(FileTraceSource):
    """While a tick lands its files, another process lands a file dropped after its scan."""

    def land_report(self, paths=None):
        landings = super().land_report(paths)
        if paths is not None and not Path(self.traces_dir, "late.jsonl").exists():
            late = write_traces(Path(self.traces_dir) / "late.jsonl", "support_chat", [int(T0)])
            super().land([late])
        return landings


def test_drop_folder_requests_a_file_landed_by_another_process_during_a_tick(tmp_path, instance):
    res, _, first = first_tick(tmp_path, instance)
    concurrent = {"trace_source": ConcurrentlyLandingSource(**res["trace_source"].model_dump())}
    write_traces(tmp_path / "traces" / "b.jsonl", "tool_router", [int(T0 + DAY)])
    during = tick(drop_folder_sensor, instance, concurrent, next_cursor(first, None))
    assert partitions(during, instance) == {f"{day_of(int(T0 + DAY))}|tool_router"}
    after = tick(drop_folder_sensor, instance, res, next_cursor(during, None))
    assert partitions(after, instance) == {f"{day_of(int(T0))}|support_chat"}
    assert run_keys(tick(drop_folder_sensor, instance, res, next_cursor(after, None))) == set()
