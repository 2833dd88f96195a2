"""Stage `curate`: all days of a workload -> one deduplicated, redacted `workload_dataset`."""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.curation import DEDUP_KEY_DESCRIPTION, CurationStats, curate, lookback_days
from flywheel_assets.core.ingest import stored_traces
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
    min_records: int = Field(default=50, ge=1, description="Below this, the blocking check stops training.")
    near_duplicate_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        gt=0.0,
        le=1.0,
        description="Prompts whose word bigrams overlap at least this much (Jaccard) form a "
        "near-duplicate cluster, which the split keeps on one side.",
    )

    def curate_options(self) -> dict:
        """`core.curation.curate`'s keyword arguments."""
        return {
            "feedback_filter": self.feedback_filter,
            "redact": self.redact_pii,
            "near_duplicate_threshold": self.near_duplicate_threshold,
        }


@dg.asset(
    partitions_def=workload_partitions,
    # deps, not ins: an input through the mapping loads every day of the workload before
    # the asset could filter (and a custom window mapping does not serialize); the asset
    # reads only the existing days of its window
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
        dataset, stats = curate(stored_traces(frames), **config.curate_options())
        yield dg.Output(
            dataset,  # lazy: the I/O manager streams it to the store
            data_version=dataset_version(stats, config.redact_pii),
            metadata=curation_metadata(dataset, stats, config, days),
        )
    yield min_records_check(stats.records_out, config.min_records)


def dataset_version(stats: CurationStats, redacted: bool) -> dg.DataVersion:
    """The records kept and their near-duplicate clusters, and whether PII was redacted."""
    ids_and_clusters = column_hash(stats.record_ids.to_frame()) + column_hash(
        stats.clusters.to_frame(), "near_duplicate_cluster"
    )
    return dg.DataVersion(f"{ids_and_clusters}-{'redacted' if redacted else 'unredacted'}")


def curation_metadata(dataset: pl.LazyFrame, stats: CurationStats, config: CurationConfig, days: list[str]) -> dict:
    clusters = stats.near_duplicate_clusters
    return {
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
    }


def min_records_check(records: int, min_records: int) -> dg.AssetCheckResult:
    missing = min_records - records
    return dg.AssetCheckResult(
        check_name="has_min_records",
        passed=missing <= 0,
        description=(
            f"{records} records after curation (minimum {min_records})"
            if missing <= 0
            else f"workload has {records} records after curation, needs "
            f"{min_records}: collect {missing} more, or widen lookback_days or lower "
            "min_records in workload_dataset's run config"
        ),
        metadata={"records": records, "min_records": min_records},
    )


def preview(dataset: pl.LazyFrame, rows: int = 5) -> pl.DataFrame:
    """The first records as a person reads them: the user's messages and the answer."""
    raw = pl.col("raw").str
    return (
        dataset.head(rows)
        .select(
            "record_id",
            "day",
            "workload_type",
            messages=raw.json_path_match("$.request.messages"),
            answer=raw.json_path_match("$.response.choices[0].message"),
        )
        .collect(engine="streaming")
    )


def materialized_days(instance: dg.DagsterInstance, workload: str) -> dict[str, dg.MultiPartitionKey]:
    """day -> raw_traces partition key, for the days of `workload` that were ingested."""
    keys = (
        trace_partitions.get_partition_key_from_str(k)
        for k in instance.get_materialized_partitions(dg.AssetKey("raw_traces"))
    )
    return {k.keys_by_dimension["day"]: k for k in keys if k.keys_by_dimension["workload"] == workload}
