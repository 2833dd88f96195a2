"""Stage `report`: every candidate x experiment of a workload on one `leaderboard`."""

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.leaderboard import build_leaderboard, production_tokens
from flywheel_assets.metadata import table
from flywheel_assets.production import turn_started_by
from partitions.defs import BY_WORKLOAD, workload_partitions
from sensors.automation import refresh_when_evaluations_changed

EVAL_IN = dg.AssetIn(partition_mapping=BY_WORKLOAD, metadata={"allow_missing_partitions": True})


class LeaderboardConfig(dg.Config):
    score_threshold: float = Field(
        default=0.9, ge=0, le=1, description="A candidate must reach this score to be recommended."
    )


@dg.asset(
    partitions_def=workload_partitions,
    ins={"base_eval": EVAL_IN, "icl_eval": EVAL_IN, "customized_eval": EVAL_IN},
    group_name="report",
    kinds={"polars", "parquet"},
    code_version="1",
    automation_condition=refresh_when_evaluations_changed,
    description="Candidates x experiments: score, latency and cost relative to production.",
)
def leaderboard(
    context: dg.AssetExecutionContext,
    config: LeaderboardConfig,
    workload_dataset: pl.LazyFrame,
    base_eval: dict[str, pl.LazyFrame],
    icl_eval: dict[str, pl.LazyFrame],
    customized_eval: dict[str, pl.LazyFrame],
) -> dg.Output[pl.DataFrame]:
    models = load_models()
    workload = workload_dataset.select("workload_type", "prompt_tokens", "completion_tokens").collect()
    workload_type = workload["workload_type"][0] if workload.height else "chat"
    evals = {
        (key.keys_by_dimension["candidate"], experiment): frame.collect()
        for experiment, frames in (("base", base_eval), ("icl", icl_eval), ("customized", customized_eval))
        for key, frame in frames.items()
    }
    board = build_leaderboard(
        evals,
        workload_type=workload_type,
        costs={c.name: c.cost for c in models.candidates},
        production=models.production,
        production_usage=production_tokens(workload),
        threshold=config.score_threshold,
    )
    best = board.filter("best")
    recommendation = (
        f"**{best['candidate'][0]} ({best['experiment'][0]})** reaches the threshold "
        f"{config.score_threshold} at {best['cost_vs_production'][0]:.1%} of the production cost"
        if best.height and best["cost_vs_production"][0] is not None
        else f"no candidate reaches the threshold {config.score_threshold}"
    )
    context.log.info(f"{context.partition_key}: {recommendation}\n{board}")
    return dg.Output(
        board,
        metadata={
            "workload_type": workload_type,
            "recommendation": dg.MetadataValue.md(recommendation),
            "leaderboard": table(board.with_columns(pl.col(pl.Float64).round(3)), max_rows=50),
            "dagster/row_count": board.height,
            **turn_started_by(context.instance, context.partition_key),
        },
    )
