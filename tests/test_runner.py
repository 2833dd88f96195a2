"""run_flywheel: a stop signal during one run stops the whole flywheel, not just that run;
what it reports of each run (a held-back workload in one line, a real failure with its stack);
the leaderboards printed at the end."""

import json
import os
import re
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError

from flywheel_assets.core.leaderboard import LEADERBOARD_SCHEMA
from flywheel_assets.definitions import ASSETS, build_resources
from flywheel_assets.live import print_leaderboards
from flywheel_assets.runner import (
    RUNNER_PID_TAG,
    RUNNER_TAGS,
    FlywheelInterrupted,
    fail_runs_of_dead_runners,
    run_flywheel,
    was_interrupted,
)
from partitions.slices import trace_partitions, workload_partitions
from resources.traces import FileTraceSource

calls = []


@dg.multi_asset(
    outs={"raw_traces": dg.AssetOut(), "quarantined_traces": dg.AssetOut()},
    partitions_def=trace_partitions,
)
def ingest_stopped_by_a_signal(context):
    calls.append(context.partition_keys)
    # what Dagster raises in a step when the process gets SIGINT / SIGTERM
    raise DagsterExecutionInterruptedError()


def record(day_offset: int, workload: str) -> str:
    return json.dumps(
        {
            "timestamp": 1_735_700_000 + day_offset * 86_400,
            "workload_id": workload,
            "client_id": "c",
            "request": {"messages": [{"role": "user", "content": "hi"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
        }
    )


def test_an_interrupted_run_stops_the_remaining_runs(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    # a: three days, b: the first only -> two ingest runs, day 1 x [a, b] and days 2-3 x [a]
    records = [record(d, "a") for d in range(3)] + [record(0, "b")]
    (traces / "t.jsonl").write_text("\n".join(records) + "\n")
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), start_date="2025-01-01")
    defs = dg.Definitions(assets=[ingest_stopped_by_a_signal], resources={"trace_source": source})
    calls.clear()
    with dg.instance_for_test() as instance:
        with pytest.raises(
            FlywheelInterrupted, match=r"interrupted during ingest \[2025-01-01\|a\.\.\.2025-01-01\|b\]"
        ):
            run_flywheel(defs, instance, log=lambda _: None)
        (run,) = instance.get_runs()  # two ingest runs to go, only the first was tried
        assert run.job_name == "ingest"  # the stage's job, as the UI lists it
    assert calls == [["2025-01-01|a", "2025-01-01|b"]]


def test_an_ordinary_failure_is_not_an_interruption():
    @dg.asset
    def broken():
        raise ValueError("bad data")

    result = dg.materialize([broken], raise_on_error=False)
    assert not result.success and not was_interrupted(result)


def test_a_run_left_started_by_a_killed_runner_is_failed_by_the_next(tmp_path):
    """An in-process run whose process was SIGKILLed stays STARTED (no daemon watches it)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with dg.instance_for_test() as instance:

        def started_run(pid: int) -> dg.DagsterRun:
            run = instance.create_run_for_job(
                dg.GraphDefinition("g").to_job(),
                tags={**RUNNER_TAGS, RUNNER_PID_TAG: str(pid)},
            )
            instance.handle_new_event(
                dg.EventLogEntry(
                    error_info=None,
                    level="DEBUG",
                    user_message="",
                    run_id=run.run_id,
                    timestamp=0.0,
                    dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name),
                )
            )
            return run

        orphan, alive = started_run(dead.pid), started_run(os.getpid())
        slots = instance.event_log_storage
        slots.set_concurrency_slots("gpu", 1)
        assert slots.claim_concurrency_slot("gpu", orphan.run_id, "lora_adapter").is_claimed
        assert fail_runs_of_dead_runners(instance, log=lambda _: None) == 1
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        # the dead run's `gpu` slot is free again: a later step is not blocked for good
        assert slots.claim_concurrency_slot("gpu", alive.run_id, "lora_adapter").is_claimed


def test_a_workload_whose_ingest_failed_is_not_curated_from_stale_data(tmp_path):
    """Seen by an operator: the dataset run after a failed ingest succeeded on the previous
    days' data while the command exited 1."""

    @dg.multi_asset(
        outs={"raw_traces": dg.AssetOut(), "quarantined_traces": dg.AssetOut()},
        partitions_def=trace_partitions,
    )
    def failing_ingest(context):
        raise ValueError("a landed part is damaged")

    @dg.asset(partitions_def=workload_partitions, deps=["raw_traces"])
    def workload_dataset(context):
        calls.append(context.partition_key)

    @dg.asset(partitions_def=workload_partitions, deps=[workload_dataset])
    def eval_dataset():
        return None

    @dg.asset(partitions_def=workload_partitions, deps=[workload_dataset])
    def train_dataset():
        return None

    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "t.jsonl").write_text(record(0, "a") + "\n")
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), start_date="2025-01-01")
    defs = dg.Definitions(
        assets=[failing_ingest, workload_dataset, eval_dataset, train_dataset],
        resources={"trace_source": source},
    )
    calls.clear()
    lines = []
    with dg.instance_for_test() as instance:
        result = run_flywheel(defs, instance, log=lines.append, through="split")
    assert calls == [] and len(result.failed) == 1
    assert any("skip curate_and_split [a]: its ingest failed" in line for line in lines)


def test_a_workload_below_the_minimum_is_one_line_with_reason_and_remedy(tmp_path):
    """Seen in the demo: a small workload printed ERROR lines and a stack trace, although a
    blocked small workload is normal. The real curation asset and its `has_min_records` check."""
    traces = tmp_path / "traces"
    traces.mkdir()
    small = [
        json.dumps(
            {
                **json.loads(record(0, "small")),
                "request": {"messages": [{"role": "user", "content": f"question number {i}"}]},
            }
        )
        for i in range(12)
    ]
    (traces / "t.jsonl").write_text("\n".join(small) + "\n")
    resources = {
        **build_resources(tmp_path, traces),
        "trace_source": FileTraceSource(
            traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), start_date="2025-01-01"
        ),
    }
    lines = []
    with dg.instance_for_test() as instance:
        result = run_flywheel(
            dg.Definitions(assets=ASSETS, resources=resources), instance, log=lines.append, through="split"
        )
    (held,) = result.held_back
    assert result.failed == [] and not held.success
    (line,) = [line for line in lines if "curate_and_split" in line]
    assert "\n" not in line and "Traceback" not in line
    assert re.match(
        r"skip curate_and_split \[small\] \(2/2, \d+:\d\d\): workload has 12 records after curation, needs 50", line
    )
    assert "collect 38 more, or widen lookback_days or lower min_records in workload_dataset's run config" in line
    assert line.endswith("(check has_min_records)")


def test_a_real_failure_keeps_its_stack_trace(tmp_path):
    @dg.multi_asset(
        outs={"raw_traces": dg.AssetOut(), "quarantined_traces": dg.AssetOut()},
        partitions_def=trace_partitions,
    )
    def failing_ingest(context):
        raise ValueError("a landed part is damaged")

    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "t.jsonl").write_text(record(0, "a") + "\n")
    source = FileTraceSource(traces_dir=str(traces), landing_dir=str(tmp_path / "landing"), start_date="2025-01-01")
    lines = []
    with dg.instance_for_test() as instance:
        result = run_flywheel(
            dg.Definitions(assets=[failing_ingest], resources={"trace_source": source}),
            instance,
            log=lines.append,
            through="split",
        )
    assert len(result.failed) == 1 and result.held_back == []
    (report,) = [line for line in lines if "FAIL ingest" in line]
    assert "ValueError: a landed part is damaged" in report and 'File "' in report  # the stack


def test_the_printed_leaderboard_has_the_columns_to_decide_on_and_points_to_the_full_board(tmp_path, capsys):
    """Seen in the demo: every column, cut at 200 characters."""
    row = {column: None for column in LEADERBOARD_SCHEMA} | {
        "candidate": "tiny-demo",
        "experiment": "customized",
        "score": 1.0,
        "ci_low": 0.8389,
        "ci_high": 1.0,
        "n": 20,
        "function_name_and_args_accuracy": 0.0,
        "latency_p50_s": 0.123,
        "cost_vs_production": 0.0125,
        "meets_threshold": False,
        "best": False,
    }
    board = pl.DataFrame(
        [row, row | {"experiment": "base", "score": None, "best": True, "meets_threshold": True}],
        schema=LEADERBOARD_SCHEMA,
    )
    path = tmp_path / "assets" / "leaderboard" / "tool_router.parquet"
    path.parent.mkdir(parents=True)
    board.write_parquet(path)
    chat = board.drop("function_name_and_args_accuracy")  # as a chat workload's board (no tool calls)
    chat.write_parquet(path.with_name("chat.parquet"))

    print_leaderboards(tmp_path, ["tool_router", "chat"])
    printed = capsys.readouterr().out
    assert f"leaderboard [tool_router] (all {board.width} columns: {path})" in printed
    tool_table, chat_table = (part.splitlines() for part in printed.split("leaderboard [")[1:])
    header = [cell.strip() for cell in tool_table[1].strip("|").split("|")]
    assert header == [
        "candidate",
        "experiment",
        "score [95% CI]",
        "name+args",
        "p50 latency",
        "cost vs prod",
        "verdict",
    ]
    assert [cell.strip() for cell in tool_table[3].strip("|").split("|")] == [
        "tiny-demo",
        "customized",
        "1.00 [0.84, 1.00] n=20",
        "0.00",
        "0.12 s",
        "1.2%",
        "threshold not met",
    ]
    assert "not scored" in tool_table[4] and "recommended" in tool_table[4]
    assert "name+args" not in chat_table[1]
    assert max(len(line) for line in printed.splitlines() if line.startswith("|")) <= 120
