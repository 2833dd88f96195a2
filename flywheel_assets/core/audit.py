"""Promotion audits: who put which model in production, why, and built from what.

Plain logic, no Dagster: the promote/rollback asset (`flywheel_assets/promote.py`) reads
the Dagster instance (`flywheel_assets/lineage.py`) and calls these functions; the `flywheel-audit` command prints what
`format_chain` returns.

A promotion is refused when the candidate is not on the current leaderboard, scores below
the threshold, or the leaderboard is older than the candidate's evaluation it ranks; a
person may override that with `force` and a reason, and the record keeps the overridden
refusals. Rollbacks form an undo stack: each record names the record a rollback of it
would restore (`previous_id`), so rolling back twice goes two promotions back, not back
and forth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from flywheel_assets.core.leaderboard import ThresholdRule, records_to_settle

Action = Literal["promote", "rollback"]
Experiment = Literal["base", "icl", "customized"]

# the chain a person walks in an audit, upstream first
CHAIN = (
    "raw_traces",
    "workload_dataset",
    "eval_dataset",
    "train_dataset",
    "lora_adapter",
    "base_eval",
    "icl_eval",
    "customized_eval",
    "leaderboard",
)
EVAL_ASSETS = ("base_eval", "icl_eval", "customized_eval")


class Refused(ValueError):
    """A promotion or rollback that must not happen; the message says what to do."""


class Materialization(BaseModel):
    """One upstream materialization, as the Dagster instance recorded it."""

    asset: str
    partition: str | None = None
    run_id: str
    storage_id: int
    timestamp: float
    data_version: str | None = None
    summary: dict[str, Any] = Field(
        default_factory=dict, description="Numbers and short texts of its metadata (scores, counts, hashes)."
    )
    wandb_artifact: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset


class Target(BaseModel):
    """What runs in production for the workload: a candidate model, served as in `experiment`."""

    candidate: str
    experiment: Experiment
    score: float | None = None
    leaderboard_row: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict, description="The candidate's configuration (no secrets).")
    adapter_dir: str | None = Field(default=None, description="customized: the LoRA adapter to deploy.")


class AuditRecord(BaseModel):
    id: str
    action: Action
    workload_key: str
    workload_id: str | None = None
    target: Target
    approver: str
    reason: str
    at: str = Field(description="UTC, ISO 8601")
    dagster_run_id: str
    min_score: float | None = None
    threshold_rule: ThresholdRule | None = None
    forced: bool = False
    overridden_refusals: list[str] = Field(default_factory=list)
    replaces_id: str | None = Field(default=None, description="The record in production until this one.")
    restores_id: str | None = Field(default=None, description="Rollback: the record whose target it restores.")
    previous_id: str | None = Field(
        default=None, description="The record a rollback of this one restores (None: nothing before it)."
    )
    upstream: list[Materialization] = Field(default_factory=list)
    wandb_artifact: dict[str, Any] | None = None


def record_id(now: dt.datetime, run_id: str) -> str:
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{run_id[:8]}"


def board_row(board: Sequence[dict], candidate: str, experiment: str) -> dict | None:
    return next((r for r in board if r.get("candidate") == candidate and r.get("experiment") == experiment), None)


def promotion_refusals(
    board: Sequence[dict],
    candidate: str,
    experiment: str,
    min_score: float,
    *,
    leaderboard: Materialization | None,
    evaluations: Iterable[Materialization] = (),
    workload_key: str = "",
    rule: ThresholdRule = "lower_bound",
) -> list[str]:
    """Why `candidate` (`experiment`) must not be promoted; empty when it may. `rule` judges
    the row against `min_score` as the leaderboard does: its score, or its whole interval."""
    if leaderboard is None:
        return [f"workload {workload_key!r} has no leaderboard: run the flywheel through `leaderboard` first"]
    row = board_row(board, candidate, experiment)
    if row is None:
        on_board = ", ".join(sorted({f"{r['candidate']} ({r['experiment']})" for r in board})) or "nothing"
        return [
            f"{candidate} ({experiment}) is not on the current leaderboard of {workload_key!r} "
            f"(run {leaderboard.run_id[:8]}); it ranks {on_board}"
        ]
    refusals = [r for r in [_score_refusal(row, f"{candidate} ({experiment})", min_score, rule)] if r]
    newer = [e.label for e in evaluations if e.storage_id > leaderboard.storage_id]
    if newer:
        refusals.append(
            f"the leaderboard (run {leaderboard.run_id[:8]}) is older than {', '.join(newer)}: "
            "rematerialize the leaderboard so the score you promote on is the current one"
        )
    return refusals


def _score_refusal(row: Mapping[str, Any], label: str, min_score: float, rule: ThresholdRule) -> str | None:
    score, low, high, n = (row.get(k) for k in ("score", "ci_low", "ci_high", "n"))
    remedy = "pick a candidate that meets it, or set force: true with a reason"
    if score is None:
        return f"{label} has no score, below the threshold {min_score}: {remedy}"
    if rule == "point" or low is None or high is None or n is None:  # a board from before intervals
        return (
            None if score >= min_score else f"{label} has score {score:.3f}, below the threshold {min_score}: {remedy}"
        )
    if low >= min_score:
        return None
    measured = f"score {score:.3f} (95% interval {low:.2f}-{high:.2f} over {n} eval records)"
    if score < min_score:
        return f"{label} has {measured}, below the threshold {min_score}: {remedy}"
    needed = records_to_settle(score, low, high, n, min_score)
    settle = f"about {needed} eval records would settle it" if needed else "more records will not settle it"
    return (
        f"{label} has {measured}: its interval reaches below the threshold {min_score}, so under "
        f"threshold_rule lower_bound it is not yet sure to meet it ({settle}). Evaluate on more records, "
        "set threshold_rule: point to judge the score alone, or set force: true with a reason"
    )


def rollback_target(current: AuditRecord | None, history: Sequence[AuditRecord]) -> AuditRecord:
    """The record a rollback restores: the one before the current production record."""
    if current is None:
        raise Refused("nothing is in production for this workload: there is nothing to roll back")
    if current.previous_id is None:
        raise Refused(
            f"{current.id} ({current.target.candidate}, {current.target.experiment}) is the first "
            "production model of this workload: there is no earlier promotion to restore"
        )
    restored = next((r for r in history if r.id == current.previous_id), None)
    if restored is None:
        raise Refused(f"promotion record {current.previous_id} is not in this instance's history")
    return restored


def served_models(by_day: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Which models served the workload's production traffic on these days (`production_metrics`
    partitions by day), one row each: the candidate and promotions behind it, its days and
    requests, and how many of them no promotion had approved."""
    frames = [
        frame.select("served_model", "candidate", "promotion", "approved", "requests").with_columns(day=pl.lit(day))
        for day, frame in by_day.items()
    ]
    if not frames:
        return pl.DataFrame(
            schema={
                "served_model": pl.String,
                "candidate": pl.String,
                "promotions": pl.List(pl.String),
                "first_day": pl.String,
                "last_day": pl.String,
                "days": pl.UInt32,
                "requests": pl.Int64,
                "unapproved_requests": pl.Int64,
                "unapproved_days": pl.List(pl.String),
            }
        )
    return (
        pl.concat(frames)
        .group_by("served_model")
        .agg(
            pl.col("candidate").drop_nulls().last(),
            pl.col("promotion").drop_nulls().unique().sort().alias("promotions"),
            pl.col("day").min().alias("first_day"),
            pl.col("day").max().alias("last_day"),
            pl.col("day").n_unique().alias("days"),
            pl.col("requests").sum(),
            pl.col("requests").filter(~pl.col("approved")).sum().alias("unapproved_requests"),
            pl.col("day").filter(~pl.col("approved")).unique().sort().alias("unapproved_days"),
        )
        .sort("last_day", "requests", descending=True)
    )


def format_served(served: pl.DataFrame) -> list[str]:
    """Lines for `format_chain`: each served model, flagged when no promotion approved
    (some of) its traffic."""
    if served.is_empty():
        return ["  served     no production_metrics yet: ingest the workload's traffic"]
    lines = []
    for row in served.iter_rows(named=True):
        behind = f"candidate {row['candidate']}" if row["candidate"] else "no candidate serves under this name"
        approved_by = f", promotions {', '.join(row['promotions'])}" if row["promotions"] else ""
        lines.append(
            f"  served     {row['served_model']}: {row['requests']} requests on {row['days']} days "
            f"{row['first_day']}..{row['last_day']}, {behind}{approved_by}"
        )
        if row["unapproved_requests"]:
            days = row["unapproved_days"]
            shown = ", ".join(days[:5]) + (f" (+{len(days) - 5} more)" if len(days) > 5 else "")
            lines.append(
                f"  {'UNAPPROVED':<10}   {row['unapproved_requests']} requests served by "
                f"{row['served_model']} with no promotion approving it (days {shown}): promote it "
                "through the `promote` job, or take it out of production"
            )
    return lines


def format_chain(
    workload_key: str,
    workload_id: str | None,
    latest: Sequence[Materialization],
    promotions: Sequence[AuditRecord],
    served: pl.DataFrame | None = None,
) -> str:
    """The audit chain of one workload as text: traces -> dataset -> splits -> adapter ->
    evals -> leaderboard -> promotions (newest first) -> the models that served production
    (`served_models`)."""
    lines = [
        f"workload {workload_key}" + (f" (id {workload_id!r})" if workload_id and workload_id != workload_key else "")
    ]
    current = promotions[0] if promotions else None
    promoted_at = {m.label: m for m in current.upstream} if current else {}
    by_asset: dict[str, list[Materialization]] = {}
    for m in latest:
        by_asset.setdefault(m.asset, []).append(m)
    traces = sorted(by_asset.pop("raw_traces", []), key=lambda m: m.partition or "")
    if traces:
        days = [(m.partition or "").split("|")[0] for m in traces]
        rows = sum(int(m.summary.get("dagster/row_count", 0)) for m in traces)
        lines.append(f"  traces     raw_traces: {len(traces)} days {days[0]}..{days[-1]}, {rows} records")
    for asset in CHAIN[1:]:
        for m in sorted(by_asset.get(asset, []), key=lambda m: m.partition or ""):
            lines.append(f"  {_stage(asset):<10} {m.label}: {_describe(m)}")
            was = promoted_at.get(m.label)
            if was is not None and was.storage_id != m.storage_id:
                lines.append(
                    f"  {'':<10}   (promoted from an older materialization: run {was.run_id[:8]}, "
                    f"version {_short(was.data_version)})"
                )
    if not promotions:
        lines.append("  promotion  none: launch the `promote` job")
    for i, record in enumerate(promotions):
        stage = "production" if i == 0 else "before"
        forced = f" FORCED over: {'; '.join(record.overridden_refusals)}" if record.forced else ""
        score = f" score {record.target.score:.3f}" if record.target.score is not None else ""
        restores = f" (restores {record.restores_id})" if record.restores_id else ""
        lines.append(
            f"  {stage:<10} {record.id} {record.action}{restores}: {record.target.candidate} "
            f"({record.target.experiment}){score}, by {record.approver} at {record.at}: "
            f"{record.reason!r}{forced}"
        )
        if record.wandb_artifact:
            lines.append(f"  {'':<10}   wandb {_wandb(record.wandb_artifact)}")
    if served is not None:
        lines += format_served(served)
    return "\n".join(lines)


def _stage(asset: str) -> str:
    return {
        "workload_dataset": "dataset",
        "eval_dataset": "split",
        "train_dataset": "split",
        "lora_adapter": "adapter",
        "leaderboard": "board",
    }.get(asset, "eval")


_SHOWN = (
    "dagster/row_count",
    "content_hash",
    "records_out",
    "duplicates",
    "eval_records",
    "train_records",
    "validation_records",
    "final_loss",
    "function_name_accuracy",
    "function_name_and_args_accuracy",
    "similarity",
    "latency_p50_s",
    "errors",
    "workload_type",
)


def _describe(m: Materialization) -> str:
    parts = [f"run {m.run_id[:8]}", f"version {_short(m.data_version)}"]
    parts += [f"{k.removeprefix('dagster/')} {_fmt(m.summary[k])}" for k in _SHOWN if k in m.summary]
    if m.wandb_artifact:
        parts.append(f"wandb {_wandb(m.wandb_artifact)}")
    return ", ".join(parts)


def _wandb(artifact: dict) -> str:
    return artifact.get("qualified_name") or f"{artifact.get('name')}@{str(artifact.get('digest'))[:12]} (offline)"


def _short(version: str | None) -> str:
    return (version or "-")[:12]


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
