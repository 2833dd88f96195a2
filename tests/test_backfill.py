"""A historical backfill of `raw_traces` day partitions, through the real CLI command:

    dagster job backfill -j ingest --partitions "<day>|<workload>,..." --noprompt

run with click's test runner against a temporary DAGSTER_HOME whose run launcher executes
the backfill's runs in this process. The code location is this file
(`-f tests/test_backfill.py -a backfill_definitions`): the function builds the flywheel's
definitions from the environment at call time, so both the CLI's code server and the
in-process runs root their resources in the test's folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
from click.testing import CliRunner

DAYS = 7
FIRST = (dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS + 2)).date()
PER_DAY = 12


def backfill_definitions() -> dg.Definitions:
    """The flywheel's definitions, rooted at FLYWHEEL_HOME as it is now (for the CLI)."""
    from flywheel_assets.definitions import ASSETS, build_resources
    from flywheel_assets.jobs import ingest_job

    home = Path(os.environ["FLYWHEEL_HOME"])
    return dg.Definitions(
        assets=ASSETS,
        jobs=[ingest_job],
        resources=build_resources(home, home / "traces"),
        executor=dg.in_process_executor,  # a step process per run would cost seconds each
    )


def write_history(traces: Path, workload: str) -> list[str]:
    """One file per day, as an export of a week of production traffic would be."""
    traces.mkdir(parents=True, exist_ok=True)
    days = []
    for d in range(DAYS):
        day = FIRST + dt.timedelta(days=d)
        start = int(dt.datetime(day.year, day.month, day.day, 8, tzinfo=dt.UTC).timestamp())
        records = [
            {
                "timestamp": start + 60 * i,
                "workload_id": workload,
                "client_id": "app",
                "request": {"model": "m", "messages": [{"role": "user", "content": f"{day} question {i}"}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
            }
            for i in range(PER_DAY)
        ]
        (traces / f"{day}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        days.append(day.isoformat())
    return days


def test_a_cli_backfill_of_seven_days_materializes_them_all(tmp_path, monkeypatch):
    from dagster._cli.job import job_backfill_command

    from flywheel_assets.definitions import ASSETS, build_resources

    home = tmp_path / "flywheel"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # runs start as submitted (no queue, no daemon) and execute in this process
    (dagster_home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator.default_run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "run_launcher:\n"
        "  module: dagster._core.launcher.sync_in_memory_run_launcher\n"
        "  class: SyncInMemoryRunLauncher\n"
        "telemetry:\n  enabled: false\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.setenv("FLYWHEEL_TRACES_DIR", str(home / "traces"))
    days = write_history(home / "traces", "tool_router")
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("workload", ["tool_router"])  # as the ingest sensors do

    partitions = ",".join(f"{day}|tool_router" for day in days)
    result = CliRunner().invoke(
        job_backfill_command,
        ["-f", __file__, "-a", "backfill_definitions", "-j", "ingest", "--partitions", partitions, "--noprompt"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "Launched backfill job" in result.output

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        failures = [
            e.message
            for r in runs
            if r.status != dg.DagsterRunStatus.SUCCESS
            for e in instance.all_logs(r.run_id)
            if e.is_dagster_event and e.dagster_event.is_failure
        ]
        assert not failures, failures[:2]
        assert len(runs) == DAYS and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert len({r.tags["dagster/backfill"] for r in runs}) == 1 and all(r.job_name == "ingest" for r in runs)
        materialized = instance.get_materialized_partitions(dg.AssetKey("raw_traces"))
        assert materialized == {f"{day}|tool_router" for day in days}
    for day in days:
        assert pl.read_parquet(home / "assets" / "raw_traces" / day / "tool_router.parquet").height == PER_DAY

    # downstream: the workload's dataset reads every backfilled day
    with dg.DagsterInstance.get() as instance:
        run = dg.materialize(
            ASSETS,
            selection=["workload_dataset"],
            partition_key="tool_router",
            instance=instance,
            resources=build_resources(home, home / "traces"),
        )
        (event,) = run.get_asset_materialization_events()
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["days"] == days
    assert metadata["records_in"] == DAYS * PER_DAY == metadata["records_out"]


def test_one_run_ingests_a_range_of_partitions(tmp_path):
    """What the drop-folder sensor requests for a dropped week: one `ingest` run over a
    range of day x workload partitions (BackfillPolicy.single_run), each partition written
    to its own file with its own row count; an identical re-run keeps the data version."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from flywheel_assets.definitions import ASSETS, build_resources
    from flywheel_assets.jobs import ingest_job

    days = write_history(tmp_path / "traces", "wa")
    write_history(tmp_path / "traces" / "b", "wb")
    defs = dg.Definitions(assets=ASSETS, jobs=[ingest_job], resources=build_resources(tmp_path, tmp_path / "traces"))
    window = {ASSET_PARTITION_RANGE_START_TAG: f"{days[0]}|wa", ASSET_PARTITION_RANGE_END_TAG: f"{days[-1]}|wb"}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["wa", "wb"])
        versions = []
        for _ in range(2):
            run = defs.resolve_job_def("ingest").execute_in_process(instance=instance, tags=window)
            assert run.success
            events = [
                e.materialization
                for e in run.get_asset_materialization_events()
                if e.materialization.asset_key == dg.AssetKey("raw_traces")
            ]
            assert sorted(e.partition for e in events) == sorted(f"{d}|{w}" for d in days for w in ("wa", "wb"))
            assert {e.metadata["dagster/row_count"].value for e in events} == {PER_DAY}
            versions.append({e.tags["dagster/data_version"] for e in events})
        assert len(instance.get_runs()) == 2
    assert versions[0] == versions[1] and len(versions[0]) == 1
    assert pl.read_parquet(tmp_path / "assets" / "raw_traces" / days[3] / "wb.parquet").height == PER_DAY
