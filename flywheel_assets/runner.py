"""Run the whole flywheel once, partition by partition, in a Dagster instance.

This is what the README's demo command and the end-to-end tests do: land the drop
folder, register the workloads it found, then materialize each stage for every
partition. Every run is recorded in the instance, so `dagster dev` on the same
DAGSTER_HOME shows the history, lineage and metadata afterwards.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg
import polars as pl

from flywheel_assets.jobs import curate_and_split_job, ingest_job, report_job, train_and_evaluate_job
from partitions.slices import (
    candidate_partitions,
    candidate_workload_key,
    trace_partition_boxes,
    trace_range_tags,
    workload_partitions,
)

# Each stage runs as its named job, so the UI lists `ingest`, `curate_and_split`, ...
# rather than Dagster's `__ephemeral_asset_job__`.
STAGE_JOBS = [ingest_job, curate_and_split_job, train_and_evaluate_job, report_job]


# Who runs an in-process run: no daemon watches it, so a run whose runner was killed
# (SIGKILL, out of memory) would stay STARTED for good; the next runner fails it.
RUNNER_TAGS = {"flywheel/trigger": "runner", "flywheel/runner_host": socket.gethostname()}
RUNNER_PID_TAG = "flywheel/runner_pid"


def fail_runs_of_dead_runners(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> int:
    """Mark failed the runs this host's runners left unfinished when their process died."""
    unfinished = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags=RUNNER_TAGS,
        )
    )
    failed = 0
    for run in unfinished:
        pid = int(run.tags.get(RUNNER_PID_TAG, 0))
        if pid and not process_alive(pid):
            instance.report_run_failed(run, f"its runner process {pid} died before the run ended (killed?)")
            # the pool slots its steps held (`gpu`) would otherwise block every later step
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            log(f"run {run.run_id} ({run.job_name}) was left {run.status.value} by dead process {pid}: marked failed")
            failed += 1
    return failed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class FlywheelInterrupted(Exception):
    """The process was asked to stop (Ctrl-C, SIGTERM) while a run was executing."""


def was_interrupted(run: dg.ExecuteInProcessResult) -> bool:
    """Whether a step failed because Dagster turned a stop signal into an interruption."""
    return any(
        event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name == "DagsterExecutionInterruptedError"
        for event in run.get_step_failure_events()
    )


def failed_blocking_checks(run: dg.ExecuteInProcessResult) -> list[dg.AssetCheckEvaluation]:
    return [check for check in run.get_asset_check_evaluations() if check.blocking and not check.passed]


def was_held_back(run: dg.ExecuteInProcessResult) -> bool:
    """Whether the run stopped only because a blocking check failed: its data is not good
    enough to go on with (a workload with too few records), which is normal, not a crash."""
    failures = run.get_step_failure_events()
    return bool(failed_blocking_checks(run)) and all(
        event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
        for event in failures
    )


def run_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The warnings the run's steps logged (they stay in its event log; the console counts them)."""
    return [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is None and entry.level >= logging.WARNING
    ]


def run_report(
    instance: dg.DagsterInstance, run: dg.ExecuteInProcessResult, job: str, target: str, progress: str
) -> str:
    """What the console says about one run: one line (`ok`, or `skip` with the blocking
    check's reason and remedy), or `FAIL` followed by the stack traces of a real failure."""
    if run.success:
        found = run_warnings(instance, run.run_id)
        counted = f"{len(found)} warning{'s' if len(found) > 1 else ''} in its run log"
        more = f", {counted}, first: {found[0].splitlines()[0]}" if found else ""
        return f"ok   {job} [{target}] ({progress}{more})"
    if was_held_back(run):
        return f"skip {job} [{target}] ({progress}): " + "; ".join(
            f"{check.description} (check {check.check_name})" for check in failed_blocking_checks(run)
        )
    errors = [
        f"  step {event.step_key}: {event.step_failure_data.error.to_string()}"
        for event in run.get_step_failure_events()
        if event.step_failure_data.error is not None
    ]
    return "\n".join([f"FAIL {job} [{target}] ({progress}, run {run.run_id})", *errors])


@dataclass
class FlywheelRun:
    workloads: list[str] = field(default_factory=list)
    runs: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    leaderboards: dict[str, pl.DataFrame] = field(default_factory=dict)

    @property
    def failed(self) -> list[dg.ExecuteInProcessResult]:
        return [r for r in self.runs if not r.success and not was_held_back(r)]

    @property
    def held_back(self) -> list[dg.ExecuteInProcessResult]:
        return [r for r in self.runs if not r.success and was_held_back(r)]


def run_flywheel(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    log: Callable[[str], None] = print,
    through: Literal["split", "leaderboard"] = "leaderboard",
) -> FlywheelRun:
    fail_runs_of_dead_runners(instance, log)
    resources = defs.resources
    trace_source = resources["trace_source"]
    landed = trace_source.land()
    workload_ids = {k: v for r in landed for k, v in r.workload_ids.items()}
    workloads = sorted(workload_ids)
    instance.add_dynamic_partitions(workload_partitions.name, workloads)
    partitions = sorted(
        {p for r in landed for p, counts in r.partitions.items() if counts["valid"] or counts["quarantined"]}
        - {"unattributed|unattributed"}
    )
    result = FlywheelRun(workloads=workloads)
    staged = dg.Definitions(assets=defs.assets, resources=resources, jobs=STAGE_JOBS)
    order = instance.get_dynamic_partitions(workload_partitions.name)
    boxes = trace_partition_boxes([tuple(p.split("|")) for p in partitions], order)
    candidates = candidate_partitions.get_partition_keys()
    # the one progress display: each run numbered against the runs still planned (a
    # workload held back or not ingested takes its later runs off the plan)
    later_runs_per_workload = 0 if through == "split" else len(candidates) + 1
    planned = len(boxes) + len(workloads) * (1 + later_runs_per_workload)
    started = time.monotonic()

    def materialize(
        job: str, partition_key: str | None = None, window: dict | None = None
    ) -> dg.ExecuteInProcessResult:
        """One run of a stage's job, for a partition or a key range (`window`'s tags)."""
        run = staged.resolve_job_def(job).execute_in_process(
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            tags={**(window or {}), **RUNNER_TAGS, RUNNER_PID_TAG: str(os.getpid())},
            # the runner reports each run below; the full log is in the run's event log
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        result.runs.append(run)
        target = partition_key or "...".join((window or {}).values())
        elapsed = int(time.monotonic() - started)
        log(run_report(instance, run, job, target, f"{len(result.runs)}/{planned}, {elapsed // 60}:{elapsed % 60:02}"))
        if was_interrupted(run):  # stop the whole flywheel, not just this run
            raise FlywheelInterrupted(f"interrupted during {job} [{target}]")
        return run

    log(f"{len(landed)} trace files, {len(partitions)} day x workload partitions, workloads {workloads}")
    # as the drop-folder sensor does: one ingest run per box of day x workload partitions
    not_ingested: set[str] = set()
    for box in boxes:
        if not materialize(ingest_job.name, window=trace_range_tags(box)).success:
            not_ingested |= {workload for _, workload in box}
    # a workload whose ingest failed keeps its previous dataset: rebuilding it now would
    # quietly leave the new traffic out (automation under the daemon waits the same way)
    for workload in sorted(not_ingested):
        log(f"skip {curate_and_split_job.name} [{workload}]: its ingest failed (see that run)")
    planned -= len(not_ingested) * (1 + later_runs_per_workload)
    ready = []
    for workload in workloads:
        if workload not in not_ingested:
            if materialize(curate_and_split_job.name, workload).success:
                ready.append(workload)
            else:
                planned -= later_runs_per_workload
    if through == "split":
        return result
    for workload in ready:
        for candidate in candidates:
            materialize(train_and_evaluate_job.name, candidate_workload_key(candidate, workload))
        board = materialize(report_job.name, workload)
        if board.success:
            result.leaderboards[workload] = board.output_for_node("leaderboard")
    return result
