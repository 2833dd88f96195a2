"""Serving-engine telemetry: a Prometheus server's HTTP API, or the engines' own `/metrics`.

Off unless `FLYWHEEL_TELEMETRY_URL` is set (read with the other FLYWHEEL_TELEMETRY_*
variables in `flywheel_assets/settings.py`). Two kinds of source:

- `prometheus` (the usual Kubernetes setup, Prometheus scraping the serving pods): one
  `GET /api/v1/query_range` per collection for every metric name the engine table knows
  (`{__name__=~"..."}`), from where the last collection ended, at most `max_window_s` at a
  time, so a collection that failed is simply asked for again;
- `metrics`: each URL's exposition text, scraped now and parsed with `prometheus_client`'s
  parser (comma-separated URLs: e.g. a vLLM pod and a DCGM exporter).

Collected samples are filed by UTC day under `store_dir` (one Parquet part per collection,
written atomically; a part's name comes from its window, so collecting the same window
again replaces it instead of adding a duplicate). `serving_telemetry` [day] summarises a
day's parts (flywheel_assets/core/telemetry.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import httpx
import polars as pl
from pydantic import Field

from flywheel_assets.core.telemetry import (
    ENGINE_METRICS,
    SAMPLE_SCHEMA,
    TelemetryError,
    check_engines,
    parse_exposition,
    sample_rows,
    samples_frame,
)
from flywheel_assets.settings import DEFAULT_TELEMETRY_KIND, TelemetryKind
from resources.datasets import write_parquet_atomically
from resources.http import Retryable, RetryPolicy, retry


class Collected(NamedTuple):
    samples: pl.DataFrame
    until: float  # epoch seconds the collection covers up to; the sensor's next start


class TelemetrySource(dg.ConfigurableResource):
    """Where serving telemetry comes from; `url` empty: telemetry is off."""

    url: str = Field(default="", description="Prometheus base URL, or comma-separated /metrics URLs.")
    kind: TelemetryKind = DEFAULT_TELEMETRY_KIND
    engines: list[str] = Field(default_factory=list, description="Engines to read (vllm, nim, tgi, dcgm); empty: all.")
    default_model: str | None = Field(
        default=None, description="Served model of series without a model label (TGI, DCGM)."
    )
    store_dir: str = Field(description="Where collected samples are filed by day.")
    timeout_s: float = 10.0
    step_s: float = Field(default=15.0, gt=0, description="prometheus: query_range resolution.")
    max_window_s: float = Field(default=3600.0, gt=0, description="prometheus: the most one collection asks for.")
    max_retries: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.url.strip())

    def collect(self, since: float | None, now: float) -> Collected:
        """Samples from `since` (prometheus; default: the start of today) up to `now`."""
        check_engines(self.engines)
        with httpx.Client(timeout=self.timeout_s) as client:
            if self.kind == "prometheus":
                start = since if since is not None else _day_start(now)
                end = min(now, start + self.max_window_s)
                return Collected(self._query_range(client, start, end), end)
            frames = [self._scrape(client, url.strip(), now) for url in self.url.split(",") if url.strip()]
            return Collected(pl.concat(frames), now)

    def _get(self, client: httpx.Client, url: str, params: dict | None = None) -> httpx.Response:
        def attempt() -> httpx.Response:
            try:
                response = client.get(url, params=params)
            except httpx.HTTPError as err:  # connection refused, timeout
                raise Retryable(f"{type(err).__name__}: {err}") from None
            if response.status_code in (429, 502, 503, 504):
                raise Retryable(
                    f"HTTP {response.status_code}", status_code=response.status_code, detail=_describe(response)
                )
            return response

        def give_up(failure: Retryable, attempts: str) -> TelemetryError:
            return TelemetryError(
                f"{url}: no answer after {attempts} ({failure}{': ' + failure.detail if failure.detail else ''}); "
                "check that the server is up and FLYWHEEL_TELEMETRY_URL points at it"
            )

        return retry(
            attempt, RetryPolicy(max_retries=self.max_retries, backoff_s=0.2, max_backoff_s=2.0), give_up=give_up
        )

    def _scrape(self, client: httpx.Client, url: str, now: float) -> pl.DataFrame:
        response = self._get(client, url)
        if response.status_code != 200:
            raise TelemetryError(
                f"{url}: HTTP {response.status_code} {response.text[:200]!r}; "
                "point FLYWHEEL_TELEMETRY_URL at the engine's metrics endpoint"
            )
        return parse_exposition(
            response.text, scraped_at=now, instance=url, engines=self.engines or None, default_model=self.default_model
        )

    def _query_range(self, client: httpx.Client, start: float, end: float) -> pl.DataFrame:
        names = sorted(
            {
                _series_name(name, metrics[0].kind)
                for name, metrics in ENGINE_METRICS.items()
                if not self.engines or any(m.engine in self.engines for m in metrics)
            }
        )
        query = f'{{__name__=~"{"|".join(names)}"}}'
        url = f"{self.url.rstrip('/')}/api/v1/query_range"
        response = self._get(client, url, {"query": query, "start": start, "end": end, "step": self.step_s})
        try:
            body = response.json()
        except ValueError:
            raise TelemetryError(
                f"{url}: HTTP {response.status_code}, not a Prometheus API answer "
                f"({response.text[:200]!r}); is FLYWHEEL_TELEMETRY_URL the Prometheus base URL?"
            ) from None
        if body.get("status") != "success":
            raise TelemetryError(f"{url}: {_describe(response)} (HTTP {response.status_code})")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise TelemetryError(f"{url}: expected a matrix result, got {data.get('resultType')!r}")
        rows: list[tuple] = []
        for series in data.get("result", []):
            labels = dict(series.get("metric", {}))
            name = labels.pop("__name__", "")
            points = [(float(t), float(v)) for t, v in series.get("values", [])]
            rows += sample_rows(
                name,
                labels,
                points,
                engines=self.engines or None,
                default_model=self.default_model,
                instance=labels.get("instance", ""),
            )
        return samples_frame(rows)

    # --- the store -------------------------------------------------------------------
    def write(self, collected: Collected, part: str) -> list[str]:
        """File the samples by UTC day as `<day>/<part>.parquet`; the days written."""
        samples = collected.samples.with_columns(
            day=pl.from_epoch(pl.col("timestamp"), time_unit="s").dt.date().cast(pl.String)
        )
        days = sorted(samples.get_column("day").unique().to_list())
        for day in days:
            path = Path(self.store_dir, day, f"{part}.parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet_atomically(samples.filter(pl.col("day") == day).drop("day"), path)
        return days

    def read_day(self, day: str) -> pl.DataFrame:
        parts = sorted(Path(self.store_dir, day).glob("*.parquet"))
        if not parts:
            return pl.DataFrame(schema=SAMPLE_SCHEMA)
        return pl.concat([pl.read_parquet(p) for p in parts]).unique(maintain_order=True)


def _describe(response: httpx.Response) -> str:
    """Prometheus' error (`{"status": "error", "errorType", "error"}`), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return repr(response.text[:200])
    if isinstance(body, dict) and body.get("status") == "error":
        return f"Prometheus answered {body.get('errorType')}: {body.get('error')}"
    return repr(response.text[:200])


def _series_name(name: str, kind: str) -> str:
    """The name Prometheus stores: counters as exposed (`_total`), histograms by bucket."""
    if name.endswith("_sum") or kind == "gauge":
        return name
    if kind == "histogram":
        return f"{name}_bucket"
    return name if name.startswith("tgi_") else f"{name}_total"


def _day_start(now: float) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()
