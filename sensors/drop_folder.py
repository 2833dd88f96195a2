"""Drop-folder sensor: new or changed trace files -> new workloads + `raw_traces` runs.

Landing is idempotent (a file is landed once per fingerprint), so a repeated tick finds
nothing new and requests nothing; a tick's cost is a `stat` per file plus the new data.
"""

from __future__ import annotations

import dagster as dg

from partitions.defs import trace_partition_key, workload_partitions
from resources.traces import FileTraceSource


@dg.sensor(
    asset_selection=dg.AssetSelection.assets("raw_traces", "quarantined_traces"),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Lands new trace files from the drop folder and ingests the partitions they touch.",
)
def drop_folder_sensor(context: dg.SensorEvaluationContext, trace_source: FileTraceSource):
    newly_landed = [r for r in trace_source.land() if r.landed]
    if not newly_landed:
        return dg.SkipReason("no new or changed trace files")
    known = set(context.instance.get_dynamic_partitions(workload_partitions.name))
    touched = sorted({p for r in newly_landed for p, c in r.partitions.items() if c["valid"] or c["quarantined"]})
    new_workloads = sorted({p.split("|")[1] for p in touched} - known - {"unattributed"})
    runs = [
        dg.RunRequest(
            partition_key=trace_partition_key(*partition.split("|")),
            tags={"flywheel/trigger": "drop_folder"},
        )
        for partition in touched
        if not partition.startswith("unattributed")
    ]
    context.log.info(f"{len(newly_landed)} files landed; {len(runs)} partitions; new workloads {new_workloads}")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[workload_partitions.build_add_request(new_workloads)] if new_workloads else [],
    )
