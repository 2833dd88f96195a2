"""Automation policies, one named condition per policy, and opt-in weekly schedules.

Plain `eager()` re-requests downstream whenever an upstream materializes, even with an
identical data version; these conditions react only to a changed data version, so an
unchanged dataset never triggers retraining. Eager's `~any_deps_missing()` counts every
other day of a workload as missing, so a dataset condition asks for at least one ingested
day instead; eager keeps requesting below a failed blocking check unless
`all_deps_blocking_checks_passed()` is asked for; and when an asset and its upstream both
materialize between two ticks, the data-version condition sees nothing new.

Who evaluates the conditions: Dagster's automation condition sensors. The GPU assets are
targeted by `gpu_automation_sensor` (definitions.py, so their runs carry the GPU run tag);
every other asset with a condition (workload_dataset, eval/train_dataset, leaderboard, the
monitoring assets) by
`automation_sensor`, which takes the place of Dagster's default one. Both
start STOPPED: turn them on in the UI (Automation tab), with the ingest sensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dagster as dg

from flywheel_assets.jobs import curate_and_split_job, report_job, train_and_evaluate_job
from partitions.slices import candidate_partitions, candidate_workload_key, workload_partitions

AC = dg.AutomationCondition

_on_changed_data = AC.eager().replace("any_deps_updated", AC.any_deps_match(AC.data_version_changed()))

# A workload-level asset over the days of its workload (its dataset, its monitoring): days
# without traffic are missing partitions, which must not block it (eager alone never fires
# for such a workload). Without eager's missing-deps guard a new workload would be requested
# as soon as its partition exists, before any day is ingested: at least one day must be there.
_present = AC.any_deps_match(~AC.missing())
refresh_when_traffic_changed = _on_changed_data.without(~AC.any_deps_missing()) & _present

# Drift starts the next turn. `traffic_drift`'s data version changes when a breach starts
# (not while it lasts, see core/drift.py) and its WARN check fails while it lasts: the
# workload's dataset is requested once per breach, with its splits in the same run; the
# turn goes on through training as far as the data changed. Its other data version
# changes (a breach ending) start nothing.
_DRIFT = dg.AssetSelection.assets("traffic_drift")
drift_breach_started = AC.any_deps_match(AC.data_version_changed() & AC.any_checks_match(AC.check_failed())).allow(
    _DRIFT
)
refresh_when_data_changed = (
    AC.eager()
    .replace("any_deps_updated", AC.any_deps_match(AC.data_version_changed()).ignore(_DRIFT) | drift_breach_started)
    .without(~AC.any_deps_missing())
    & _present
)

# Training and evaluation: only when a split really changed and its blocking checks passed.
retrain_when_dataset_changed = _on_changed_data & AC.all_deps_blocking_checks_passed()

# The splits (cheap): in the same run as their dataset whenever it is requested, instead of
# a tick and a run launch later; the dataset's blocking check stops them in that run if it
# fails. Splits of an unchanged dataset have unchanged data versions, so training still
# follows only a real change.
_with_dataset = AC.any_deps_match(AC.will_be_requested())
split_with_dataset = AC.eager().replace(
    "any_deps_updated", AC.any_deps_match(AC.data_version_changed()) | _with_dataset
) & (AC.all_deps_blocking_checks_passed() | _with_dataset)

# The leaderboard: when an evaluation changed. It also reads workload_dataset, but a new
# dataset alone would rebuild it from the previous dataset's evaluations (and for a
# workload that failed its checks); its evaluations follow the dataset anyway. It keeps
# eager's guard: its dataset and every candidate's three evaluations must exist (each
# evaluation always materializes, even a skipped one), so a new workload or candidate
# waits for all of them instead of failing on a missing input.
refresh_when_evaluations_changed = AC.eager().replace(
    "any_deps_updated",
    AC.any_deps_match(AC.data_version_changed()).allow(
        dg.AssetSelection.assets("base_eval", "icl_eval", "customized_eval")
    ),
)


# ------------------------------------------------------------------------------- schedules
def _workloads(context: dg.ScheduleEvaluationContext) -> list[str]:
    return sorted(context.instance.get_dynamic_partitions(workload_partitions.name))


def _requests(context: dg.ScheduleEvaluationContext, keys: list, stage: str) -> Iterator[dg.RunRequest]:
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H%M")
    for key in keys:
        yield dg.RunRequest(
            partition_key=key,
            run_key=f"{stage}:{tick}:{key}",
            tags={"flywheel/trigger": f"weekly_{stage}"},
        )


def weekly_schedules(
    *,
    curate_cron: str = "0 2 * * 1",
    train_cron: str = "0 4 * * 1",
    report_cron: str = "0 10 * * 1",
    timezone: str = "UTC",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> list[dg.ScheduleDefinition]:
    """A cadence for teams that prefer one to the automation sensors (all off by default).

    Mondays (UTC) at 02:00 every workload's dataset and splits, at 04:00 every candidate x
    workload adapter and evaluations (GPU-tagged runs), at 10:00
    every leaderboard. Each
    tick reads the workload partitions that exist then. A stage does not wait for the one
    before: leave time between them, or keep the automation sensors on, which request each
    stage when its inputs really changed (an unchanged split never retrains).
    """

    def weekly(stage: str, cron: str, job, partitions_of: Callable[[list[str]], list], what: str):
        @dg.schedule(
            name=f"weekly_{stage}",
            cron_schedule=cron,
            execution_timezone=timezone,
            job=job,
            default_status=default_status,
            description=f"{what}, weekly (off by default).",
        )
        def _schedule(context: dg.ScheduleEvaluationContext):
            workloads = _workloads(context)
            if not workloads:
                return dg.SkipReason("no workload partitions yet")
            return list(_requests(context, partitions_of(workloads), stage))

        return _schedule

    def every_candidate(workloads: list[str]) -> list:
        return [
            candidate_workload_key(candidate, workload)
            for workload in workloads
            for candidate in candidate_partitions.get_partition_keys()
        ]

    return [
        weekly("curate_and_split", curate_cron, curate_and_split_job, list, "Every workload's dataset + splits"),
        weekly(
            "train_and_evaluate",
            train_cron,
            train_and_evaluate_job,
            every_candidate,
            "Every candidate x workload adapter and evaluations",
        ),
        weekly("leaderboard", report_cron, report_job, list, "Every workload's leaderboard"),
    ]
