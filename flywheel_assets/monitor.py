"""Stage `monitor`: how the models serving production do, per served model and version.

`production_metrics` [day x workload] reads the same partition of `raw_traces` (and its
quarantined empty answers) and ties every served model to the promotion that approved it
(core/production_metrics.py). It runs in the `ingest` job, so every ingest (sensor,
backfill, `flywheel demo`) keeps it current with no run of its own.

`serving_telemetry` [day] summarises the serving engines' telemetry that
`serving_telemetry_sensor` collected for the day (core/telemetry.py), per served model.
"""

import hashlib

import dagster as dg
import polars as pl

from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.ingest import with_quality_columns
from flywheel_assets.core.production_metrics import (
    approvals,
    day_end,
    empty_answers_by_model,
    metrics_by_served_model,
)
from flywheel_assets.core.telemetry import summarize
from flywheel_assets.lineage import promotion_history
from flywheel_assets.metadata import table
from partitions.slices import BY_WORKLOAD, day_partitions, trace_partitions
from resources.datasets import StoredAssets
from resources.telemetry import TelemetrySource
from resources.tracking import ArtifactRequest, Tracker, artifact_name, latest_wandb_ref, wandb_metadata

SHOWN = (
    "served_model",
    "candidate",
    "promotion",
    "approved",
    "requests",
    "latency_p95_s",
    "thumbs_down_rate",
    "tool_call_schema_valid_rate",
    "empty_or_refused_rate",
    "estimated_cost_usd",
)


@dg.asset(
    partitions_def=trace_partitions,
    ins={"raw_traces": dg.AssetIn(), "quarantined_traces": dg.AssetIn()},
    # lineage to the promotion behind each served model; read from the instance, not loaded
    deps=[dg.AssetDep("promoted_model", partition_mapping=BY_WORKLOAD)],
    backfill_policy=dg.BackfillPolicy.single_run(),  # it runs with raw_traces in the ingest job
    group_name="monitor",
    kinds={"polars", "parquet"},
    code_version="1",
    description=(
        "Production figures of one day and workload per served model (latency quantiles, tokens, "
        "cost, feedback, tool-call validity, empty/refused answers), each tied to the promotion "
        "that approved the model; models no promotion approved are listed, never dropped."
    ),
)
def production_metrics(
    context: dg.AssetExecutionContext,
    raw_traces: dict[str, pl.LazyFrame],
    quarantined_traces: dict[str, pl.LazyFrame],
    tracker: Tracker,
) -> dg.Output[dict[str, pl.DataFrame]]:
    candidates = load_models().candidates
    histories: dict[str, list] = {}  # promotions per workload, read once per run
    frames = {
        partition: _measure_partition(
            context, partition, raw_traces[partition], quarantined_traces[partition], candidates, histories, tracker
        )
        for partition in context.partition_keys
    }
    _warn_unapproved(context, frames)
    return dg.Output(frames, data_version=dg.DataVersion(frames_digest(frames)))


def _warn_unapproved(context: dg.AssetExecutionContext, frames: dict[str, pl.DataFrame]) -> None:
    """One warning per run, not per partition: before a first promotion every day of every
    workload is served by a model no promotion approved (the incumbent production model)."""
    partitions_by_model: dict[str, list[str]] = {}
    for partition, frame in frames.items():
        for model in frame.filter(~pl.col("approved")).get_column("served_model"):
            partitions_by_model.setdefault(model, []).append(partition)
    for model, partitions in sorted(partitions_by_model.items()):
        context.log.warning(
            f"traffic served by {model}, which no promotion approved, in {len(partitions)} partition(s): "
            f"{partitions[0]}{' ...' if len(partitions) > 1 else ''} (flywheel-audit lists it)"
        )


def _measure_partition(
    context: dg.AssetExecutionContext,
    partition: str,
    raw: pl.LazyFrame,
    quarantined: pl.LazyFrame,
    candidates: list,
    histories: dict[str, list],
    tracker: Tracker,
) -> pl.DataFrame:
    """One day x workload's rows per served model, with its metadata (and W&B run)."""
    key = trace_partitions.get_partition_key_from_str(partition)
    day, workload = key.keys_by_dimension["day"], key.keys_by_dimension["workload"]
    history = histories.setdefault(workload, promotion_history(context.instance, workload))
    approved = approvals(history, day_end(day))
    frame = metrics_by_served_model(
        with_quality_columns(raw),  # a day stored before raw_traces had them (read alone)
        candidates=candidates,
        approved=approved,
        empty_answers=empty_answers_by_model(quarantined),
    )
    metadata = partition_metadata(frame)
    if tracker.enabled and approved:
        totals = frame.select(pl.col("requests").sum(), pl.col("estimated_cost_usd").sum()).row(0, named=True)
        metrics = {name: value for name, value in totals.items() if value is not None}
        metadata |= log_with_promoted_model(context, tracker, "production_metrics", partition, workload, frame, metrics)
    context.add_asset_metadata(metadata, partition_key=partition)
    return frame


def partition_metadata(frame: pl.DataFrame) -> dict:
    unapproved = frame.filter(~pl.col("approved"))
    return {
        "dagster/row_count": frame.height,
        "requests": int(frame.get_column("requests").sum()),
        "served_models": ", ".join(frame.get_column("served_model")) or "(no traffic)",
        "unapproved_models": ", ".join(unapproved.get_column("served_model")) or "none",
        "unapproved_requests": int(unapproved.get_column("requests").sum()),
        "promotions": ", ".join(sorted(set(frame.get_column("promotion").drop_nulls()))) or "none",
        "by_served_model": table(frame.select(SHOWN), max_rows=50),
    }


def log_with_promoted_model(
    context: dg.AssetExecutionContext,
    tracker: Tracker,
    asset: str,
    partition: str,
    workload: str,
    frame: pl.DataFrame,
    metrics: dict,
) -> dict:
    """A monitoring result in a W&B run that uses the workload's promoted model artifact, so
    W&B lineage runs from production back to the adapter, its dataset and its traces."""
    promoted = latest_wandb_ref(context.instance, "promoted_model", workload)
    ref = tracker.log(
        ArtifactRequest(
            name=artifact_name(asset, partition),
            type=asset.replace("_", "-"),
            asset=asset,
            partition=partition,
            dagster_run_id=context.run_id,
            dagster_job=context.job_name,
            tables={asset: frame},
            metrics=metrics,
            inputs=[promoted] if promoted else [],
        )
    )
    return wandb_metadata(ref) if ref else {}


def frames_digest(frames: dict[str, pl.DataFrame]) -> str:
    digest = hashlib.sha256()
    for partition in sorted(frames):
        digest.update(f"{partition}\n{frames[partition].write_csv()}".encode())
    return digest.hexdigest()[:16]


def stored_production_metrics(
    instance: dg.DagsterInstance, stored_assets: StoredAssets, workload: str, days: int
) -> dict[str, pl.DataFrame]:
    """The workload's `production_metrics` of its last `days` materialized days, by day."""
    materialized = instance.get_materialized_partitions(production_metrics.key)
    by_day = {}
    for partition in materialized:
        key = trace_partitions.get_partition_key_from_str(partition)
        if key.keys_by_dimension["workload"] == workload:
            by_day[key.keys_by_dimension["day"]] = key
    recent = sorted(by_day)[-days:] if days > 0 else []
    return {day: stored_assets.scan("production_metrics", by_day[day]).collect() for day in recent}


@dg.asset(
    partitions_def=day_partitions,
    group_name="monitor",
    kinds={"polars", "parquet", "prometheus"},
    code_version="1",
    description=(
        "Serving-engine telemetry of one day per served model (vLLM, NIM, TGI, DCGM in one schema): "
        "request rate, errors, latency and time-to-first-token quantiles, tokens/s, queue, KV cache, "
        "GPU. Kept current by serving_telemetry_sensor when FLYWHEEL_TELEMETRY_URL is set."
    ),
)
def serving_telemetry(context: dg.AssetExecutionContext, telemetry: TelemetrySource) -> dg.Output[pl.DataFrame]:
    samples = telemetry.read_day(context.partition_key)
    summary = summarize(samples)
    return dg.Output(
        summary,
        data_version=dg.DataVersion(frames_digest({context.partition_key: summary})),
        metadata=_telemetry_metadata(samples, summary),
    )


def _telemetry_metadata(samples: pl.DataFrame, summary: pl.DataFrame) -> dict:
    shown = summary.select(
        "model",
        "engines",
        "request_rate_per_s",
        "error_rate",
        "e2e_latency_p95_s",
        "ttft_p95_s",
        "generation_tokens_per_s",
        "requests_waiting_max",
        "kv_cache_usage_max",
    )
    return {
        "dagster/row_count": summary.height,
        "samples": samples.height,
        "models": ", ".join(summary.get_column("model")) or "(no telemetry collected for this day)",
        "engines": ", ".join(sorted(set(samples.get_column("engine")))) or "none",
        "by_model": table(shown, max_rows=50),
    }
