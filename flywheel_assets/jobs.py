"""Every job of the flywheel, in one place. The stages as named jobs: what sensors,
schedules, backfills and the in-process runner launch, so that runs read `ingest`,
`curate_and_split`, ... in the UI; the telemetry refresh its sensor requests; and the
`promote` and `rollback` jobs a person launches.

Selections are by asset key, not by definition, so the assets' modules (and the sensors
they share conditions with) can import this one without a cycle.
"""

from __future__ import annotations

import dagster as dg

from partitions.slices import candidate_workload_partitions, day_partitions, trace_partitions, workload_partitions

ingest_job = dg.define_asset_job(
    "ingest",
    # production_metrics rides along: always current, no run of its own. Selected by key
    # prefix, which tolerates its absence: definitions without it (tests, a trimmed code
    # location) still resolve the job, where a selection by key fails
    selection=dg.AssetSelection.assets("raw_traces", "quarantined_traces")
    | dg.AssetSelection.key_prefixes("production_metrics"),
    partitions_def=trace_partitions,
    description="Validated raw_traces (+ quarantined_traces, production_metrics) of day x workload "
    "partitions; what the ingest sensors request and what `dagster job backfill -j ingest` backfills.",
)

curate_and_split_job = dg.define_asset_job(
    "curate_and_split",
    selection=dg.AssetSelection.assets("workload_dataset", "eval_dataset", "train_dataset"),
    partitions_def=workload_partitions,
    description="A workload's dataset and its eval/train splits.",
)

# Runs that do GPU work carry this tag; the run queue caps them with
# concurrency.runs.tag_concurrency_limits (deploy/dagster.yaml), the `gpu` pool caps their steps.
GPU_RUN_TAGS = {"flywheel/gpu": "true"}
GPU_ASSETS = dg.AssetSelection.assets("lora_adapter", "base_eval", "icl_eval", "customized_eval")

train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate",
    selection=GPU_ASSETS,
    partitions_def=candidate_workload_partitions,
    tags=GPU_RUN_TAGS,
    description="A candidate x workload's LoRA adapter and its three evaluations.",
)

report_job = dg.define_asset_job(
    "report",
    selection=dg.AssetSelection.assets("leaderboard"),
    partitions_def=workload_partitions,
    description="A workload's leaderboard.",
)

# named apart from the asset: a job and an op of one name collide in the repository
serving_telemetry_job = dg.define_asset_job(
    "refresh_serving_telemetry",
    selection=dg.AssetSelection.assets("serving_telemetry"),
    partitions_def=day_partitions,
    description="A day's serving-engine telemetry per served model (what serving_telemetry_sensor requests).",
)

# The only jobs that may materialize promoted_model (the asset refuses any other job).
PROMOTE_JOB, ROLLBACK_JOB = "promote", "rollback"


def _production_change_job(name: str, what: str) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name,
        selection=dg.AssetSelection.assets("promoted_model"),
        partitions_def=workload_partitions,
        tags={"flywheel/trigger": "human"},
        description=f"{what} for one workload (audited). Launch it by hand.",
    )


promote_job = _production_change_job(PROMOTE_JOB, "Put a leaderboard candidate in production")
rollback_job = _production_change_job(ROLLBACK_JOB, "Restore the promotion before the current one")
