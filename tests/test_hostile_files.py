"""The drop folder is a boundary: hostile, broken and damaged files, and crash leftovers.

Each hostile file lies beside good files, which must land all the same. Child processes
stand for crashed (kill -9) and live writers; no test waits on a clock.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import flywheel_assets.core.atomic as atomic_module
import flywheel_assets.core.ingest as ingest_module
from flywheel_assets.core.atomic import atomic_path, owner_tag, sweep_leftovers
from flywheel_assets.core.ingest import FAILED_SOURCES, LandingLost, damaged_parts, read_manifest
from flywheel_assets.ingest import raw_traces
from partitions.slices import trace_partition_key
from resources.datasets import ParquetIOManager
from resources.traces import FileTraceSource
from sensors.drop_folder import drop_folder_sensor

REPO = Path(__file__).resolve().parents[1]
T0 = 1_763_600_000  # 2025-11-20T00:53:20Z, a day partition
DAY = "2025-11-20"
WORKLOAD = "support_chat"


def records(*numbers: int) -> list[dict]:
    return [
        {
            "timestamp": T0 + n,
            "workload_id": WORKLOAD,
            "client_id": "web",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {n}"}}]},
        }
        for n in numbers
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_truncated_gzip(path: Path) -> Path:
    whole = gzip.compress("".join(json.dumps(row) + "\n" for row in records(*range(50))).encode())
    path.write_bytes(whole[: len(whole) // 2])
    return path


def drop_folder(tmp_path: Path) -> tuple[Path, FileTraceSource]:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_jsonl(traces / "good.jsonl", records(1, 2))
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), validation_workers=1)
    return traces, source


def landed_questions(source: FileTraceSource) -> list[str]:
    valid, _ = source.read_partition(DAY, WORKLOAD)
    return sorted(json.loads(key)[0] for key in valid["user_key"])


def reasons(landings) -> dict[str, str]:
    return {Path(r.path).name: r.reason for r in landings.refused}


# ------------------------------------------------------------------------ refused files


def test_a_link_to_a_file_outside_the_drop_folder_is_refused_never_read(tmp_path):
    # seen: traces-x.jsonl -> /etc/passwd landed the host's file as quarantined rows
    traces, source = drop_folder(tmp_path)
    outside = write_jsonl(tmp_path / "elsewhere" / "secret.jsonl", records(66))
    (traces / "traces-x.jsonl").symlink_to(outside)
    (traces / "passwd.jsonl").symlink_to("/etc/passwd")
    landings = source.land_report()
    assert set(reasons(landings)) == {"traces-x.jsonl", "passwd.jsonl"}
    assert (
        "symbolic link" in reasons(landings)["traces-x.jsonl"] and str(outside) in reasons(landings)["traces-x.jsonl"]
    )
    assert len(landings.results) == 1 and not landings.failed
    assert landed_questions(source) == ["question 1", "question 2"]
    assert source.read_unattributed().height == 0  # no line of /etc/passwd as a record


def test_a_link_to_a_file_inside_the_drop_folder_is_refused_and_its_target_lands_once(tmp_path):
    traces, source = drop_folder(tmp_path)
    (traces / "alias.jsonl").symlink_to(traces / "good.jsonl")
    landings = source.land_report()
    assert list(reasons(landings)) == ["alias.jsonl"]
    assert [Path(p).name for p in source.files()] == ["good.jsonl"]
    assert landed_questions(source) == ["question 1", "question 2"]


def test_a_path_given_through_a_linked_folder_is_refused(tmp_path):
    # e.g. a path handed to land() by another sensor: it must resolve inside the drop folder
    traces, source = drop_folder(tmp_path)
    write_jsonl(tmp_path / "elsewhere" / "calls.jsonl", records(7))
    (traces / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    landings = source.land_report([traces / "good.jsonl", traces / "linked" / "calls.jsonl"])
    assert "outside the drop folder" in reasons(landings)["calls.jsonl"]
    assert landed_questions(source) == ["question 1", "question 2"]


def test_special_files_named_like_trace_files_are_refused(tmp_path):
    traces, source = drop_folder(tmp_path)
    os.mkfifo(traces / "pipe.jsonl")  # opening it to read would block the landing forever
    write_jsonl(traces / "folder.jsonl" / "inner.jsonl", records(3))  # a directory named like a file
    landings = source.land_report()
    assert "FIFO" in reasons(landings)["pipe.jsonl"]
    assert "directory" in reasons(landings)["folder.jsonl"]
    assert landed_questions(source) == ["question 1", "question 2", "question 3"]  # its files land


# ------------------------------------------------------------------------ unreadable files


def test_a_zero_byte_parquet_and_a_truncated_gzip_fail_alone_and_say_what_to_do(tmp_path):
    traces, source = drop_folder(tmp_path)
    (traces / "empty.parquet").write_bytes(b"")
    write_truncated_gzip(traces / "cut.jsonl.gz")
    write_jsonl(traces / "more.jsonl", records(3))
    landings = source.land_report()
    failed = {Path(f.path).name: f for f in landings.failed}
    assert set(failed) == {"empty.parquet", "cut.jsonl.gz"}
    assert failed["empty.parquet"].path == str(traces / "empty.parquet")
    assert "ArrowInvalid" in failed["empty.parquet"].error
    assert "EOFError" in failed["cut.jsonl.gz"].error
    assert all("re-export the file and drop it again" in f.remedy and f.read_now for f in failed.values())
    assert landed_questions(source) == ["question 1", "question 2", "question 3"]
    assert not list(source.landing_path.glob(".*"))  # their staging folders are gone


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading")
def test_a_file_without_read_permission_fails_alone(tmp_path):
    traces, source = drop_folder(tmp_path)
    locked = write_jsonl(traces / "locked.jsonl", records(9))
    locked.chmod(0)
    landings = source.land_report()
    (failed,) = landings.failed
    assert failed.path == str(locked) and "PermissionError" in failed.error and "readable" in failed.remedy
    assert landed_questions(source) == ["question 1", "question 2"]


def test_a_read_refused_by_the_system_fails_alone(tmp_path, monkeypatch):
    # the chmod 000 case where the tests run as root: the error as the kernel would raise it
    traces, source = drop_folder(tmp_path)
    locked = write_jsonl(traces / "locked.jsonl", records(9))
    opened = ingest_module.open_source

    def open_source(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path)

    monkeypatch.setattr(ingest_module, "open_source", open_source)
    (failed,) = source.land_report().failed
    assert failed.path == str(locked) and "PermissionError" in failed.error and "readable" in failed.remedy
    assert landed_questions(source) == ["question 1", "question 2"]


def test_a_failed_file_is_read_again_only_once_it_changes(tmp_path, monkeypatch):
    traces, source = drop_folder(tmp_path)
    cut = write_truncated_gzip(traces / "cut.jsonl.gz")
    assert [f.read_now for f in source.land_report().failed] == [True]
    hashed = []
    digest = ingest_module.content_digest
    monkeypatch.setattr(ingest_module, "content_digest", lambda path: hashed.append(Path(path).name) or digest(path))
    (again,) = source.land_report().failed
    assert not again.read_now and "EOFError" in again.error and hashed == []  # a stat, no read
    assert str(cut) in json.loads((source.landing_path / FAILED_SOURCES).read_text())
    with gzip.open(cut, "wt") as file:  # re-exported whole
        file.write("".join(json.dumps(row) + "\n" for row in records(4)))
    os.utime(cut, (T0, T0))
    landings = source.land_report()
    assert not landings.failed and hashed == ["cut.jsonl.gz"]
    assert landed_questions(source) == ["question 1", "question 2", "question 4"]
    assert json.loads((source.landing_path / FAILED_SOURCES).read_text()) == {}


# ------------------------------------------------------------------------ the sensor and raw_traces


def test_the_drop_folder_sensor_names_each_bad_file_and_lands_the_others(tmp_path, capsys):
    traces, source = drop_folder(tmp_path)
    (traces / "passwd.jsonl").symlink_to("/etc/passwd")
    os.mkfifo(traces / "pipe.jsonl")
    (traces / "empty.parquet").write_bytes(b"")
    cut = write_truncated_gzip(traces / "cut.jsonl.gz")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"trace_source": source})
        result = drop_folder_sensor(context)
        assert len(result.run_requests) == 1  # good.jsonl's partition
        log = capsys.readouterr().err
        assert f"refused {traces / 'passwd.jsonl'}: a symbolic link (to /etc/passwd)" in log
        assert f"refused {traces / 'pipe.jsonl'}: a FIFO" in log
        assert f"failed {traces / 'empty.parquet'}: ArrowInvalid" in log
        assert f"failed {cut}: EOFError" in log and "re-export the file" in log
        # the next full scan reports them again without reading them; a re-exported file lands
        write_jsonl(cut.with_suffix(""), records(5))
        cut.unlink()
        again = drop_folder_sensor(dg.build_sensor_context(instance=instance, resources={"trace_source": source}))
        assert len(again.run_requests) == 1
        assert "(unchanged since it failed: not read again)" in capsys.readouterr().err
    assert landed_questions(source) == ["question 1", "question 2", "question 5"]


def test_raw_traces_lists_refused_and_failed_files_in_its_metadata(tmp_path):
    traces, source = drop_folder(tmp_path)
    (traces / "passwd.jsonl").symlink_to("/etc/passwd")
    (traces / "empty.parquet").write_bytes(b"")
    resources = {"trace_source": source, "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets"))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", [WORKLOAD])
        result = dg.materialize(
            [raw_traces],
            partition_key=trace_partition_key(DAY, WORKLOAD),
            instance=instance,
            resources=resources,
        )
        (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_traces")]
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 2
    assert str(traces / "passwd.jsonl") in metadata["refused_files"] and "symbolic link" in metadata["refused_files"]
    assert str(traces / "empty.parquet") in metadata["failed_sources"] and "re-export" in metadata["failed_sources"]


# ------------------------------------------------------------------------ damaged landings


def truncate_a_landed_part(source: FileTraceSource) -> Path:
    (part,) = source.landing_path.glob(f"[!.]*/day={DAY}/workload={WORKLOAD}/valid-*.parquet")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(pl.exceptions.ComputeError, match="out of specification"):
        pl.read_parquet(part)
    return part


def test_a_landing_damaged_on_disk_is_landed_again_from_its_file(tmp_path):
    traces, source = drop_folder(tmp_path)
    (landed,) = source.land()
    part = truncate_a_landed_part(source)
    folder = part.parents[2]
    assert damaged_parts(folder, read_manifest(folder)) == [str(part.relative_to(folder))]
    assert landed_questions(source) == ["question 1", "question 2"]  # healed while read
    assert damaged_parts(folder, read_manifest(folder)) == []
    assert read_manifest(folder)["generation"] == landed.generation  # same content: nothing new to ingest
    assert not list(source.landing_path.glob(".*"))


def test_raw_traces_heals_a_damaged_landing(tmp_path):
    traces, source = drop_folder(tmp_path)
    source.land()
    truncate_a_landed_part(source)
    resources = {"trace_source": source, "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets"))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", [WORKLOAD])
        result = dg.materialize(
            [raw_traces], partition_key=trace_partition_key(DAY, WORKLOAD), instance=instance, resources=resources
        )
    assert result.success
    assert pl.read_parquet(tmp_path / "assets" / "raw_traces" / DAY / f"{WORKLOAD}.parquet").height == 2


def test_a_damaged_landing_whose_file_is_gone_names_its_partitions_and_the_remedy(tmp_path):
    traces, source = drop_folder(tmp_path)
    source.land()
    original = (traces / "good.jsonl").read_bytes()
    (traces / "good.jsonl").unlink()
    part = truncate_a_landed_part(source)
    with pytest.raises(LandingLost) as lost:
        source.read_partition(DAY, WORKLOAD)
    message = str(lost.value)
    assert str(part.parents[2]) in message and f"{DAY}|{WORKLOAD}" in message
    assert "drop the original file into the drop folder again" in message
    (traces / "restored.jsonl").write_bytes(original)  # as the message says
    source.land()
    assert landed_questions(source) == ["question 1", "question 2"]


# ------------------------------------------------------------------------ leftovers of killed processes


def start_child(code: str, *args: str) -> subprocess.Popen:
    """A Python process running `code` in this repository, with `args` as sys.argv[1:]."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def killed(code: str, *args: str) -> None:
    """Runs `code` in a child process that kills itself (-9) where `code` says so."""
    child = start_child(code, *args)
    assert child.wait() == -signal.SIGKILL


KILLED_WHILE_LANDING = """
    import datetime as dt, os, signal, sys
    from pathlib import Path
    from flywheel_assets.core.ingest import TimeBounds, land_files

    def killed_while_reading(path):
        yield [("x:1", "{}")]
        yield [("x:2", "{}")]  # the landing asks for two batches before it writes the first
        os.kill(os.getpid(), signal.SIGKILL)  # the staging folder holds written parts by now
        yield []

    land_files([Path(sys.argv[1])], killed_while_reading, landing_dir=Path(sys.argv[2]),
               bounds=TimeBounds(dt.date(2025, 1, 1), dt.date(2026, 1, 1)))
"""

LIVE_IN_FOLDER = """
    import sys
    from pathlib import Path
    from flywheel_assets.core.atomic import owner_tag
    work = Path(sys.argv[1]) / f".in-progress{owner_tag()}"
    work.mkdir()
    (work / "part.parquet").write_bytes(b"not done yet")
    print("ready", flush=True)
    sys.stdin.read()  # alive until the test closes stdin
"""


def test_a_landing_sweeps_what_a_killed_lander_left_and_keeps_a_live_ones(tmp_path):
    traces, source = drop_folder(tmp_path)
    source.land()
    killed(KILLED_WHILE_LANDING, str(write_jsonl(traces / "crash.jsonl", records(8))), str(source.landing_path))
    (crashed,) = source.landing_path.glob(".*.owner-*")
    live = start_child(LIVE_IN_FOLDER, str(source.landing_path))
    try:
        assert live.stdout.readline() == "ready\n"
        write_jsonl(traces / "next.jsonl", records(3))
        landings = source.land_report()
        assert [leftover.path for leftover in landings.swept] == [crashed]
        assert landings.swept[0].size > 0
        assert f"removed {crashed} (" in "\n".join(landings.log_lines())
        assert [p.name for p in source.landing_path.glob(".*")] == [f".in-progress{owner_tag_of(live.pid)}"]
    finally:
        live.stdin.close()
        live.wait()
    assert "question 8" in landed_questions(source)  # crash.jsonl landed this time


def owner_tag_of(pid: int) -> str:
    return f".owner-{atomic_module._machine()}-{pid}-{atomic_module._process_start(pid)}"


KILLED_WHILE_WRITING = """
    import os, signal, sys
    import dagster as dg
    from pathlib import Path
    from flywheel_assets.core.atomic import atomic_path
    from resources.datasets import StoredAssets
    base = Path(sys.argv[1])
    key = dg.MultiPartitionKey({"day": "2025-11-20", "workload": "w"})
    with StoredAssets(base_dir=str(base)).pinned("raw_traces", [key]):
        with atomic_path(base / "raw_traces" / "2025-11-20" / "w.parquet") as tmp:
            Path(tmp).write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
"""

LIVE_WRITER = """
    import sys
    from pathlib import Path
    from flywheel_assets.core.atomic import atomic_path
    with atomic_path(Path(sys.argv[1]) / "raw_traces" / "2025-11-20" / "other.parquet") as tmp:
        Path(tmp).write_bytes(b"still writing")
        print("ready", flush=True)
        sys.stdin.read()
"""


@dg.asset(
    partitions_def=dg.MultiPartitionsDefinition(
        {
            "day": dg.StaticPartitionsDefinition([DAY]),
            "workload": dg.StaticPartitionsDefinition(["v"]),
        }
    )
)
def raw_traces_like() -> pl.DataFrame:
    return pl.DataFrame({"n": [1]})


def test_an_io_manager_write_sweeps_a_killed_writers_temp_files_and_pins_and_keeps_a_live_ones(tmp_path, capsys):
    base = tmp_path / "assets"
    stored = base / "raw_traces" / DAY / "w.parquet"
    with atomic_path(stored) as tmp:
        pl.DataFrame({"n": [1]}).write_parquet(tmp)
    killed(KILLED_WHILE_WRITING, str(base))
    leftovers = sorted(p.name for p in [*base.glob(".pinned-*"), *stored.parent.glob(".*")])
    assert len(leftovers) == 2 and all(".owner-" in name for name in leftovers)
    live = start_child(LIVE_WRITER, str(base))
    try:
        assert live.stdout.readline() == "ready\n"
        # the same folders as the asset the I/O manager writes (raw_traces/<day>/), by its key
        asset = raw_traces_like.with_attributes(
            asset_key_replacements={dg.AssetKey("raw_traces_like"): dg.AssetKey("raw_traces")}
        )
        result = dg.materialize(
            [asset],
            partition_key=dg.MultiPartitionKey({"day": DAY, "workload": "v"}),
            resources={"io_manager": ParquetIOManager(base_dir=str(base))},
        )
        assert result.success
        assert not list(base.glob(".pinned-*"))
        (kept,) = stored.parent.glob(".*")
        assert kept.name.startswith(".other.parquet.") and kept.name.endswith(owner_tag_of(live.pid))
        assert capsys.readouterr().err.count("left by a killed process") == 2
    finally:
        live.stdin.close()
        live.wait()
    assert sorted(p.name for p in stored.parent.iterdir()) == ["other.parquet", "v.parquet", "w.parquet"]


def test_the_sweep_tells_a_reused_pid_from_its_owner_and_leaves_other_hosts_alone(tmp_path):
    own = owner_tag()
    reused = own.rsplit("-", 1)[0] + f"-{atomic_module._process_start(os.getpid()) + 1}"  # same pid, later start
    other_host = f".owner-{'0' * 12}-1-1"
    for name in (f".a.parquet.x{own}", f".b.parquet.x{reused}", f".c.parquet.x{other_host}", ".d.parquet.untagged"):
        (tmp_path / name).write_bytes(b"12345")
    removed = sweep_leftovers(tmp_path)
    assert [(leftover.path.name, leftover.size) for leftover in removed] == [(f".b.parquet.x{reused}", 5)]
    assert len(list(tmp_path.iterdir())) == 3


def test_another_hosts_leftovers_go_once_untouched_for_the_configured_time(tmp_path, monkeypatch):
    """A step pod killed on a shared volume leaves files no process here can vouch for."""
    old, recent = time.time() - 3 * 3600, time.time() - 60
    abandoned_file = tmp_path / f".a.parquet.x.owner-{'0' * 12}-1-1"
    abandoned_file.write_bytes(b"12345")
    os.utime(abandoned_file, (old, old))
    # a pin folder holds hard links to old files, but was made recently: still in use
    in_use = tmp_path / f".pinned-raw_traces-x.owner-{'1' * 12}-2-2"
    in_use.mkdir()
    (in_use / "w.parquet").write_bytes(b"123")
    os.utime(in_use / "w.parquet", (old, old))
    os.utime(in_use, (recent, recent))
    stale_staging = tmp_path / f".weave-x.owner-{'2' * 12}-3-3"
    (stale_staging / "part").mkdir(parents=True)
    (stale_staging / "part" / "0.parquet").write_bytes(b"1234567")
    for path in (stale_staging / "part" / "0.parquet", stale_staging / "part", stale_staging):
        os.utime(path, (old, old))
    monkeypatch.setenv("FLYWHEEL_FOREIGN_LEFTOVER_HOURS", "2")
    removed = sweep_leftovers(tmp_path)
    assert sorted((leftover.path.name, leftover.size) for leftover in removed) == [
        (abandoned_file.name, 5),
        (stale_staging.name, 7),
    ]
    assert [p.name for p in tmp_path.iterdir()] == [in_use.name]
    assert sweep_leftovers(tmp_path, foreign_after_s=30) and not list(tmp_path.iterdir())
