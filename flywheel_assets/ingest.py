"""Stage `ingest`: production traces -> validated `raw_traces` [day x workload]."""

import dagster as dg

from flywheel_assets.core.ingest import read_partition, read_unattributed
from flywheel_assets.metadata import column_hash, counts_table, table
from partitions.defs import trace_partitions
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
)
def raw_traces(context: dg.AssetExecutionContext, trace_source: FileTraceSource):
    day = context.partition_key.keys_by_dimension["day"]
    key = context.partition_key.keys_by_dimension["workload"]
    landed = trace_source.land()
    newly = sum(r.landed for r in landed)
    context.log.info(f"{len(landed)} source files, {newly} landed now; reading {day} x {key}")
    valid, quarantined = read_partition(trace_source.landing_path, day, key)
    reasons = dict(quarantined.group_by("reason").len().sort("reason").iter_rows())
    workload_ids = valid.get_column("workload_id").unique().to_list()
    unattributed = read_unattributed(trace_source.landing_path).height
    yield dg.Output(
        valid,
        output_name="raw_traces",
        data_version=dg.DataVersion(column_hash(valid)),
        metadata={
            "dagster/row_count": valid.height,
            "workload_id": ", ".join(workload_ids) or "(no records)",
            "quarantined": quarantined.height,
            "source_files": len(landed),
            "unattributed_quarantined_all_files": dg.MetadataValue.int(unattributed),
            "preview": table(valid.select("timestamp", "client_id", "user_key", "has_tool_calls")),
        },
    )
    yield dg.Output(
        quarantined,
        output_name="quarantined_traces",
        data_version=dg.DataVersion(column_hash(quarantined, "source")),
        metadata={
            "dagster/row_count": quarantined.height,
            "by_reason": counts_table(reasons),
            **{f"quarantined_{reason}": n for reason, n in reasons.items()},
        },
    )
