"""Production metrics of one day x workload of traces, per served model (no Dagster).

The model that answered a trace is `response.model` (what the serving layer reports), else
the request's `model`. Each served model name is tied to the candidate configured to serve
under it (`CandidateSpec.served_names`) and to the promotion that approved it: the latest
promote or rollback record of the workload, made no later than the end of the day, whose
target serves under that name (names taken from the candidate's configuration recorded in
the audit record). A served model no promotion approved is kept, with `approved` false.

Figures a trace does not carry are missing (null), never 0: no latency on any request of a
model gives null quantiles, no feedback gives null rates. Latency quantiles interpolate
linearly between samples, as numpy's default does.

The per-trace facts (served model, refused, tool calls judged against the offered tools'
JSON Schemas) are columns of `raw_traces`, computed once when a trace lands
(`core.ingest.trace_quality`), so the figures here are one group-by. Empty answers fail
trace validation (`empty_response`) and land in `quarantined_traces`; `empty_answers` counts
them per served model, so that they count as requests whose answer was empty instead of
disappearing from the rate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import polars as pl

from flywheel_assets.core.audit import AuditRecord
from flywheel_assets.core.candidates import CandidateSpec, CostProfile
from flywheel_assets.core.schema import UNKNOWN_MODEL

PRODUCTION_METRICS_SCHEMA: dict[str, pl.DataType] = {
    "served_model": pl.String,
    "candidate": pl.String,
    "promotion": pl.String,
    "approved": pl.Boolean,
    "requests": pl.Int64,
    "latency_measured": pl.Int64,
    "latency_p50_s": pl.Float64,
    "latency_p95_s": pl.Float64,
    "latency_p99_s": pl.Float64,
    "prompt_tokens_per_request": pl.Float64,
    "completion_tokens_per_request": pl.Float64,
    "estimated_cost_usd": pl.Float64,
    "feedback_count": pl.Int64,
    "thumbs_up_rate": pl.Float64,
    "thumbs_down_rate": pl.Float64,
    "tool_calls": pl.Int64,
    "tool_call_name_valid_rate": pl.Float64,
    "tool_call_schema_valid_rate": pl.Float64,
    "empty_or_refused_rate": pl.Float64,
}


def approvals(history: Sequence[AuditRecord], until: dt.datetime) -> dict[str, AuditRecord]:
    """Served model name -> the latest record (promote or rollback) made no later than
    `until` whose target serves under that name."""
    approved: dict[str, AuditRecord] = {}
    for record in sorted(history, key=lambda r: dt.datetime.fromisoformat(r.at)):
        if dt.datetime.fromisoformat(record.at) > until:
            break
        for name in _target_names(record):
            approved[name] = record
    return approved


def _target_names(record: AuditRecord) -> list[str]:
    target = record.target
    try:
        return CandidateSpec.model_validate(target.spec or {"name": target.candidate}).served_names
    except ValueError:  # a record written under an older configuration format
        return [n for n in (target.candidate, target.spec.get("model_id")) if n]


def metrics_by_served_model(
    traces: pl.DataFrame | pl.LazyFrame,
    *,
    candidates: Sequence[CandidateSpec],
    approved: Mapping[str, AuditRecord],
    empty_answers: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """One row per served model of `traces` (columns of `raw_traces`), in
    PRODUCTION_METRICS_SCHEMA; `empty_answers`: quarantined empty answers per served model."""
    by_model = (
        traces.lazy()
        .with_columns(latency_s=pl.col("latency_ms") / 1000)
        .group_by("served_model")
        .agg(
            pl.len().alias("requests"),
            pl.col("latency_s").count().alias("latency_measured"),
            *(
                pl.col("latency_s").quantile(q, interpolation="linear").alias(f"latency_p{round(q * 100)}_s")
                for q in (0.5, 0.95, 0.99)
            ),
            # tokens per request = sum / count (in `_finish`): the sums price the requests anyway
            pl.col("prompt_tokens").sum().alias("_prompt_tokens"),
            pl.col("completion_tokens").sum().alias("_completion_tokens"),
            pl.col("prompt_tokens").count().alias("_usage_reported"),
            pl.col("completion_tokens").count().alias("_completions_reported"),
            pl.col("feedback_thumbs").count().alias("feedback_count"),
            (pl.col("feedback_thumbs") == "up").sum().alias("_up"),
            (pl.col("feedback_thumbs") == "down").sum().alias("_down"),
            pl.col("tool_calls").sum(),
            pl.col("tool_calls_name_offered").sum().alias("_names_offered"),
            pl.col("tool_calls_schema_valid").sum().alias("_schemas_valid"),
            pl.col("refused").sum().alias("_refused"),
        )
        .collect()
    )
    by_model = _with_empty_answers(by_model, empty_answers or {})
    return _finish(by_model, candidates, approved)


def _with_empty_answers(by_model: pl.DataFrame, empty_answers: Mapping[str, int]) -> pl.DataFrame:
    if not empty_answers:
        return by_model
    empty = pl.DataFrame(
        {"served_model": list(empty_answers), "_empty": list(empty_answers.values())},
        schema={"served_model": pl.String, "_empty": pl.Int64},
    )
    joined = by_model.join(empty, on="served_model", how="full", coalesce=True)
    return joined.with_columns(
        (pl.col("requests").fill_null(0) + pl.col("_empty").fill_null(0)).alias("requests"),
        (pl.col("_refused").fill_null(0) + pl.col("_empty").fill_null(0)).alias("_refused"),
        *(
            pl.col(c).fill_null(0)
            for c in (
                "latency_measured",
                "feedback_count",
                "tool_calls",
                "_up",
                "_down",
                "_names_offered",
                "_schemas_valid",
                "_usage_reported",
            )
        ),
    ).drop("_empty")


def _finish(
    by_model: pl.DataFrame, candidates: Sequence[CandidateSpec], approved: Mapping[str, AuditRecord]
) -> pl.DataFrame:
    serving = {name: c for c in candidates for name in c.served_names}
    for name, record in approved.items():  # a candidate since removed from the configuration
        serving.setdefault(name, CandidateSpec(name=record.target.candidate))
    models = by_model.get_column("served_model").to_list()
    profiles = {m: serving[m].cost for m in models if m in serving}
    resolved = pl.DataFrame(
        {
            "served_model": models,
            "candidate": [serving[m].name if m in serving else None for m in models],
            "promotion": [approved[m].id if m in approved else None for m in models],
            "_usd_per_prompt_token": [_per_token(profiles.get(m), "prompt") for m in models],
            "_usd_per_completion_token": [_per_token(profiles.get(m), "completion") for m in models],
        },
        schema={
            "served_model": pl.String,
            "candidate": pl.String,
            "promotion": pl.String,
            "_usd_per_prompt_token": pl.Float64,
            "_usd_per_completion_token": pl.Float64,
        },
    )

    def rate(part: str, whole: str) -> pl.Expr:
        return pl.when(pl.col(whole) > 0).then(pl.col(part) / pl.col(whole))

    return (
        by_model.join(resolved, on="served_model", how="left")
        .with_columns(
            pl.col("promotion").is_not_null().alias("approved"),
            pl.when(pl.col("_usage_reported") > 0)
            .then(
                pl.col("_prompt_tokens").fill_null(0) * pl.col("_usd_per_prompt_token")
                + pl.col("_completion_tokens").fill_null(0) * pl.col("_usd_per_completion_token")
            )
            .alias("estimated_cost_usd"),
            rate("_prompt_tokens", "_usage_reported").alias("prompt_tokens_per_request"),
            rate("_completion_tokens", "_completions_reported").alias("completion_tokens_per_request"),
            rate("_up", "feedback_count").alias("thumbs_up_rate"),
            rate("_down", "feedback_count").alias("thumbs_down_rate"),
            rate("_names_offered", "tool_calls").alias("tool_call_name_valid_rate"),
            rate("_schemas_valid", "tool_calls").alias("tool_call_schema_valid_rate"),
            rate("_refused", "requests").alias("empty_or_refused_rate"),
        )
        .select(pl.col(c).cast(t) for c, t in PRODUCTION_METRICS_SCHEMA.items())
        .sort("requests", "served_model", descending=[True, False])
    )


def _per_token(profile: CostProfile | None, kind: str) -> float | None:
    if profile is None:
        return None
    return getattr(profile, f"usd_per_million_{kind}_tokens") / 1e6


def empty_answers_by_model(quarantined: pl.DataFrame | pl.LazyFrame) -> dict[str, int]:
    """Quarantined `empty_response` traces per served model (those whose raw text names one)."""
    empty = (
        quarantined.lazy()
        .filter(pl.col("reason") == "empty_response")
        .select(
            pl.coalesce(
                pl.col("raw").str.json_path_match("$.response.model"),
                pl.col("raw").str.json_path_match("$.request.model"),
                pl.lit(UNKNOWN_MODEL),
            ).alias("served_model")
        )
        .group_by("served_model")
        .len()
        .collect()
    )
    return dict(empty.iter_rows())


def day_end(day: str) -> dt.datetime:
    """The end of a UTC day partition: promotions made by then approve that day's traffic."""
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time.max, tzinfo=dt.UTC)
