"""Stage `curate`: all days of a workload -> one deduplicated, redacted `workload_dataset`."""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.ingest import TRACE_SCHEMA
from flywheel_assets.core.curation import DEDUP_KEY_DESCRIPTION, curate, lookback_days
from flywheel_assets.core.near_duplicates import DEFAULT_THRESHOLD
from flywheel_assets.metadata import column_hash, counts_table, table
from partitions.slices import BY_WORKLOAD, trace_partitions, workload_partitions
from resources.datasets import StoredAssets
from sensors.automation import refresh_when_data_changed


class CurationConfig(dg.Config):
    lookback_days: int = Field(
        default=30, ge=1, description="Days of traffic used, ending at the newest day with data."
    )
    redact_pii: bool = Field(default=True, description="Redact emails, phones, cards, SSNs, IPs.")
    feedback_filter: Literal["none", "exclude_negative", "positive_only"] = "none"
    min_records: int = Field(
        default=50, ge=1, description="Below this, the blocking check stops training."
    )
    near_duplicate_threshold: float = Field(
        default=DEFAULT_THRESHOLD, gt=0.0, le=1.0,
        description="Prompts whose word bigrams overlap at least this much (Jaccard) form a "
        "near-duplicate cluster, which the split keeps on one side.",
    )


@dg.asset(
    partitions_def=workload_partitions,
    # deps, not ins: loading through the mapping would ask for every day since the start
    # date (dagster-facts.md #3); the asset reads only the existing days of its window
    deps=[dg.AssetDep("raw_traces", partition_mapping=BY_WORKLOAD), dg.AssetDep("traffic_drift")],
    check_specs=[dg.AssetCheckSpec("has_min_records", asset="workload_dataset", blocking=True)],
    group_name="curate",
    kinds={"polars", "parquet"},
    code_version="3",  # near-duplicate clusters marked
    automation_condition=refresh_when_data_changed,
    description="One workload's traffic: deduplicated, classified, PII-redacted.",
)
def workload_dataset(
    context: dg.AssetExecutionContext,
    config: CurationConfig,
    stored_assets: StoredAssets,
):
    keys = materialized_days(context.instance, context.partition_key)
    days = lookback_days(list(keys), config.lookback_days)
    context.log.info(f"curating {len(days)} of {len(keys)} days: {days[:1]}..{days[-1:]}")
    # pinned: the lazy result is read again when the I/O manager stores it, and today's
    # raw_traces partition may be re-ingested meanwhile
    with stored_assets.pinned("raw_traces", [keys[day] for day in days]) as frames:
        traces = pl.concat(frames) if frames else pl.LazyFrame(schema=TRACE_SCHEMA)
        dataset, stats = curate(
            traces, feedback_filter=config.feedback_filter, redact=config.redact_pii,
            near_duplicate_threshold=config.near_duplicate_threshold,
        )
        redaction = "redacted" if config.redact_pii else "unredacted"
        ids_and_clusters = column_hash(stats.record_ids.to_frame()) + column_hash(
            stats.clusters.to_frame(), "near_duplicate_cluster"
        )
        clusters = stats.near_duplicate_clusters
        yield dg.Output(
            dataset,  # lazy: the I/O manager streams it to the store
            data_version=dg.DataVersion(f"{ids_and_clusters}-{redaction}"),
            metadata={
                "dagster/row_count": stats.records_out,
                "records_in": stats.records_in,
                "duplicates": stats.duplicates,
                "removed_by_feedback": stats.removed_by_feedback,
                "removed_without_tool_call": stats.removed_without_tool_call,
                "records_out": stats.records_out,
                "workload_type": stats.workload_type,
                "dedup_key": DEDUP_KEY_DESCRIPTION,
                "near_duplicate_threshold": config.near_duplicate_threshold,
                "near_duplicate_clusters": clusters.height,
                "records_in_near_duplicate_clusters": int(clusters.get_column("records").sum()),
                "largest_near_duplicate_clusters": table(
                    clusters.with_columns(pl.col("record_ids").list.join(", ")), max_rows=20
                ),
                "days": dg.MetadataValue.json(days),
                "redactions": counts_table(stats.redactions, key="pii_kind"),
                "preview": table(preview(dataset)),
            },
        )
    missing = config.min_records - stats.records_out
    yield dg.AssetCheckResult(
        check_name="has_min_records",
        passed=missing <= 0,
        description=(
            f"{stats.records_out} records after curation (minimum {config.min_records})"
            if missing <= 0
            else f"workload has {stats.records_out} records after curation, needs "
            f"{config.min_records}: collect {missing} more, widen lookback_days, or lower "
            "min_records"
        ),
        metadata={"records": stats.records_out, "min_records": config.min_records},
    )


def preview(dataset: pl.LazyFrame, rows: int = 5) -> pl.DataFrame:
    """The first records as a person reads them: the user's messages and the answer."""
    raw = pl.col("raw").str
    return dataset.head(rows).select(
        "record_id",
        "day",
        "workload_type",
        messages=raw.json_path_match("$.request.messages"),
        answer=raw.json_path_match("$.response.choices[0].message"),
    ).collect(engine="streaming")


def materialized_days(instance: dg.DagsterInstance, workload: str) -> dict[str, dg.MultiPartitionKey]:
    """day -> raw_traces partition key, for the days of `workload` that were ingested."""
    keys = (
        trace_partitions.get_partition_key_from_str(k)
        for k in instance.get_materialized_partitions(dg.AssetKey("raw_traces"))
    )
    return {k.keys_by_dimension["day"]: k for k in keys if k.keys_by_dimension["workload"] == workload}
