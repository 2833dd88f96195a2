"""Stage `ingest`: production traces -> validated `raw_traces` [day x workload]."""

import dagster as dg
import polars as pl

from flywheel_assets.core.ingest import Landings
from flywheel_assets.metadata import counts_table, frames_hash, table
from partitions.slices import trace_partitions
from resources.traces import FileTraceSource


@dg.multi_asset(
    outs={
        "raw_traces": dg.AssetOut(
            description="Valid production traces of one day and workload, typed and filed.",
            group_name="ingest",
            kinds={"polars", "parquet"},
            code_version="2",  # the record kept as received (`raw`), typed columns beside it
        ),
        "quarantined_traces": dg.AssetOut(
            description="Records that failed validation, each with its reason and raw text.",
            group_name="ingest",
            kinds={"polars", "parquet"},
            code_version="1",
        ),
    },
    partitions_def=trace_partitions,
    # a dropped file's day x workload partitions land in one run (the sensor requests
    # contiguous ranges), not one Python process per partition
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def raw_traces(context: dg.AssetExecutionContext, trace_source: FileTraceSource):
    landings = trace_source.land_report()
    _log_landings(context, landings)
    unattributed = trace_source.read_unattributed().height
    frames = {
        partition: trace_source.read_partition(*_day_and_workload(partition)) for partition in context.partition_keys
    }
    for partition, (valid, quarantined) in frames.items():
        _record_partition(context, partition, valid, quarantined, landings, unattributed)
    # Dagster records one data version for every partition of a run: it hashes the content of
    # all of them, so an identical re-ingest keeps it and any change moves it
    for output, index, order in (("raw_traces", 0, "record_id"), ("quarantined_traces", 1, "source")):
        outputs = {partition: pair[index] for partition, pair in frames.items()}
        yield dg.Output(outputs, output_name=output, data_version=dg.DataVersion(frames_hash(outputs, order)))


def _day_and_workload(partition: str) -> tuple[str, str]:
    key = trace_partitions.get_partition_key_from_str(partition)
    return key.keys_by_dimension["day"], key.keys_by_dimension["workload"]


def _log_landings(context: dg.AssetExecutionContext, landings: Landings) -> None:
    landed = landings.results
    context.log.info(
        f"{len(landed)} source files, {sum(r.landed for r in landed)} landed now; "
        f"reading {len(context.partition_keys)} day x workload partitions"
    )
    for line in landings.log_lines():
        context.log.warning(line)


def _record_partition(
    context: dg.AssetExecutionContext,
    partition: str,
    valid: pl.DataFrame,
    quarantined: pl.DataFrame,
    landings: Landings,
    unattributed: int,
) -> None:
    """Log one partition's counts and record its metadata on both assets."""
    reasons = dict(quarantined.group_by("reason").len().sort("reason").iter_rows())
    context.log.info(f"{partition}: {valid.height} valid, {quarantined.height} quarantined {reasons or ''}")
    context.add_asset_metadata(
        {
            "dagster/row_count": valid.height,
            "workload_id": ", ".join(valid.get_column("workload_id").unique().to_list()) or "(no records)",
            "quarantined": quarantined.height,
            "source_files": len(landings.results),
            "unattributed_quarantined_all_files": dg.MetadataValue.int(unattributed),
            "preview": table(valid.select("timestamp", "client_id", "user_key", "has_tool_calls")),
            **files_not_landed(landings),
        },
        asset_key="raw_traces",
        partition_key=partition,
    )
    context.add_asset_metadata(
        {
            "dagster/row_count": quarantined.height,
            "by_reason": counts_table(reasons),
            **{f"quarantined_{reason}": n for reason, n in reasons.items()},
        },
        asset_key="quarantined_traces",
        partition_key=partition,
    )


def files_not_landed(landings: Landings) -> dict[str, dg.MetadataValue]:
    """Tables of the drop folder's files that were refused or failed to read (none: no
    entry), so that a partition missing a file's records says why."""
    rows = {
        "refused_files": ([(r.path, r.reason) for r in landings.refused], ["path", "reason"]),
        "failed_sources": ([(f.path, f.error, f.remedy) for f in landings.failed], ["path", "error", "remedy"]),
    }
    return {
        name: table(pl.DataFrame(values, schema=columns, orient="row"), max_rows=100, max_chars=300)
        for name, (values, columns) in rows.items()
        if values
    }
