"""The leaderboard: every candidate x experiment of a workload, ranked, with cost.

Score is the primary metric of the workload type: function-name accuracy for tool
calling, similarity for chat. Cost is the estimated price of answering the eval prompts,
relative to what the production model's token usage (from the traces) cost.
"""

from __future__ import annotations

import polars as pl

from flywheel_assets.core.candidates import CostProfile

EXPERIMENTS = ("base", "icl", "customized")
PRIMARY_SCORE = {"tool_calling": "function_name_accuracy", "chat": "similarity"}

LEADERBOARD_SCHEMA = {
    "candidate": pl.String,
    "experiment": pl.String,
    "score": pl.Float64,
    "function_name_and_args_accuracy": pl.Float64,
    "records": pl.Int64,
    "errors": pl.Int64,
    "latency_p50_s": pl.Float64,
    "latency_p95_s": pl.Float64,
    "cost_vs_production": pl.Float64,
    "meets_threshold": pl.Boolean,
    "best": pl.Boolean,
}


def production_tokens(workload: pl.DataFrame) -> tuple[float, float]:
    """Mean prompt and completion tokens per request of the production model."""
    means = workload.select(pl.col("prompt_tokens").mean(), pl.col("completion_tokens").mean())
    prompt, completion = means.row(0)
    return float(prompt or 0.0), float(completion or 0.0)


def summarize_eval(
    rows: pl.DataFrame, workload_type: str, cost: CostProfile, production_cost: float
) -> dict:
    primary = PRIMARY_SCORE[workload_type]
    ok = rows.filter(pl.col("error").is_null())
    candidate_cost = cost.cost(
        rows["prompt_tokens"].fill_null(0).mean() or 0.0,
        rows["completion_tokens"].fill_null(0).mean() or 0.0,
    )
    args = "function_name_and_args_accuracy"
    return {
        "score": rows[primary].fill_null(0.0).mean() if rows.height else None,
        args: rows[args].fill_null(0.0).mean() if args in rows.columns and rows.height else None,
        "records": rows.height,
        "errors": rows.height - ok.height,
        "latency_p50_s": ok["latency_s"].quantile(0.5) if ok.height else None,
        "latency_p95_s": ok["latency_s"].quantile(0.95) if ok.height else None,
        "cost_vs_production": candidate_cost / production_cost if production_cost else None,
    }


def build_leaderboard(
    evals: dict[tuple[str, str], pl.DataFrame],
    *,
    workload_type: str,
    costs: dict[str, CostProfile],
    production: CostProfile,
    production_usage: tuple[float, float],
    threshold: float,
) -> pl.DataFrame:
    """One row per (candidate, experiment); `best` marks the cheapest row meeting the threshold
    (ties broken by higher score)."""
    production_cost = production.cost(*production_usage)
    rows = [
        {"candidate": candidate, "experiment": experiment,
         **summarize_eval(df, workload_type, costs[candidate], production_cost)}
        for (candidate, experiment), df in sorted(evals.items())
        if df.height
    ]
    board = pl.DataFrame(rows, schema={k: v for k, v in LEADERBOARD_SCHEMA.items() if k not in ("meets_threshold", "best")})
    board = board.with_columns(meets_threshold=pl.col("score").fill_null(0.0) >= threshold)
    ranked = board.filter("meets_threshold").sort(
        pl.col("cost_vs_production").fill_null(float("inf")), -pl.col("score")
    )
    is_best = pl.lit(False)
    if ranked.height:
        candidate, experiment = ranked.row(0, named=True)["candidate"], ranked.row(0, named=True)["experiment"]
        is_best = (pl.col("candidate") == candidate) & (pl.col("experiment") == experiment)
    board = board.with_columns(best=is_best)
    return board.sort("score", descending=True, nulls_last=True)
