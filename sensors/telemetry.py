"""Serving-telemetry sensor: keeps today's `serving_telemetry` partition current.

One tick collects the samples since the cursor (`TelemetrySource.collect`: a Prometheus
range query from where the last tick ended, or a scrape of each engine's `/metrics`), files
them by day, and requests a `serving_telemetry` run for every day they touched (run key:
the day and the window's end, so a repeated tick asks for nothing new). The cursor is the
end of the collected window.

Failure: an unreachable server, a Prometheus error or timeout, text that does not parse,
an unknown engine fail the tick with the error before anything is written; Dagster keeps
the cursor of a failed tick, so the next tick asks for the same window and nothing is lost.
"""

from __future__ import annotations

import time

import dagster as dg

from flywheel_assets.jobs import serving_telemetry_job
from resources.telemetry import TelemetrySource


def collect_telemetry(
    context: dg.SensorEvaluationContext, telemetry: TelemetrySource, now: float | None = None
) -> dg.SensorResult | dg.SkipReason:
    if not telemetry.enabled:
        return dg.SkipReason("serving telemetry is off: set FLYWHEEL_TELEMETRY_URL (README, Serving-engine telemetry)")
    since = float(context.cursor) if context.cursor else None
    collected = telemetry.collect(since, time.time() if now is None else now)
    until = f"{collected.until:.3f}"
    if collected.samples.is_empty():
        return dg.SensorResult(skip_reason=f"no samples up to {until}", cursor=until)
    days = telemetry.write(collected, part=f"{since or 0:.3f}-{until}")
    context.log.info(
        f"{collected.samples.height} samples of {collected.samples.get_column('model').n_unique()} "
        f"models filed for {', '.join(days)}"
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=day, run_key=f"{day}:{until}") for day in days],
        cursor=until,
    )


@dg.sensor(
    job=serving_telemetry_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Collects serving-engine telemetry (FLYWHEEL_TELEMETRY_URL: Prometheus or the engines' "
    "/metrics) and refreshes the day's serving_telemetry partition.",
)
def serving_telemetry_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource):
    return collect_telemetry(context, telemetry)
