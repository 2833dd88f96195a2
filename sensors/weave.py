"""Weave-polling sensor: new calls of a W&B Weave project -> landed traces + `raw_traces` runs.

One tick:
1. reads the calls that ended after the cursor (`WeaveTraceSource.poll`: server-side filter
   `ended_at >= <cursor's second>`, `started_at` bounded by the look-back, keyset-paged, so
   the cost follows the new traffic);
2. writes them as ONE JSONL file named after the cursor the tick started from,
   `<traces_dir>/weave/<entity>__<project>-<cursor key>.jsonl` (temp file + fsync +
   rename), and lands that file only (`FileTraceSource.land([path])`: the same
   validation / quarantine / landing as dropped files);
3. registers new workload partitions and requests one `ingest` run per day x workload
   partition that received records, and returns the advanced cursor.

Failure and retry: an error from the server (after the binding's retries) fails the tick
before anything is written, so the cursor stays and the next tick reads the same calls.
If a tick dies after writing its file but before Dagster saves the cursor, the next tick
starts from the same cursor, so it rewrites the same file (a superset) and landing
replaces that file's old landing: the same call is never landed twice.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from flywheel_assets.jobs import ingest_job
from partitions.slices import workload_partitions
from resources.traces import FileTraceSource
from resources.weave_source import WeaveCursor, WeaveTraceSource, write_jsonl_atomic
from sensors.drop_folder import ingest_requests


def poll_weave(
    context: dg.SensorEvaluationContext,
    weave_source: WeaveTraceSource,
    trace_source: FileTraceSource,
    now: dt.datetime | None = None,
) -> dg.SensorResult | dg.SkipReason:
    cursor = WeaveCursor.parse(context.cursor)
    poll = weave_source.poll(cursor, now=now)
    summary = (
        f"{poll.calls_read} calls read in {poll.requests} requests, {len(poll.records)} new, "
        f"{len(poll.cursor.pending)} OpenAI calls waiting for their parent calls"
        + (" (max_calls_per_tick reached: more next tick)" if poll.truncated else "")
    )
    if not poll.records:
        if poll.cursor == cursor:
            return dg.SkipReason(f"no new Weave calls ({summary})")
        return dg.SensorResult(skip_reason=f"no finished new Weave calls ({summary})", cursor=poll.cursor.to_json())
    path = write_jsonl_atomic(weave_source.window_file(trace_source.traces_dir, cursor), poll.records)
    landed = trace_source.land([path])
    known = context.instance.get_dynamic_partitions(workload_partitions.name)
    requests = ingest_requests(landed, known, trigger="weave")
    context.log.info(f"{summary}; wrote {path.name}; {requests.summary()}")
    return requests.sensor_result(poll.cursor.to_json())


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Reads new calls of the W&B Weave project (WANDB_ENTITY/WANDB_PROJECT), lands "
    "them as traces and ingests the day x workload partitions they touch.",
)
def weave_trace_sensor(
    context: dg.SensorEvaluationContext, weave_source: WeaveTraceSource, trace_source: FileTraceSource
):
    return poll_weave(context, weave_source, trace_source)
