"""The slices of the flywheel's data: day, workload and candidate.

Multi-partition dimensions are ordered by name (dagster-facts.md #1), so keys read
`<day>|<workload>` and `<candidate>|<workload>`.
"""

from __future__ import annotations

import dagster as dg

from flywheel_assets.core.candidates import load_models
from flywheel_assets.settings import load_settings

# Workload ids come from traffic; keys are made safe by partitions.keys.workload_key.
workload_partitions = dg.DynamicPartitionsDefinition(name="workload")

# end_offset=1: today's partition exists, so fresh traffic can be ingested the same day.
day_partitions = dg.DailyPartitionsDefinition(
    start_date=load_settings().start_date.isoformat(), end_offset=1
)

trace_partitions = dg.MultiPartitionsDefinition({"day": day_partitions, "workload": workload_partitions})

# Candidate models come from configuration (FLYWHEEL_CANDIDATES); see core/candidates.py.
candidate_partitions = dg.StaticPartitionsDefinition([c.name for c in load_models().candidates])

candidate_workload_partitions = dg.MultiPartitionsDefinition(
    {"candidate": candidate_partitions, "workload": workload_partitions}
)

# A workload-level asset reads every day (or candidate) of its workload.
BY_WORKLOAD = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="workload")


def trace_partition_key(day: str, workload_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"day": day, "workload": workload_key})


def candidate_workload_key(candidate: str, workload_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"candidate": candidate, "workload": workload_key})
