"""Stage `report`: every candidate x experiment of a workload on one `leaderboard`."""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.leaderboard import LeaderboardReport, gather_evals, leaderboard_report
from flywheel_assets.metadata import table
from flywheel_assets.production import turn_started_by
from partitions.slices import BY_WORKLOAD, workload_partitions
from sensors.automation import refresh_when_evaluations_changed

EVAL_IN = dg.AssetIn(partition_mapping=BY_WORKLOAD, metadata={"allow_missing_partitions": True})


class LeaderboardConfig(dg.Config):
    score_threshold: float = Field(
        default=0.9, ge=0, le=1, description="A candidate must reach this score to be recommended."
    )
    threshold_rule: Literal["point", "lower_bound"] = Field(
        default="lower_bound",
        description="lower_bound: the whole 95% interval of the score must reach the threshold; point: the score",
    )
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap intervals (same seed, same intervals).")


@dg.asset(
    partitions_def=workload_partitions,
    ins={"base_eval": EVAL_IN, "icl_eval": EVAL_IN, "customized_eval": EVAL_IN},
    group_name="report",
    kinds={"polars", "parquet"},
    code_version="2",
    automation_condition=refresh_when_evaluations_changed,
    description="Candidates x experiments: score with its 95% interval, latency and cost relative to production.",
)
def leaderboard(
    context: dg.AssetExecutionContext,
    config: LeaderboardConfig,
    workload_dataset: pl.LazyFrame,
    base_eval: dict[str, pl.LazyFrame],
    icl_eval: dict[str, pl.LazyFrame],
    customized_eval: dict[str, pl.LazyFrame],
) -> dg.Output[pl.DataFrame]:
    evals = {"base": base_eval, "icl": icl_eval, "customized": customized_eval}
    report = _report(config, workload_dataset, gather_evals(evals, lambda key: key.keys_by_dimension["candidate"]))
    context.log.info(f"{context.partition_key}: {report.recommendation}\n{report.board}")
    metadata = board_metadata(report, config.threshold_rule) | turn_started_by(context.instance, context.partition_key)
    return dg.Output(report.board, metadata=metadata)


def _report(config: LeaderboardConfig, workload_dataset: pl.LazyFrame, evals: dict) -> LeaderboardReport:
    models = load_models()
    return leaderboard_report(
        evals,
        workload_dataset.select("workload_type", "prompt_tokens", "completion_tokens").collect(),
        costs={c.name: c.cost for c in models.candidates},
        production=models.production,
        threshold=config.score_threshold,
        rule=config.threshold_rule,
        seed=config.bootstrap_seed,
    )


def board_metadata(report: LeaderboardReport, threshold_rule: str) -> dict:
    return {
        "workload_type": report.workload_type,
        "recommendation": dg.MetadataValue.md(report.recommendation),
        "threshold_rule": threshold_rule,
        "leaderboard": table(report.board.with_columns(pl.col(pl.Float64).round(3)), max_rows=50),
        "paired_comparisons": table(report.comparisons_frame().with_columns(pl.col(pl.Float64).round(3)), max_rows=50),
        "dagster/row_count": report.board.height,
    }
