"""The slices of the flywheel's data: day, workload and candidate.

Dagster orders a multi-partition's dimensions by name, whatever the order they are given
in, so keys read `<day>|<workload>` and `<candidate>|<workload>`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from flywheel_assets.core.candidates import load_models
from flywheel_assets.settings import load_settings

# Workload ids come from traffic; keys are made safe by partitions.keys.workload_key.
workload_partitions = dg.DynamicPartitionsDefinition(name="workload")

# end_offset=1: today's partition exists, so fresh traffic can be ingested the same day.
day_partitions = dg.DailyPartitionsDefinition(start_date=load_settings().start_date.isoformat(), end_offset=1)

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


def trace_partition_boxes(
    partitions: Iterable[tuple[str, str]], workload_order: Sequence[str]
) -> list[list[tuple[str, str]]]:
    """These `(day, workload key)` partitions grouped into as few key ranges as possible,
    each ordered so that its first and last partitions name the range.

    Dagster reads a multi-partition key range as a box: every day from the first key's to
    the last key's, times every workload from the first key's to the last key's in the order
    the workload partitions were added (`workload_order`; workloads about to be added come
    last). Each day's workloads are cut into runs of neighbours in that order, and the same
    run on consecutive days becomes one box: a dropped week of every workload is one range,
    and no range covers a partition that was not asked for."""
    column = {workload: i for i, workload in enumerate(workload_order)}
    by_day: dict[dt.date, list[int]] = {}
    for day, workload in partitions:
        by_day.setdefault(dt.date.fromisoformat(day), []).append(column[workload])
    segments = []  # (first workload, last workload, day)
    for day, columns in by_day.items():
        columns = sorted(set(columns))
        start = columns[0]
        for previous, current in zip(columns, columns[1:] + [None]):
            if current is None or current != previous + 1:
                segments.append((start, previous, day))
                start = current
    boxes: list[tuple[int, int, dt.date, dt.date]] = []
    for first, last, day in sorted(segments):
        if boxes and boxes[-1][:2] == (first, last) and boxes[-1][3] + dt.timedelta(days=1) == day:
            boxes[-1] = (first, last, boxes[-1][2], day)
        else:
            boxes.append((first, last, day, day))
    return [
        [
            ((start + dt.timedelta(days=d)).isoformat(), workload_order[w])
            for d in range((end - start).days + 1)
            for w in range(first, last + 1)
        ]
        for first, last, start, end in sorted(boxes, key=lambda box: (box[2], box[0]))
    ]


def trace_range_tags(box: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The run tags that make a run cover one box of `trace_partition_boxes`."""
    first, last = (str(trace_partition_key(*partition)) for partition in (box[0], box[-1]))
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
