"""Service-level objectives of a workload's served models, and the rollback a breach proposes.

Objectives come from configuration (`MonitoringConfig`, the JSON file named by
FLYWHEEL_MONITORING), per workload over a default. Each is judged per served model and day
on the production metrics (from the traces) and the serving telemetry (from the engine),
newest day first: a breach says by how much, since which day it has lasted without a
break, which promotion approved the model, and the exact `rollback` run a person can
launch. Nothing here launches anything: the flywheel proposes, a person acts.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from flywheel_assets.core.canary import CanaryPolicy


@dataclass(frozen=True)
class Objective:
    name: str
    column: str  # in the daily observations
    kind: Literal["max", "min"]
    unit: str
    source: str


OBJECTIVES = (
    Objective("latency_p95_s", "latency_p95_s", "max", "s", "production_metrics"),
    Objective("ttft_p95_s", "ttft_p95_s", "max", "s", "serving_telemetry"),
    Objective("error_rate", "error_rate", "max", "", "serving_telemetry"),
    Objective("tokens_per_s", "generation_tokens_per_s", "min", "tokens/s", "serving_telemetry"),
    Objective("queue_depth", "requests_waiting_max", "max", "requests", "serving_telemetry"),
    Objective("thumbs_down_rate", "thumbs_down_rate", "max", "", "production_metrics"),
    Objective("tool_call_validity", "tool_call_schema_valid_rate", "min", "", "production_metrics"),
)


class SLO(BaseModel):
    """Limits of one workload; None: not watched."""

    model_config = ConfigDict(extra="forbid")

    latency_p95_s: float | None = Field(default=5.0, gt=0, description="Upper limit of end-to-end latency p95.")
    ttft_p95_s: float | None = Field(default=1.0, gt=0, description="Upper limit of time-to-first-token p95.")
    error_rate: float | None = Field(default=0.02, ge=0, le=1, description="Upper limit of failed requests' share.")
    tokens_per_s: float | None = Field(default=None, gt=0, description="Floor of generated tokens per second.")
    queue_depth: float | None = Field(default=32, ge=0, description="Upper limit of requests waiting.")
    thumbs_down_rate: float | None = Field(default=0.25, ge=0, le=1, description="Upper limit of thumbs-down share.")
    tool_call_validity: float | None = Field(
        default=0.95, ge=0, le=1, description="Floor of the share of tool calls valid against the offered schema."
    )
    min_requests: int = Field(default=20, ge=1, description="Days with fewer requests of a model are not judged.")


class DriftThresholds(BaseModel):
    """Above any of these, drift requests a new turn for the workload (core/drift.py)."""

    model_config = ConfigDict(extra="forbid")

    tool_mix_js: float = Field(default=0.2, ge=0, le=1, description="Jensen-Shannon distance of the tool mix (base 2).")
    unseen_tool_share: float = Field(default=0.05, ge=0, le=1, description="Share of calls to tools never trained on.")
    prompt_length_ks: float = Field(
        default=0.25, ge=0, le=1, description="Kolmogorov-Smirnov statistic of prompt lengths."
    )
    novel_prompt_share: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Share of prompts unlike any train prompt (TF-IDF), beyond that of held-out prompts.",
    )
    min_requests: int = Field(default=100, ge=1, description="Recent requests needed before drift is judged.")
    recent_days: int = Field(default=3, ge=1, description="Days of recent traffic compared with the train split.")


class WorkloadMonitoring(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slo: SLO = SLO()
    drift: DriftThresholds = DriftThresholds()
    canary: CanaryPolicy = CanaryPolicy()
    window_days: int = Field(default=1, ge=1, description="Days of traffic the SLOs' newest day and the canary read.")
    history_days: int = Field(default=14, ge=1, description="Days looked back to date the start of a breach.")


class MonitoringConfig(BaseModel):
    """`{"default": {"slo": {...}, "drift": {...}}, "workloads": {"<workload id>": {...}}}`;
    a workload's entry replaces only the fields it names."""

    model_config = ConfigDict(extra="forbid")

    default: WorkloadMonitoring = WorkloadMonitoring()
    workloads: dict[str, dict] = Field(default_factory=dict)

    def for_workload(self, *names: str | None) -> WorkloadMonitoring:
        """The settings of a workload, looked up by its id or its partition key."""
        override = next((self.workloads[n] for n in names if n and n in self.workloads), {})
        base = self.default.model_dump()
        merged = {
            part: value | override.get(part, {}) if isinstance(value, dict) else override.get(part, value)
            for part, value in base.items()
        }
        return WorkloadMonitoring.model_validate(merged)


def load_monitoring(path: str | Path | None) -> MonitoringConfig:
    """The monitoring configuration in `path` (FLYWHEEL_MONITORING), else the defaults."""
    if path is None:
        return MonitoringConfig()
    try:
        config = MonitoringConfig.model_validate(json.loads(Path(path).read_text()))
        for name in config.workloads:
            config.for_workload(name)  # a typo in a workload's entry fails here
    except (OSError, ValueError) as err:
        raise ValueError(f"FLYWHEEL_MONITORING={path}: {err}".replace("\n", " ")) from err
    return config


@dataclass
class Breach:
    objective: Objective
    served_model: str
    observed: float
    limit: float
    since: str  # first day of the unbroken run of breached days
    day: str
    candidate: str | None
    promotion: str | None

    @property
    def excess(self) -> float:
        return self.observed - self.limit if self.objective.kind == "max" else self.limit - self.observed

    def describe(self) -> str:
        o = self.objective
        side = "above" if o.kind == "max" else "below"
        unit = f" {o.unit}" if o.unit else ""
        relative = f" ({self.excess / self.limit:+.0%})" if self.limit else ""
        version = (
            f"candidate {self.candidate}, promotion {self.promotion}" if self.promotion else "approved by no promotion"
        )
        return (
            f"{o.name} of {self.served_model} ({version}) is {self.observed:.4g}{unit} on {self.day}, "
            f"{abs(self.excess):.4g}{unit}{relative} {side} the limit {self.limit:g}{unit}, since {self.since}"
        )


OBSERVATION_KEYS = ("day", "served_model", "candidate", "promotion", "requests")
TELEMETRY_COLUMNS = tuple(o.column for o in OBJECTIVES if o.source == "serving_telemetry")


def daily_observations(metrics: dict[str, pl.DataFrame], telemetry: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per day and served model: `production_metrics` rows by day, with the day's
    `serving_telemetry` row of the same model (its `model` label) where there is one."""
    frames = [frame.with_columns(pl.lit(day).alias("day")) for day, frame in metrics.items()]
    if not frames:
        return pl.DataFrame(schema={k: pl.String for k in OBSERVATION_KEYS} | {"requests": pl.Int64})
    observed = pl.concat(frames, how="diagonal_relaxed")
    engine = [
        frame.select(
            pl.lit(day).alias("day"),
            pl.col("model").alias("served_model"),
            *(pl.col(c).cast(pl.Float64) for c in TELEMETRY_COLUMNS),
        )
        for day, frame in telemetry.items()
        if frame.height
    ]
    if engine:
        observed = observed.join(pl.concat(engine), on=["day", "served_model"], how="left")
    return observed


def has_figures(observations: pl.DataFrame, objective: Objective) -> bool:
    """Whether the newest day of `observations` carries a figure for `objective`."""
    if objective.column not in observations.columns or observations.is_empty():
        return False
    newest = observations.filter(pl.col("day") == observations.get_column("day").max())
    return newest.get_column(objective.column).drop_nulls().len() > 0


def find_breaches(observations: pl.DataFrame, slo: SLO) -> dict[str, list[Breach]]:
    """Objective name -> breaches on the newest day of `observations` (one row per day and
    served model: OBSERVATION_KEYS and the objectives' columns; a missing figure is null and
    judges nothing). Days below `slo.min_requests` requests of a model are not judged."""
    breaches: dict[str, list[Breach]] = {o.name: [] for o in OBJECTIVES}
    if observations.is_empty():
        return breaches
    latest = observations.get_column("day").max()
    for objective in OBJECTIVES:
        limit = getattr(slo, objective.name)
        if limit is None or objective.column not in observations.columns:
            continue
        value = pl.col(objective.column)
        breached = (value > limit) if objective.kind == "max" else (value < limit)
        judged = observations.with_columns(
            (breached & (pl.col("requests") >= slo.min_requests)).fill_null(False).alias("_breached")
        ).sort("day", descending=True)
        for row in judged.filter((pl.col("day") == latest) & pl.col("_breached")).iter_rows(named=True):
            days = judged.filter(pl.col("served_model") == row["served_model"])
            since = row["day"]
            for day, is_breached in days.select("day", "_breached").iter_rows():
                if not is_breached:
                    break
                since = day
            breaches[objective.name].append(
                Breach(
                    objective,
                    row["served_model"],
                    float(row[objective.column]),
                    float(limit),
                    since,
                    row["day"],
                    row["candidate"],
                    row["promotion"],
                )
            )
    return breaches


def rollback_proposal(breach: Breach, workload_key: str, workload_id: str | None, production_id: str | None) -> dict:
    """What a person launches to undo the promotion behind `breach`: the `rollback` job's
    run config and partition, and the command line; or why no rollback fits."""
    if breach.promotion is None:
        return {
            "rollback": None,
            "why_not": f"{breach.served_model} was approved by no promotion: nothing to roll back",
        }
    if breach.promotion != production_id:
        return {
            "rollback": None,
            "why_not": (
                f"{breach.served_model} was approved by {breach.promotion}, which is no longer the current promotion "
                f"({production_id}): route its traffic away in the serving layer"
            ),
        }
    run_config = {
        "ops": {
            "promoted_model": {
                "config": {
                    "workload": workload_id or workload_key,
                    "approver": "<your name or e-mail>",
                    "reason": f"SLO breach: {breach.describe()}",
                }
            }
        }
    }
    return {
        "rollback": {"job": "rollback", "partition": workload_key, "run_config": run_config},
        "command": (
            "dagster job launch -w workspace.yaml -j rollback"
            f" --tags {shlex.quote(json.dumps({'dagster/partition': workload_key}))}"
            f" --config-json {shlex.quote(json.dumps(run_config))}"
        ),
    }
