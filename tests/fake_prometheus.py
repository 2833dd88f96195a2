"""Loopback stand-ins for serving engines' `/metrics` endpoints and a Prometheus server.

`FakeEngine` serves what the engine serves, under the engine's real names:

- vLLM: `prometheus_client` metrics as `vllm/v1/metrics/loggers.py` declares them
  (`vllm:e2e_request_latency_seconds` with vLLM's buckets, `vllm:request_success` with
  `finished_reason`, labels `model_name` and `engine`), rendered by `generate_latest`, as
  vLLM's server does;
- NIM for LLMs: the same, unprefixed, at `/v1/metrics` (NIM docs, "Observability");
- TGI: the text of the Rust `metrics-exporter-prometheus` crate that TGI uses: counters
  without `_total`, histograms with `_bucket`/`_sum`/`_count`, no model label;
- DCGM exporter: gauges per GPU (`gpu`, `UUID`, `modelName`, `Hostname` labels).

Counters grow as requests are `serve`d and start again from zero on `restart()` (an engine
restart). `fault` makes the next answers malformed text or an HTTP error.

`FakePrometheus` answers `GET /api/v1/query_range` as Prometheus' HTTP API documents it:
a matrix of the stored series matching `{__name__=~"a|b"}` or a bare metric name,
evaluated at start + k*step with a 5-minute look-back; `bad_data` (HTTP 400) for a bad
query, missing/unparsable times, end before start, a step <= 0 or more than 11,000 points
per series; injected `timeout` (503, errorType "timeout"), `internal` (500) or `hang`
(no answer until the test releases it or the server stops).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from loopback import Fault, LoopbackHandler, LoopbackServer, json_answer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vllm/v1/metrics/loggers.py
VLLM_LATENCY_BUCKETS = [
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]
VLLM_TTFT_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
]
TGI_DURATION_BUCKETS = [0.1 * 1.5**i for i in range(16)]


@contextmanager
def _serving(handler_class: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Any handler on loopback; yields its base URL (benchmarks/production_metrics.py uses it)."""
    with LoopbackServer(handler_class) as server:
        yield server.base_url


class FakeEngine:
    def __init__(self, engine: str, models: list[str] = ("served-model",), latency_buckets: list[float] | None = None):
        self.engine = engine
        self.models = list(models)
        self.latency_buckets = latency_buckets
        self.fault: str | None = None  # "malformed" | "http500"
        self.restarts = 0
        self._lock = threading.Lock()
        self.restart()
        self.restarts = 0

    @property
    def path(self) -> str:
        return "/v1/metrics" if self.engine == "nim" else "/metrics"

    def restart(self) -> None:
        """A restarted engine: every counter and histogram starts from zero."""
        with self._lock:
            self.restarts += 1
            self._tgi = {
                "count": 0,
                "failure": 0,
                "input_sum": 0.0,
                "generated_sum": 0.0,
                "durations": [],
                "queue": 0,
                "batch": 0,
            }
            self._dcgm = {"util": 0.0, "fb_used": 0.0}
            if self.engine in ("vllm", "nim"):
                self._build_vllm_style("vllm:" if self.engine == "vllm" else "")

    def _build_vllm_style(self, prefix: str) -> None:
        registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.registry = registry
        self.e2e = Histogram(
            f"{prefix}e2e_request_latency_seconds",
            "e2e request latency",
            labels,
            buckets=self.latency_buckets or VLLM_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            f"{prefix}time_to_first_token_seconds",
            "time to first token",
            labels,
            buckets=VLLM_TTFT_BUCKETS,
            registry=registry,
        )
        self.running = Gauge(f"{prefix}num_requests_running", "running", labels, registry=registry)
        self.waiting = Gauge(f"{prefix}num_requests_waiting", "waiting", labels, registry=registry)
        kv_name = "kv_cache_usage_perc" if prefix else "gpu_cache_usage_perc"
        self.kv = Gauge(f"{prefix}{kv_name}", "KV-cache usage", labels, registry=registry)
        self.prompt = Counter(f"{prefix}prompt_tokens", "prefill tokens", labels, registry=registry)
        self.generation = Counter(f"{prefix}generation_tokens", "generation tokens", labels, registry=registry)
        self.success = Counter(
            f"{prefix}request_success", "finished requests", labels + ["finished_reason"], registry=registry
        )
        for model in self.models:  # vLLM creates every child up front (make_per_engine): all start at 0
            for metric in (self.e2e, self.ttft, self.running, self.waiting, self.kv, self.prompt, self.generation):
                metric.labels(model, "0")
            for reason in ("stop", "length", "abort"):
                self.success.labels(model, "0", reason)

    def serve(
        self,
        model: str,
        latency_s: float,
        *,
        ttft_s: float = 0.05,
        prompt_tokens: int = 100,
        generation_tokens: int = 20,
        finished_reason: str = "stop",
    ) -> None:
        with self._lock:
            if self.engine in ("vllm", "nim"):
                self.e2e.labels(model, "0").observe(latency_s)
                self.ttft.labels(model, "0").observe(ttft_s)
                self.prompt.labels(model, "0").inc(prompt_tokens)
                self.generation.labels(model, "0").inc(generation_tokens)
                self.success.labels(model, "0", finished_reason).inc()
            elif self.engine == "tgi":
                tgi = self._tgi
                tgi["count"] += 1
                tgi["failure"] += finished_reason == "abort"
                tgi["input_sum"] += prompt_tokens
                tgi["generated_sum"] += generation_tokens
                tgi["durations"].append(latency_s)

    def set_load(
        self,
        model: str,
        *,
        running: int,
        waiting: int,
        kv_cache: float = 0.5,
        gpu_util_pct: float = 50.0,
        fb_used_mib: float = 1000.0,
    ) -> None:
        with self._lock:
            if self.engine in ("vllm", "nim"):
                self.running.labels(model, "0").set(running)
                self.waiting.labels(model, "0").set(waiting)
                self.kv.labels(model, "0").set(kv_cache)
            self._tgi |= {"queue": waiting, "batch": running}
            self._dcgm = {"util": gpu_util_pct, "fb_used": fb_used_mib}

    def exposition(self) -> str:
        with self._lock:
            if self.engine in ("vllm", "nim"):
                return generate_latest(self.registry).decode()
            if self.engine == "tgi":
                return self._tgi_text()
            return self._dcgm_text()

    def _tgi_text(self) -> str:
        tgi = self._tgi
        lines = [
            "# TYPE tgi_request_count counter",
            f"tgi_request_count {tgi['count']}",
            "# TYPE tgi_request_failure counter",
            f'tgi_request_failure{{err="generation"}} {tgi["failure"]}',
            "# TYPE tgi_queue_size gauge",
            f"tgi_queue_size {tgi['queue']}",
            "# TYPE tgi_batch_current_size gauge",
            f"tgi_batch_current_size {tgi['batch']}",
            "# TYPE tgi_request_duration histogram",
        ]
        for bound in TGI_DURATION_BUCKETS:
            lines.append(f'tgi_request_duration_bucket{{le="{bound}"}} {sum(d <= bound for d in tgi["durations"])}')
        lines += [
            f'tgi_request_duration_bucket{{le="+Inf"}} {len(tgi["durations"])}',
            f"tgi_request_duration_sum {sum(tgi['durations'])}",
            f"tgi_request_duration_count {len(tgi['durations'])}",
            "# TYPE tgi_request_input_length histogram",
            f'tgi_request_input_length_bucket{{le="+Inf"}} {tgi["count"]}',
            f"tgi_request_input_length_sum {tgi['input_sum']}",
            f"tgi_request_input_length_count {tgi['count']}",
            "# TYPE tgi_request_generated_tokens histogram",
            f'tgi_request_generated_tokens_bucket{{le="+Inf"}} {tgi["count"]}',
            f"tgi_request_generated_tokens_sum {tgi['generated_sum']}",
            f"tgi_request_generated_tokens_count {tgi['count']}",
        ]
        return "\n".join(lines) + "\n"

    def _dcgm_text(self) -> str:
        labels = 'gpu="0",UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"'
        return (
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
            f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {self._dcgm['util']}\n"
            "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).\n# TYPE DCGM_FI_DEV_FB_USED gauge\n"
            f"DCGM_FI_DEV_FB_USED{{{labels}}} {self._dcgm['fb_used']}\n"
        )

    @contextmanager
    def running_server(self) -> Iterator[str]:
        """The engine on loopback; yields its metrics URL."""
        with LoopbackServer(_EngineHandler, engine=self) as server:
            yield server.base_url + self.path


class _EngineHandler(LoopbackHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        engine: FakeEngine = self.server.engine  # type: ignore[attr-defined]
        if urlparse(self.path).path != engine.path:
            return self.send(404, b"404 page not found\n", {"Content-Type": "text/plain"})
        if engine.fault == "http500":
            return self.send(500, b"internal error\n", {"Content-Type": "text/plain"})
        body = engine.exposition()
        if engine.fault == "malformed":  # a proxy's error page, cut mid-sample
            body = body[: len(body) // 2] + 'broken{le="0.1" 3\n'
        self.send(200, body.encode(), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


# ------------------------------------------------------------------------------ Prometheus
MAX_POINTS = 11_000
LOOKBACK_S = 300.0


@dataclass
class Series:
    labels: dict[str, str]  # with __name__
    points: list[tuple[float, float]] = field(default_factory=list)  # (time, value), ascending


class FakePrometheus:
    def __init__(self) -> None:
        self.series: list[Series] = []
        self.fault: str | None = None  # "timeout" | "internal" | "hang"
        self.requests: list[dict] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def add(self, name: str, labels: dict[str, str], points: list[tuple[float, float]]) -> None:
        with self._lock:
            self.series.append(Series({"__name__": name, **labels}, sorted(points)))

    def scrape(self, engine: FakeEngine, at: float, instance: str) -> None:
        """Store one scrape of `engine` taken at `at`, as Prometheus' scrape loop would."""
        from prometheus_client.parser import text_string_to_metric_families

        with self._lock:
            for family in text_string_to_metric_families(engine.exposition()):
                for sample in family.samples:
                    # stored under the name the target exposed (TGI's counters have no _total)
                    name = sample.name
                    if family.type == "counter" and engine.engine == "tgi":
                        name = name.removesuffix("_total")
                    if name.endswith("_created"):
                        continue
                    labels = {"__name__": name, **sample.labels, "instance": instance, "job": engine.engine}
                    match = next((s for s in self.series if s.labels == labels), None)
                    if match is None:
                        match = Series(labels)
                        self.series.append(match)
                    match.points.append((at, float(sample.value)))

    def query_range(self, params: dict[str, str]) -> tuple[int, dict]:
        query = params.get("query", "")
        try:
            start, end = _time(params["start"]), _time(params["end"])
            step = _duration(params["step"])
        except KeyError as missing:
            return 400, _error(
                "bad_data", f'invalid parameter {missing.args[0]!r}: cannot parse "" to a valid timestamp'
            )
        except ValueError as err:
            return 400, _error("bad_data", str(err))
        if end < start:
            return 400, _error("bad_data", 'invalid parameter "end": end timestamp must not be before start time')
        if step <= 0:
            return 400, _error(
                "bad_data",
                'invalid parameter "step": zero or negative query resolution step '
                "widths are not accepted. Try a positive integer",
            )
        if (end - start) / step > MAX_POINTS:
            return 400, _error(
                "bad_data",
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)",
            )
        selector = _selector(query)
        if selector is None:
            return 400, _error("bad_data", f'invalid parameter "query": 1:1: parse error: unexpected input {query!r}')
        steps = [start + k * step for k in range(int(math.floor((end - start) / step)) + 1)]
        result = []
        with self._lock:
            for series in self.series:
                if not selector(series.labels["__name__"]):
                    continue
                values = []
                for t in steps:
                    recent = [(ts, v) for ts, v in series.points if t - LOOKBACK_S < ts <= t]
                    if recent:
                        values.append([t, _format_value(recent[-1][1])])
                if values:
                    result.append({"metric": dict(series.labels), "values": values})
        return 200, {"status": "success", "data": {"resultType": "matrix", "result": result}}

    @contextmanager
    def running_server(self) -> Iterator[str]:
        with LoopbackServer(_PrometheusHandler, wake=self.release, prometheus=self) as server:
            yield server.base_url


class _PrometheusHandler(LoopbackHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        prometheus: FakePrometheus = self.server.prometheus  # type: ignore[attr-defined]
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        prometheus.requests.append(params)
        if url.path != "/api/v1/query_range":
            return self.send_json(404, _error("not_found", "404 page not found"))
        self.respond(FAULTS.get(prometheus.fault), lambda: json_answer(*prometheus.query_range(params)))


def _error(kind: str, message: str) -> dict:
    return {"status": "error", "errorType": kind, "error": message}


# `FakePrometheus.fault` names: Prometheus' error answers, or no answer until released
FAULTS = {
    "timeout": Fault.body(_error("timeout", "query timed out in expression evaluation"), status_code=503),
    "internal": Fault.body(_error("internal", "unexpected error: storage unavailable"), status_code=500),
    "hang": Fault.hang(),
}


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"cannot parse {text!r} to a valid timestamp") from None


def _duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
        if not match:
            raise ValueError(f'invalid parameter "step": cannot parse {text!r} to a valid duration') from None
        return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _selector(query: str):
    query = query.strip()
    if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", query):
        return lambda name: name == query
    match = re.fullmatch(r'\{__name__=~"(.*)"\}', query)
    if not match:
        return None
    pattern = re.compile(match.group(1))
    return lambda name: pattern.fullmatch(name) is not None  # PromQL regexes are anchored


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(value)
