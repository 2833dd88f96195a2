"""Everything the code location reads from its environment, decided and validated in one place.

| variable                    | default                 | meaning                                          |
|-----------------------------|-------------------------|--------------------------------------------------|
| FLYWHEEL_BACKEND            | local                   | `local` (embedded) or `nemo` (NeMo microservices) |
| FLYWHEEL_HOME               | ./.flywheel_data        | root of landing area, assets, datasets, models   |
| FLYWHEEL_TRACES_DIR         | $FLYWHEEL_HOME/traces   | drop folder of trace files                       |
| FLYWHEEL_START_DATE         | 2025-01-01              | first day partition; older records are quarantined |
| FLYWHEEL_VALIDATION_WORKERS | 0 (one per usable CPU)  | processes validating a large trace file (1: none); usable: affinity and cgroup CPU limit |
| FLYWHEEL_CANDIDATES         | (demo candidate)        | JSON file of candidate models                    |
| FLYWHEEL_MONITORING         | (defaults)              | JSON file of SLOs, drift thresholds and canary policy per workload |
| FLYWHEEL_FOREIGN_LEFTOVER_HOURS | 24                  | temp files of a killed process on another host (pod) are removed once untouched this long |
| FLYWHEEL_EXECUTOR           | in_process              | `in_process`, `multiprocess` (a process per step), or `k8s` (one pod per step) |
| FLYWHEEL_WEAVE_ENTITY       | (WANDB_ENTITY)          | W&B entity of the Weave project with the traces  |
| FLYWHEEL_WEAVE_PROJECT      | (WANDB_PROJECT)         | W&B project holding the traces (weave_trace_sensor) |
| FLYWHEEL_WEAVE_OPS          | (traces by their shape) | comma-separated ops whose calls are all traces (names or weave:/// refs); `*`: every call |
| FLYWHEEL_TELEMETRY_URL      | (telemetry off)         | Prometheus base URL, or comma-separated engine /metrics URLs |
| FLYWHEEL_TELEMETRY_KIND     | metrics                 | `metrics` (scrape the URLs) or `prometheus` (query_range of one server) |
| FLYWHEEL_TELEMETRY_ENGINES  | (all)                   | comma-separated engines read: `dcgm`, `nim`, `tgi`, `vllm` |
| FLYWHEEL_TELEMETRY_MODEL    |                         | served model of series without a model label (TGI, DCGM) |
| FLYWHEEL_WANDB_PROJECT      | (WANDB_PROJECT, else flywheel) | W&B project of the tracked artifacts (tracking is on with WANDB_MODE/WANDB_API_KEY) |
| FLYWHEEL_WANDB_REGISTRY     | (none)                  | `wandb-registry-<name>`: promotions are also linked to this W&B registry (online) |
| FLYWHEEL_JUDGE_BASE_URL     |                         | OpenAI-compatible endpoint of an LLM judge        |
| FLYWHEEL_JUDGE_MODEL        |                         | model name sent to the judge (required with FLYWHEEL_JUDGE_BASE_URL) |
| FLYWHEEL_ICL_STRATEGY       | lexical                 | ICL example choice: `uniform`, `lexical` (TF-IDF), `embedding` |
| FLYWHEEL_EMBEDDINGS_BASE_URL |                        | OpenAI-compatible `/v1` endpoint of an embedding model (`embedding`) |
| FLYWHEEL_EMBEDDINGS_MODEL   |                         | embedding model name, e.g. nvidia/llama-3.2-nv-embedqa-1b-v2 |
| FLYWHEEL_EMBEDDINGS_INPUT_TYPE |                      | sent as `input_type` (NIM retrieval models need `query`) |
| FLYWHEEL_EMBEDDINGS_DIMENSIONS |                      | expected vector size, checked on every response   |
| FLYWHEEL_NEMO_BASE_URL      |                         | NeMo gateway: Entity Store, Customizer, Evaluator, Deployment Mgmt (`nemo`) |
| FLYWHEEL_NEMO_DATASTORE_URL |                         | NeMo Data Store (`nemo`)                          |
| FLYWHEEL_NIM_BASE_URL       |                         | NIM proxy, OpenAI-compatible (`nemo`)             |
| FLYWHEEL_NEMO_EVALUATOR_NIM_URL |                     | the NIM proxy as the Evaluator reaches it in the cluster (default: jobs name the model) |
| FLYWHEEL_NEMO_NAMESPACE     | flywheel                | namespace of everything the flywheel creates in NeMo |

Secrets are never read here, only named: FLYWHEEL_JUDGE_API_KEY, FLYWHEEL_EMBEDDINGS_API_KEY, NGC_API_KEY, WANDB_API_KEY
reach resources through `dagster.EnvVar`, so they stay out of settings, metadata and logs.
W&B's own variables (WANDB_MODE, WANDB_API_KEY, WANDB_PROJECT, WANDB_ENTITY, WANDB_BASE_URL...) are
W&B's settings, read where W&B is set up (resources/tracking.py, resources/weave_source.py, wandb).

An empty variable counts as unset (Kubernetes and compose files often carry `VAR: ""`).
A bad value fails with the variable's name: `FLYWHEEL_BACKEND='foo' is not one of local, nemo`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel_assets.core.telemetry import TelemetryError, check_engines
from partitions.keys import SAFE_KEY

# defaults that resources built by hand (tests, benchmarks) take too, so each exists once
DEFAULT_START_DATE = date(2025, 1, 1)
TelemetryKind = Literal["prometheus", "metrics"]
DEFAULT_TELEMETRY_KIND: TelemetryKind = "metrics"
DEFAULT_WANDB_PROJECT = "flywheel"  # the tracker's project without FLYWHEEL_WANDB_PROJECT or WANDB_PROJECT
WANDB_REGISTRY_PREFIX = "wandb-registry-"
_WANDB_REGISTRY = re.compile(rf"{WANDB_REGISTRY_PREFIX}[^/\\#?%:\s]+")


class SettingsError(ValueError):
    """One or more environment variables hold a value the flywheel can't use."""


def _var(name: str, default=None):
    return Field(default=default, alias=name)


class FlywheelSettings(BaseModel):
    """The validated environment; field aliases are the variable names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, validate_default=True)

    backend: Literal["local", "nemo"] = _var("FLYWHEEL_BACKEND", "local")
    home: Path = _var("FLYWHEEL_HOME", Path(".flywheel_data"))
    traces_dir: Path | None = _var("FLYWHEEL_TRACES_DIR")
    start_date: date = _var("FLYWHEEL_START_DATE", DEFAULT_START_DATE)
    validation_workers: int = Field(default=0, ge=0, alias="FLYWHEEL_VALIDATION_WORKERS")
    candidates_file: Path | None = _var("FLYWHEEL_CANDIDATES")
    monitoring_file: Path | None = _var("FLYWHEEL_MONITORING")
    # longer than any single write or read of a step: a live writer touches its files
    foreign_leftover_hours: float = Field(default=24.0, gt=0, alias="FLYWHEEL_FOREIGN_LEFTOVER_HOURS")
    # in_process: a run's steps share its process, so a run imports the code location (and
    # torch, for the GPU stage) once instead of once per step; its steps would mostly wait
    # for each other or for the `gpu` pool anyway
    executor: Literal["multiprocess", "in_process", "k8s"] = _var("FLYWHEEL_EXECUTOR", "in_process")
    weave_entity: str | None = _var("FLYWHEEL_WEAVE_ENTITY")
    weave_project: str | None = _var("FLYWHEEL_WEAVE_PROJECT")
    # None: trace documents and OpenAI calls with the workload attribute; (): every call
    weave_ops: tuple[str, ...] | None = _var("FLYWHEEL_WEAVE_OPS")
    telemetry_url: str | None = _var("FLYWHEEL_TELEMETRY_URL")
    telemetry_kind: TelemetryKind = _var("FLYWHEEL_TELEMETRY_KIND", DEFAULT_TELEMETRY_KIND)
    telemetry_engines: tuple[str, ...] = _var("FLYWHEEL_TELEMETRY_ENGINES", ())  # (): all
    telemetry_model: str | None = _var("FLYWHEEL_TELEMETRY_MODEL")
    wandb_project: str | None = _var("FLYWHEEL_WANDB_PROJECT")  # None: W&B's WANDB_PROJECT, else the default
    wandb_registry: str | None = _var("FLYWHEEL_WANDB_REGISTRY")
    judge_base_url: str | None = _var("FLYWHEEL_JUDGE_BASE_URL")
    judge_model: str | None = _var("FLYWHEEL_JUDGE_MODEL")
    icl_strategy: Literal["uniform", "lexical", "embedding"] = _var("FLYWHEEL_ICL_STRATEGY", "lexical")
    embeddings_base_url: str | None = _var("FLYWHEEL_EMBEDDINGS_BASE_URL")
    embeddings_model: str | None = _var("FLYWHEEL_EMBEDDINGS_MODEL")
    embeddings_input_type: str | None = _var("FLYWHEEL_EMBEDDINGS_INPUT_TYPE")
    embeddings_dimensions: int | None = Field(default=None, gt=0, alias="FLYWHEEL_EMBEDDINGS_DIMENSIONS")
    nemo_base_url: str | None = _var("FLYWHEEL_NEMO_BASE_URL")
    nemo_datastore_url: str | None = _var("FLYWHEEL_NEMO_DATASTORE_URL")
    nim_base_url: str | None = _var("FLYWHEEL_NIM_BASE_URL")
    evaluator_nim_url: str | None = _var("FLYWHEEL_NEMO_EVALUATOR_NIM_URL")
    nemo_namespace: str = _var("FLYWHEEL_NEMO_NAMESPACE", "flywheel")

    @field_validator("home", "traces_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return path.expanduser().resolve() if path is not None else None

    @field_validator("candidates_file", "monitoring_file")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError("is not a file")
        return path

    @field_validator(
        "judge_base_url",
        "embeddings_base_url",
        "nemo_base_url",
        "nemo_datastore_url",
        "nim_base_url",
        "evaluator_nim_url",
    )
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not _is_http_url(url):
            raise ValueError("is not an http(s) URL")
        return url.rstrip("/")

    @field_validator("telemetry_url")
    @classmethod
    def _http_urls(cls, urls: str | None) -> str | None:
        if urls is None:
            return None
        items = [u.strip() for u in urls.split(",") if u.strip()]
        if not items or not all(map(_is_http_url, items)):
            raise ValueError("is not an http(s) URL or comma-separated http(s) URLs")
        return urls

    @field_validator("telemetry_kind", mode="before")
    @classmethod
    def _stripped(cls, value):
        return value.strip() if isinstance(value, str) else value

    @field_validator("telemetry_engines", "weave_ops", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if not isinstance(value, str):
            return value
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if not items:
            raise ValueError("lists nothing: give comma-separated names, or leave it empty for the default")
        return items

    @field_validator("telemetry_engines")
    @classmethod
    def _known_engines(cls, engines: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(check_engines(engines))
        except TelemetryError as err:
            raise ValueError(f"names {err}") from None

    @field_validator("weave_ops")
    @classmethod
    def _every_op(cls, ops: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if ops is None or "*" not in ops:
            return ops
        if ops != ("*",):
            raise ValueError("mixes `*` (every call) with op names: give one or the other")
        return ()

    @field_validator("wandb_registry")
    @classmethod
    def _a_wandb_registry(cls, registry: str | None) -> str | None:
        return check_wandb_registry(registry) if registry is not None else None

    @field_validator("nemo_namespace")
    @classmethod
    def _safe_namespace(cls, namespace: str) -> str:
        if not SAFE_KEY.match(namespace):
            raise ValueError(f"must match {SAFE_KEY.pattern}")
        return namespace

    @model_validator(mode="after")
    def _nemo_needs_its_endpoints(self) -> FlywheelSettings:
        if self.backend == "nemo":
            endpoints = ("nemo_base_url", "nemo_datastore_url", "nim_base_url")
            missing = [_alias(f) for f in endpoints if getattr(self, f) is None]
            if missing:
                raise ValueError(f"FLYWHEEL_BACKEND=nemo needs {', '.join(missing)} (unset)")
        return self

    @model_validator(mode="after")
    def _judge_is_named(self) -> FlywheelSettings:
        # every judge score records the judge's model: an unnamed one would be recorded as
        # "judge", so two different judges would look like one
        if self.judge_base_url is not None and self.judge_model is None:
            raise ValueError(
                "FLYWHEEL_JUDGE_BASE_URL is set but FLYWHEEL_JUDGE_MODEL (the judge's model name) is unset"
            )
        return self

    @model_validator(mode="after")
    def _embedding_needs_its_endpoint(self) -> FlywheelSettings:
        if self.icl_strategy == "embedding":
            missing = [_alias(f) for f in ("embeddings_base_url", "embeddings_model") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"FLYWHEEL_ICL_STRATEGY=embedding needs {', '.join(missing)} (unset)")
        return self

    @model_validator(mode="after")
    def _prometheus_is_one_server(self) -> FlywheelSettings:
        if self.telemetry_kind == "prometheus" and self.telemetry_url is not None and "," in self.telemetry_url:
            raise ValueError(
                "FLYWHEEL_TELEMETRY_KIND=prometheus queries one server: set FLYWHEEL_TELEMETRY_URL to its base URL "
                "(comma-separated URLs are engines' /metrics, FLYWHEEL_TELEMETRY_KIND=metrics)"
            )
        return self

    @property
    def traces(self) -> Path:
        return self.traces_dir or self.home / "traces"


def check_wandb_registry(registry: str) -> str:
    """`registry` if W&B reads it as a registry, else ValueError saying how to write one."""
    # W&B reads `<registry>/<name>` as a project path unless it starts with the prefix
    if not _WANDB_REGISTRY.fullmatch(registry):
        raise ValueError(
            f"is not a W&B registry: write it as {WANDB_REGISTRY_PREFIX}<name>, e.g. wandb-registry-model "
            "for the Model registry (without the prefix W&B would link promotions to a project of that name)"
        )
    return registry


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _alias(field: str) -> str:
    return FlywheelSettings.model_fields[field].alias or field


def load_settings(environ: Mapping[str, str] | None = None) -> FlywheelSettings:
    """Read and validate the flywheel's variables from `environ` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    names = {f.alias for f in FlywheelSettings.model_fields.values()}
    values = {name: environ[name] for name in names if environ.get(name, "").strip()}
    try:
        return FlywheelSettings.model_validate(values)
    except ValidationError as err:
        raise SettingsError("; ".join(_describe(e, values) for e in err.errors())) from None


def _describe(error, values: Mapping[str, str]) -> str:
    name = error["loc"][0] if error["loc"] else None
    if name is None:  # a rule across variables (model validator): its message names them
        return error["msg"].removeprefix("Value error, ")
    shown = f"{name}={values.get(name)!r}"
    if error["type"] == "literal_error":
        choices = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{shown} is not one of {choices}"
    if error["type"] == "value_error":
        return f"{shown} {error['msg'].removeprefix('Value error, ')}"
    return f"{shown} is invalid: {error['msg']}"


def flywheel_home() -> Path:
    return load_settings().home


def traces_dir() -> Path:
    return load_settings().traces
