"""Serving-engine telemetry in one schema, per served model (no Dagster, no HTTP).

Engines name the same figures differently. `ENGINE_METRICS` maps the documented names of
vLLM, NVIDIA NIM for LLMs (vLLM's names without the `vllm:` prefix), Hugging Face TGI and
the NVIDIA DCGM exporter onto one set of fields (README, "Serving-engine telemetry", says
which versions were checked). Samples, from an engine's `/metrics` text or a Prometheus
range query alike, become rows of SAMPLE_SCHEMA; `summarize` turns a day of them into one
row per served model (TELEMETRY_SCHEMA):

- counters -> increases and rates, a counter that went down (an engine restart) counting
  from zero again, so no increase is ever negative (Prometheus' `increase`, without its
  extrapolation);
- histograms -> quantiles from the buckets' increases, interpolated linearly inside a
  bucket as Prometheus' `histogram_quantile` does;
- gauges -> mean and max of the samples.

A series is keyed to a served model by its `model_name` label (vLLM, NIM) or `model`
label; engines without one (TGI, DCGM) get the `default_model` the caller names, else
their instance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

Kind = Literal["counter", "gauge", "histogram"]


class TelemetryError(ValueError):
    """Telemetry that cannot be read; the message says what to check."""


class EngineMetric(NamedTuple):
    engine: str
    field: str
    kind: Kind
    scale: float = 1.0
    where: tuple[tuple[str, str], ...] = ()  # only series with these label values


def _vllm_style(prefix: str, engine: str, kv_cache: tuple[str, ...]) -> dict[str, list[EngineMetric]]:
    table = {
        f"{prefix}e2e_request_latency_seconds": [EngineMetric(engine, "e2e_latency_s", "histogram")],
        f"{prefix}time_to_first_token_seconds": [EngineMetric(engine, "ttft_s", "histogram")],
        f"{prefix}num_requests_running": [EngineMetric(engine, "requests_running", "gauge")],
        f"{prefix}num_requests_waiting": [EngineMetric(engine, "requests_waiting", "gauge")],
        f"{prefix}prompt_tokens": [EngineMetric(engine, "prompt_tokens", "counter")],
        f"{prefix}generation_tokens": [EngineMetric(engine, "generation_tokens", "counter")],
        f"{prefix}request_success": [
            EngineMetric(engine, "requests", "counter"),
            EngineMetric(engine, "failed_requests", "counter", where=(("finished_reason", "abort"),)),
        ],
    }
    for name in kv_cache:
        table[f"{prefix}{name}"] = [EngineMetric(engine, "kv_cache_usage", "gauge")]
    return table


# metric family name (counters without `_total`) -> the fields it feeds
ENGINE_METRICS: dict[str, list[EngineMetric]] = {
    # vLLM v1 (vllm/v1/metrics/loggers.py); gpu_cache_usage_perc is the pre-0.9 name of the KV-cache gauge
    **_vllm_style("vllm:", "vllm", ("kv_cache_usage_perc", "gpu_cache_usage_perc")),
    # NIM for LLMs (docs "Observability": the same names, unprefixed, label model_name)
    **_vllm_style("", "nim", ("gpu_cache_usage_perc",)),
    # TGI (docs/source/reference/metrics.md); one model per server, no model label
    "tgi_request_duration": [EngineMetric("tgi", "e2e_latency_s", "histogram")],
    "tgi_queue_size": [EngineMetric("tgi", "requests_waiting", "gauge")],
    "tgi_batch_current_size": [EngineMetric("tgi", "requests_running", "gauge")],
    "tgi_request_count": [EngineMetric("tgi", "requests", "counter")],
    "tgi_request_failure": [EngineMetric("tgi", "failed_requests", "counter")],
    # per-request token histograms: their _sum grows like a token counter
    "tgi_request_input_length_sum": [EngineMetric("tgi", "prompt_tokens", "counter")],
    "tgi_request_generated_tokens_sum": [EngineMetric("tgi", "generation_tokens", "counter")],
    # DCGM exporter (etc/default-counters.csv): utilisation in %, framebuffer in MiB
    "DCGM_FI_DEV_GPU_UTIL": [EngineMetric("dcgm", "gpu_utilization", "gauge", scale=0.01)],
    "DCGM_FI_DEV_FB_USED": [EngineMetric("dcgm", "gpu_memory_used_bytes", "gauge", scale=2.0**20)],
}
ENGINES = sorted({m.engine for metrics in ENGINE_METRICS.values() for m in metrics})
MODEL_LABELS = ("model_name", "model")

SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "engine": pl.String,
    "field": pl.String,
    "kind": pl.String,
    "model": pl.String,
    "series": pl.String,  # every label but `le`, sorted: one counter's history
    "le": pl.Float64,  # histogram bucket bound; null for counters and gauges
    "timestamp": pl.Float64,  # epoch seconds
    "value": pl.Float64,
}

QUANTILES = (0.5, 0.95, 0.99)
TELEMETRY_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String,
    "engines": pl.String,
    "first_sample": pl.Float64,
    "last_sample": pl.Float64,
    "requests": pl.Float64,
    "request_rate_per_s": pl.Float64,
    "failed_requests": pl.Float64,
    "error_rate": pl.Float64,
    **{f"e2e_latency_p{round(q * 100)}_s": pl.Float64 for q in QUANTILES},
    **{f"ttft_p{round(q * 100)}_s": pl.Float64 for q in QUANTILES},
    "prompt_tokens_per_s": pl.Float64,
    "generation_tokens_per_s": pl.Float64,
    "requests_running_mean": pl.Float64,
    "requests_running_max": pl.Float64,
    "requests_waiting_mean": pl.Float64,
    "requests_waiting_max": pl.Float64,
    "kv_cache_usage_mean": pl.Float64,
    "kv_cache_usage_max": pl.Float64,
    "gpu_utilization_mean": pl.Float64,
    "gpu_memory_used_bytes_max": pl.Float64,
}


def check_engines(engines: Iterable[str]) -> list[str]:
    engines = list(engines)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise TelemetryError(f"unknown serving engine(s) {unknown}: known engines are {', '.join(ENGINES)}")
    return engines


def _lookup(name: str) -> list[EngineMetric]:
    # counters: `_total` in the text format (prometheus_client adds it even where TGI leaves it
    # out), bare in Prometheus' series names; histograms: _bucket / _sum / _count
    if name in ENGINE_METRICS:
        return ENGINE_METRICS[name]
    for suffix in ("_total", "_bucket"):
        if name.endswith(suffix) and name.removesuffix(suffix) in ENGINE_METRICS:
            return ENGINE_METRICS[name.removesuffix(suffix)]
    return []


def sample_rows(
    name: str,
    labels: Mapping[str, str],
    points: Iterable[tuple[float, float]],
    *,
    engines: Iterable[str] | None = None,
    default_model: str | None = None,
    instance: str = "",
) -> list[tuple]:
    """Rows of SAMPLE_SCHEMA for one series (`name` as exposed or stored by Prometheus)."""
    rows = []
    allowed = set(engines) if engines else None
    for metric in _lookup(name):
        if allowed is not None and metric.engine not in allowed:
            continue
        if metric.kind == "histogram" and not name.endswith("_bucket"):
            continue  # quantiles need the buckets only
        if any(labels.get(k) != v for k, v in metric.where):
            continue
        model = (
            next((labels[k] for k in MODEL_LABELS if labels.get(k)), None)
            or default_model
            or (f"instance:{labels.get('instance') or instance}")
        )
        le = _bucket_bound(labels["le"]) if metric.kind == "histogram" else None
        series = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("le", "__name__"))
        series = f"{instance}|{name.removesuffix('_bucket')}|{series}"
        for timestamp, value in points:
            if not math.isnan(value):
                rows.append(
                    (metric.engine, metric.field, metric.kind, model, series, le, timestamp, value * metric.scale)
                )
    return rows


def _bucket_bound(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        raise TelemetryError(f"histogram bucket bound le={le!r} is not a number") from None


def parse_exposition(
    text: str,
    *,
    scraped_at: float,
    instance: str,
    engines: Iterable[str] | None = None,
    default_model: str | None = None,
) -> pl.DataFrame:
    """An engine's `/metrics` text (Prometheus text format) as samples; raises TelemetryError
    on text that does not parse or that holds none of the engines' metrics."""
    rows: list[tuple] = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                at = sample.timestamp if sample.timestamp is not None else scraped_at
                rows += sample_rows(
                    sample.name,
                    sample.labels,
                    [(float(at), float(sample.value))],
                    engines=engines,
                    default_model=default_model,
                    instance=instance,
                )
    except (ValueError, TypeError, IndexError) as err:
        if isinstance(err, TelemetryError):
            raise
        raise TelemetryError(
            f"{instance}: the metrics text does not parse as Prometheus exposition format ({err}); "
            "point the URL at the engine's metrics endpoint (vLLM/TGI: /metrics, NIM: /v1/metrics)"
        ) from None
    if not rows:
        raise TelemetryError(
            f"{instance}: none of the known metrics of {', '.join(engines or ENGINES)} are there; is it "
            "a vLLM, NIM, TGI or DCGM exporter metrics endpoint (and the engine list right)?"
        )
    return samples_frame(rows)


def samples_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA, orient="row")


def summarize(samples: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per served model of TELEMETRY_SCHEMA from its samples (e.g. a day)."""
    samples = samples.lazy().sort("field", "series", "le", "timestamp", nulls_last=True)
    increases = (
        samples.filter(pl.col("kind") != "gauge")
        .with_columns(previous=pl.col("value").shift(1).over("field", "series", "le"))
        .with_columns(_increase().alias("increase"))
    )
    counters = (
        increases.filter(pl.col("kind") == "counter").group_by("model", "field").agg(pl.col("increase").sum()).collect()
    )
    buckets = (
        increases.filter(pl.col("kind") == "histogram")
        .group_by("model", "field", "le")
        .agg(pl.col("increase").sum())
        .collect()
    )
    gauges = (
        samples.filter(pl.col("kind") == "gauge")
        .group_by("model", "field")
        .agg(pl.col("value").mean().alias("mean"), pl.col("value").max().alias("max"))
        .collect()
    )
    spans = (
        samples.group_by("model")
        .agg(
            pl.col("engine").unique().sort().str.join(",").alias("engines"),
            pl.col("timestamp").min().alias("first_sample"),
            pl.col("timestamp").max().alias("last_sample"),
        )
        .collect()
    )
    rows = []
    for span in spans.iter_rows(named=True):
        model = span["model"]
        row = dict.fromkeys(TELEMETRY_SCHEMA) | span
        window = span["last_sample"] - span["first_sample"]
        total = _value(counters, model, "requests", "increase")
        failed = _value(counters, model, "failed_requests", "increase")
        row |= {
            "requests": total,
            "failed_requests": failed,
            "request_rate_per_s": _per_s(total, window),
            "error_rate": failed / total if total and failed is not None else None,
            "prompt_tokens_per_s": _per_s(_value(counters, model, "prompt_tokens", "increase"), window),
            "generation_tokens_per_s": _per_s(_value(counters, model, "generation_tokens", "increase"), window),
        }
        for field, prefix in (("e2e_latency_s", "e2e_latency"), ("ttft_s", "ttft")):
            cumulative = buckets.filter((pl.col("model") == model) & (pl.col("field") == field)).sort("le")
            for q in QUANTILES:
                row[f"{prefix}_p{round(q * 100)}_s"] = histogram_quantile(
                    q, cumulative.get_column("le").to_list(), cumulative.get_column("increase").to_list()
                )
        for field in ("requests_running", "requests_waiting", "kv_cache_usage"):
            row[f"{field}_mean"] = _value(gauges, model, field, "mean")
            row[f"{field}_max"] = _value(gauges, model, field, "max")
        row["gpu_utilization_mean"] = _value(gauges, model, "gpu_utilization", "mean")
        row["gpu_memory_used_bytes_max"] = _value(gauges, model, "gpu_memory_used_bytes", "max")
        rows.append(row)
    return pl.DataFrame(rows, schema=TELEMETRY_SCHEMA).sort("model")


def _increase() -> pl.Expr:
    """Per series: how much a cumulative value grew since its previous sample; after a
    reset (the value went down: the engine restarted) it grew from zero to the value."""
    previous = pl.col("previous")  # the series' sample before, by time
    return (
        pl.when(previous.is_null())
        .then(0.0)
        .when(pl.col("value") >= previous)
        .then(pl.col("value") - previous)
        .otherwise(pl.col("value"))
    )


def _value(frame: pl.DataFrame, model: str, field: str, column: str) -> float | None:
    match = frame.filter((pl.col("model") == model) & (pl.col("field") == field))
    return float(match.item(0, column)) if match.height else None


def _per_s(amount: float | None, window_s: float) -> float | None:
    return amount / window_s if amount is not None and window_s > 0 else None


def histogram_quantile(q: float, bounds: list[float], counts: list[float]) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative bucket counts (`le` ascending, the
    last +Inf): linear inside the bucket holding the rank; the highest finite bound when
    the rank falls in +Inf; None without observations."""
    if not bounds or not counts or counts[-1] <= 0 or not math.isinf(bounds[-1]):
        return None
    rank = q * counts[-1]
    for i, (bound, count) in enumerate(zip(bounds, counts)):
        if count >= rank:
            if math.isinf(bound):
                return bounds[i - 1] if i > 0 else None
            lower = bounds[i - 1] if i > 0 else 0.0
            below = counts[i - 1] if i > 0 else 0.0
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
    return None
