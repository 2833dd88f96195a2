"""Serving-engine telemetry: engines' /metrics and a Prometheus API on loopback, the
resource, the sensor (cursor kept on failure) and the `serving_telemetry` asset."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import polars as pl
import pytest
from fake_prometheus import VLLM_LATENCY_BUCKETS, FakeEngine, FakePrometheus

from flywheel_assets.core.telemetry import (
    TelemetryError,
    histogram_quantile,
    parse_exposition,
    summarize,
)
from flywheel_assets.settings import SettingsError, load_settings
from resources.telemetry import TelemetrySource
from sensors.telemetry import collect_telemetry

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC).timestamp()
DAY = "2026-11-20"


def source(tmp_path, url: str, **kw) -> TelemetrySource:
    return TelemetrySource(url=url, store_dir=str(tmp_path / "telemetry"), timeout_s=kw.pop("timeout_s", 5.0), **kw)


def bucket_of(value: float, bounds: list[float]) -> tuple[float, float]:
    i = np.searchsorted(bounds, value)
    return (bounds[i - 1] if i else 0.0), bounds[i]


# ------------------------------------------------------------------------ quantiles
def test_histogram_quantiles_match_numpy_within_the_bucket():
    rng = np.random.default_rng(11)
    samples = rng.uniform(0, 10, size=20_000)
    bounds = [float(b) for b in np.linspace(0.25, 10, 40)] + [float("inf")]
    counts = [float((samples <= b).sum()) for b in bounds]
    for q in (0.5, 0.95, 0.99):
        # uniform inside each bucket: linear interpolation recovers numpy's quantile closely
        assert histogram_quantile(q, bounds, counts) == pytest.approx(np.quantile(samples, q), abs=0.05)
    assert histogram_quantile(0.5, bounds, [0.0] * len(bounds)) is None


def test_vllm_latency_quantiles_from_scrapes_fall_in_numpys_bucket(tmp_path):
    engine = FakeEngine("vllm", ["llama-1b-lora"])
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(0.5, 0.6, size=3000)
    with engine.running_server() as url:
        telemetry = source(tmp_path, url)
        frames = [telemetry.collect(None, NOW).samples]
        for latency in latencies:
            engine.serve("llama-1b-lora", float(latency))
        frames.append(telemetry.collect(None, NOW + 60).samples)
    row = summarize(pl.concat(frames)).row(0, named=True)
    bounds = VLLM_LATENCY_BUCKETS + [float("inf")]
    for q in (50, 95, 99):
        low, high = bucket_of(float(np.quantile(latencies, q / 100)), bounds)
        assert low <= row[f"e2e_latency_p{q}_s"] <= high
    assert row["requests"] == 3000 and row["request_rate_per_s"] == pytest.approx(3000 / 60)


# ------------------------------------------------------------------------ counters
@pytest.mark.parametrize("engine_name", ["vllm", "nim", "tgi"])
def test_counters_growing_between_scrapes_and_reset_once_never_give_a_negative_rate(tmp_path, engine_name):
    engine = FakeEngine(engine_name, ["m-1"])
    served_after_first_scrape = 0
    with engine.running_server() as url:
        telemetry = source(tmp_path, url, default_model="m-1" if engine_name == "tgi" else None)
        frames = []
        for scrape in range(6):
            if scrape == 4:
                # the engine restarted: its counters start from zero (and serve fewer requests before
                # the next scrape than before the restart, or no one could tell a restart happened)
                engine.restart()
            if scrape:
                for i in range(10 * scrape):
                    engine.serve(
                        "m-1",
                        0.4 + i / 100,
                        prompt_tokens=50,
                        generation_tokens=7,
                        finished_reason="abort" if i == 0 else "stop",
                    )
                    served_after_first_scrape += 1
            engine.set_load("m-1", running=scrape, waiting=2 * scrape)
            frames.append(telemetry.collect(None, NOW + 30 * scrape).samples)
    samples = pl.concat(frames)
    row = summarize(samples).row(0, named=True)
    assert row["model"] == "m-1"
    assert row["requests"] == served_after_first_scrape == 150
    assert row["failed_requests"] == 5 and row["error_rate"] == pytest.approx(5 / 150)
    assert row["prompt_tokens_per_s"] == pytest.approx(150 * 50 / 150)  # 150 s between first and last scrape
    assert row["generation_tokens_per_s"] == pytest.approx(150 * 7 / 150)
    if engine_name != "tgi":
        assert row["requests_waiting_max"] == 10 and row["requests_running_mean"] == pytest.approx(2.5)
    # a naive difference across the restart would have gone negative
    assert samples.filter(pl.col("field") == "requests").get_column("value").diff().min() < 0


def test_dcgm_gauges_are_scaled_and_keyed_to_the_configured_model(tmp_path):
    engine = FakeEngine("dcgm")
    engine.set_load("x", running=0, waiting=0, gpu_util_pct=80, fb_used_mib=2048)
    with engine.running_server() as url:
        row = summarize(source(tmp_path, url, default_model="llama-1b").collect(None, NOW).samples).row(0, named=True)
    assert row["model"] == "llama-1b" and row["engines"] == "dcgm"
    assert row["gpu_utilization_mean"] == pytest.approx(0.8) and row["gpu_memory_used_bytes_max"] == 2048 * 2**20


# ------------------------------------------------------------------------ bad input
def test_malformed_exposition_an_http_error_and_unknown_engines_are_clear_errors(tmp_path):
    engine = FakeEngine("vllm")
    with engine.running_server() as url:
        engine.fault = "malformed"
        with pytest.raises(TelemetryError, match="does not parse as Prometheus exposition format"):
            source(tmp_path, url).collect(None, NOW)
        engine.fault = "http500"
        with pytest.raises(TelemetryError, match="HTTP 500"):
            source(tmp_path, url, max_retries=0).collect(None, NOW)
        engine.fault = None
        with pytest.raises(TelemetryError, match="unknown serving engine"):
            source(tmp_path, url, engines=["sglang"]).collect(None, NOW)
        with pytest.raises(TelemetryError, match="none of the known metrics of tgi"):
            source(tmp_path, url, engines=["tgi"]).collect(None, NOW)
    with pytest.raises(TelemetryError, match="none of the known metrics"):
        parse_exposition("# TYPE go_goroutines gauge\ngo_goroutines 12\n", scraped_at=NOW, instance="x")


# ------------------------------------------------------------------------ Prometheus + sensor
def prometheus_with_history(engine: FakeEngine, prometheus: FakePrometheus, start: float, scrapes: int) -> int:
    """Prometheus scraping `engine` every 15 s while it serves; restarts once. Returns requests
    served after the first scrape."""
    served = 0
    for k in range(scrapes):
        if k == scrapes // 2:
            engine.restart()
        if k:
            for i in range(4):
                engine.serve("llama-1b-lora", 0.5 + i / 10)
                served += 1
        engine.set_load("llama-1b-lora", running=1, waiting=k % 3)
        prometheus.scrape(engine, start + 15 * k, instance="vllm-0:8000")
    return served


def test_the_sensor_collects_from_prometheus_keeps_its_cursor_on_failure_and_loses_nothing(tmp_path):
    engine, prometheus = FakeEngine("vllm", ["llama-1b-lora"]), FakePrometheus()
    day_start = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
    served = prometheus_with_history(engine, prometheus, day_start + 600, scrapes=40)  # 10:00 .. 19:45 min
    with prometheus.running_server() as url, dg.instance_for_test() as instance:
        telemetry = source(tmp_path, url, kind="prometheus", max_window_s=600, max_retries=0, timeout_s=1.0)

        def tick(cursor):
            return collect_telemetry(
                dg.build_sensor_context(instance=instance, cursor=cursor), telemetry, now=day_start + 1500
            )

        first = tick(None)  # from the start of the day, 600 s at most
        assert first.cursor == f"{day_start + 600:.3f}"
        assert [r.partition_key for r in first.run_requests] == [DAY]
        for fault, message in (
            ("timeout", "Prometheus answered timeout"),
            ("internal", "HTTP 500"),
            ("hang", "no answer after 1 attempt"),
        ):
            prometheus.fault = fault
            with pytest.raises(TelemetryError, match=message):  # the tick fails: Dagster keeps its cursor
                tick(first.cursor)
        prometheus.fault = None
        prometheus.release.set()
        second = tick(first.cursor)
        third = tick(second.cursor)
        assert float(third.cursor) == day_start + 1500
        assert "{__name__=~" in prometheus.requests[-1]["query"]
        result = dg.materialize(
            [_serving_telemetry()],
            partition_key=DAY,
            instance=instance,
            resources={"telemetry": telemetry},
        )
    summary = result.output_for_node("serving_telemetry")
    row = summary.row(0, named=True)
    assert row["model"] == "llama-1b-lora" and row["engines"] == "vllm"
    assert row["requests"] == served  # across the restart and the failed ticks: nothing lost, nothing twice
    assert row["e2e_latency_p50_s"] is not None and row["ttft_p95_s"] is not None
    assert row["requests_waiting_max"] == 2
    metadata = result.asset_materializations_for_node("serving_telemetry")[0].metadata
    assert metadata["models"].value == "llama-1b-lora"


def test_prometheus_rejects_bad_queries_as_documented(tmp_path):
    prometheus = FakePrometheus()
    status, body = prometheus.query_range({"query": "up", "start": "10", "end": "5", "step": "15"})
    assert status == 400 and body["errorType"] == "bad_data"
    status, body = prometheus.query_range({"query": "up", "start": "0", "end": "200000", "step": "15"})
    assert status == 400 and "11,000 points" in body["error"]
    status, body = prometheus.query_range({"query": "rate(up[5m]", "start": "0", "end": "60", "step": "15s"})
    assert status == 400 and "parse error" in body["error"]


def test_the_code_location_with_telemetry_loads():
    from flywheel_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)  # e.g. no job named like an asset
    assert defs.get_sensor_def("serving_telemetry_sensor").job_name == "refresh_serving_telemetry"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FLYWHEEL_TELEMETRY_URL": "http://x", "FLYWHEEL_TELEMETRY_ENGINES": "vllm,foo"},
            "FLYWHEEL_TELEMETRY_ENGINES='vllm,foo' names unknown serving engine(s) ['foo']: known engines are dcgm, nim",
        ),
        ({"FLYWHEEL_TELEMETRY_ENGINES": " , "}, "FLYWHEEL_TELEMETRY_ENGINES=' , ' lists nothing"),
        (
            {"FLYWHEEL_TELEMETRY_KIND": "graphite"},
            "FLYWHEEL_TELEMETRY_KIND='graphite' is not one of prometheus, metrics",
        ),
        (
            {"FLYWHEEL_TELEMETRY_URL": "prometheus:9090"},
            "FLYWHEEL_TELEMETRY_URL='prometheus:9090' is not an http(s) URL",
        ),
        (
            {
                "FLYWHEEL_TELEMETRY_URL": "http://a:8000/metrics,http://b:9400/metrics",
                "FLYWHEEL_TELEMETRY_KIND": "prometheus",
            },
            "FLYWHEEL_TELEMETRY_KIND=prometheus queries one server: set FLYWHEEL_TELEMETRY_URL to its base URL",
        ),
    ],
)
def test_bad_telemetry_settings_name_the_variable_and_what_is_allowed(env, message):
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert message in str(err.value)


def test_the_telemetry_resource_is_built_from_the_settings(tmp_path, monkeypatch):
    from flywheel_assets.definitions import build_resources

    monkeypatch.setenv("FLYWHEEL_TELEMETRY_URL", "http://vllm:8000/metrics, http://dcgm:9400/metrics")
    monkeypatch.setenv("FLYWHEEL_TELEMETRY_KIND", " metrics ")
    monkeypatch.setenv("FLYWHEEL_TELEMETRY_ENGINES", "vllm, dcgm")
    monkeypatch.setenv("FLYWHEEL_TELEMETRY_MODEL", "llama-1b")
    telemetry = build_resources(tmp_path, tmp_path / "traces")["telemetry"]
    assert (telemetry.url, telemetry.kind, telemetry.engines, telemetry.default_model) == (
        "http://vllm:8000/metrics, http://dcgm:9400/metrics",
        "metrics",
        ["vllm", "dcgm"],
        "llama-1b",
    )
    assert telemetry.store_dir == str(tmp_path / "telemetry") and telemetry.enabled


def test_telemetry_is_off_without_a_url(tmp_path, monkeypatch):
    from flywheel_assets.definitions import build_resources

    for name in ("FLYWHEEL_TELEMETRY_URL", "FLYWHEEL_TELEMETRY_KIND", "FLYWHEEL_TELEMETRY_ENGINES"):
        monkeypatch.setenv(name, "")  # as a chart or compose file carries it: unset
    telemetry = build_resources(tmp_path, tmp_path / "traces")["telemetry"]
    assert (telemetry.url, telemetry.kind, telemetry.engines) == ("", "metrics", [])
    with dg.instance_for_test() as instance:
        result = collect_telemetry(dg.build_sensor_context(instance=instance), telemetry)
    assert isinstance(result, dg.SkipReason) and "FLYWHEEL_TELEMETRY_URL" in result.skip_message


def _serving_telemetry():
    from flywheel_assets.monitor import serving_telemetry

    return serving_telemetry
