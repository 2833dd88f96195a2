"""The leaderboard: every candidate x experiment of a workload, ranked, with cost and how
sure each score is.

Score is the primary metric of the workload type: function-name accuracy for tool
calling, similarity for chat, the mean over the n eval records (a failed record scores 0).
Cost is the estimated price of answering the eval prompts, relative to what the production
model's token usage (from the traces) cost.

Confidence: each row carries a seeded 95% bootstrap interval of its score
(`scipy.stats.bootstrap`, BCa). When every record scored the same (20/20), resampling
cannot show any spread, so the interval is then the Wilson interval of that many
successes (20/20: 0.84-1.00), not a zero-width one. Whether a row meets the threshold
follows `rule`: ``point`` (the score) or ``lower_bound`` (the whole interval, the default).
The recommended row (`best`) is the cheapest row that meets it, ties broken by score. The
recommendation says how sure it is, how many eval records would settle a row whose
interval straddles the threshold (the interval narrows as 1/sqrt(n)), and compares the
recommended (or top) row with the next best on the records both were scored on (a paired
bootstrap of the per-record differences).

Tool-calling columns (when the evaluations have the per-record columns of
`core/metrics.py`; null otherwise): ``argument_precision`` and ``argument_recall`` (means),
``schema_validity`` (share of calls whose arguments validate, records without a verdict left
out), ``hallucination_rate`` (share of records calling a tool that was not offered),
``abstention_error_rate`` (share of records that called a tool where production answered
in text, or the reverse).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from flywheel_assets.core.candidates import CostProfile

# scipy.stats is imported where it is used: importing it takes about half a second, and the
# code location (every run's process) imports this module

PRIMARY_SCORE = {"tool_calling": "function_name_accuracy", "chat": "similarity"}
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4999
ThresholdRule = Literal["point", "lower_bound"]

# leaderboard column: how to compute it from the per-record eval columns (when present)
TOOL_COLUMNS: dict[str, tuple[str, Callable[[pl.Series], float | None]]] = {
    "argument_precision": ("argument_precision", lambda s: s.drop_nulls().mean()),
    "argument_recall": ("argument_recall", lambda s: s.drop_nulls().mean()),
    "schema_validity": ("schema_valid", lambda s: s.drop_nulls().cast(pl.Float64).mean()),
    "hallucination_rate": ("hallucinated_tool", lambda s: s.fill_null(False).cast(pl.Float64).mean()),
    "abstention_error_rate": ("abstention_error", lambda s: s.is_not_null().cast(pl.Float64).mean()),
}

LEADERBOARD_SCHEMA = {
    "candidate": pl.String,
    "experiment": pl.String,
    "score": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n": pl.Int64,
    "unscored": pl.Int64,
    "function_name_and_args_accuracy": pl.Float64,
    **{column: pl.Float64 for column in TOOL_COLUMNS},
    "errors": pl.Int64,
    "latency_p50_s": pl.Float64,
    "latency_p95_s": pl.Float64,
    "cost_vs_production": pl.Float64,
    "meets_threshold": pl.Boolean,
    "best": pl.Boolean,
}
_TOOL_ONLY = ("function_name_and_args_accuracy", *TOOL_COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """`reference` minus `other` on the records both were scored on."""

    reference: tuple[str, str]
    other: tuple[str, str]
    shared_records: int
    difference: float
    ci_low: float
    ci_high: float

    @property
    def distinguishable(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class LeaderboardReport:
    workload_type: str
    board: pl.DataFrame
    comparisons: list[Comparison]
    recommendation: str

    def comparisons_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [
                {
                    "reference": "/".join(c.reference),
                    "other": "/".join(c.other),
                    "shared_records": c.shared_records,
                    "difference": c.difference,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "distinguishable": c.distinguishable,
                }
                for c in self.comparisons
            ],
            schema={
                "reference": pl.String,
                "other": pl.String,
                "shared_records": pl.Int64,
                "difference": pl.Float64,
                "ci_low": pl.Float64,
                "ci_high": pl.Float64,
                "distinguishable": pl.Boolean,
            },
        )


# ------------------------------------------------------------------------------ inputs


def gather_evals(
    evals: Mapping[str, Mapping[Any, pl.LazyFrame | pl.DataFrame]], candidate_of: Callable[[Any], str]
) -> dict[tuple[str, str], pl.DataFrame]:
    """{experiment: {partition key: rows}} to {(candidate, experiment): rows}."""
    return {
        (candidate_of(key), experiment): frame.collect() if isinstance(frame, pl.LazyFrame) else frame
        for experiment, frames in evals.items()
        for key, frame in frames.items()
    }


def production_tokens(workload: pl.DataFrame) -> tuple[float, float]:
    """Mean prompt and completion tokens per request of the production model."""
    means = workload.select(pl.col("prompt_tokens").mean(), pl.col("completion_tokens").mean())
    prompt, completion = means.row(0)
    return float(prompt or 0.0), float(completion or 0.0)


def workload_type_of(workload: pl.DataFrame) -> str:
    return workload["workload_type"][0] if workload.height else "chat"


# ---------------------------------------------------------------------------- the report


def leaderboard_report(
    evals: dict[tuple[str, str], pl.DataFrame],
    workload: pl.DataFrame,
    *,
    costs: dict[str, CostProfile],
    production: CostProfile,
    threshold: float,
    rule: ThresholdRule = "lower_bound",
    seed: int = 0,
) -> LeaderboardReport:
    """The board, the paired comparisons of its top row and the recommendation sentence."""
    workload_type = workload_type_of(workload)
    board = build_leaderboard(
        evals,
        workload_type=workload_type,
        costs=costs,
        production=production,
        production_usage=production_tokens(workload),
        threshold=threshold,
        rule=rule,
        seed=seed,
    )
    comparisons = compare_with_reference(board, evals, workload_type, seed=seed)
    return LeaderboardReport(workload_type, board, comparisons, recommend(board, comparisons, threshold, rule))


def build_leaderboard(
    evals: dict[tuple[str, str], pl.DataFrame],
    *,
    workload_type: str,
    costs: dict[str, CostProfile],
    production: CostProfile,
    production_usage: tuple[float, float],
    threshold: float,
    rule: ThresholdRule = "lower_bound",
    seed: int = 0,
) -> pl.DataFrame:
    """One row per (candidate, experiment), highest score first; `best` marks the cheapest
    row meeting the threshold under `rule` (ties broken by higher score)."""
    production_cost = production.cost(*production_usage)
    rows = [
        {
            "candidate": candidate,
            "experiment": experiment,
            **summarize_eval(df, workload_type, costs[candidate], production_cost, seed=seed),
        }
        for (candidate, experiment), df in sorted(evals.items())
        if df.height
    ]
    schema = {k: v for k, v in LEADERBOARD_SCHEMA.items() if k not in ("meets_threshold", "best")}
    if workload_type != "tool_calling":
        schema = {k: v for k, v in schema.items() if k not in _TOOL_ONLY}
    board = pl.DataFrame(rows, schema=schema)
    judged = pl.col("ci_low") if rule == "lower_bound" else pl.col("score")
    board = board.with_columns(meets_threshold=judged.fill_null(0.0) >= threshold)
    ranked = board.filter("meets_threshold").sort(
        pl.col("cost_vs_production").fill_null(float("inf")), -pl.col("score")
    )
    is_best = pl.lit(False)
    if ranked.height:
        top = ranked.row(0, named=True)
        is_best = (pl.col("candidate") == top["candidate"]) & (pl.col("experiment") == top["experiment"])
    board = board.with_columns(best=is_best)
    return board.sort(["score", "candidate", "experiment"], descending=[True, False, False], nulls_last=True)


def summarize_eval(
    rows: pl.DataFrame, workload_type: str, cost: CostProfile, production_cost: float, *, seed: int = 0
) -> dict:
    primary = PRIMARY_SCORE[workload_type]
    ok = rows.filter(pl.col("error").is_null())
    candidate_cost = cost.cost(
        rows["prompt_tokens"].fill_null(0).mean() or 0.0,
        rows["completion_tokens"].fill_null(0).mean() or 0.0,
    )
    # a failed candidate scores 0 (core/metrics); a record without a score (the judge failed
    # or gave no readable score) is no evidence either way: left out and counted
    scores = rows[primary].drop_nulls().to_numpy()
    low, high = score_interval(scores, seed=seed)
    summary = {
        "score": float(scores.mean()) if scores.size else None,
        "ci_low": low,
        "ci_high": high,
        "n": int(scores.size),
        "unscored": rows.height - int(scores.size),
        "errors": rows.height - ok.height,
        "latency_p50_s": ok["latency_s"].quantile(0.5) if ok.height else None,
        "latency_p95_s": ok["latency_s"].quantile(0.95) if ok.height else None,
        "cost_vs_production": candidate_cost / production_cost if production_cost else None,
    }
    if workload_type == "tool_calling":
        args = "function_name_and_args_accuracy"
        summary[args] = rows[args].fill_null(0.0).mean() if args in rows.columns and rows.height else None
        summary |= {
            column: aggregate(rows[source]) if source in rows.columns and rows.height else None
            for column, (source, aggregate) in TOOL_COLUMNS.items()
        }
    return summary


# ---------------------------------------------------------------------------- confidence


def score_interval(
    scores: np.ndarray, *, seed: int = 0, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float | None, float | None]:
    """A seeded bootstrap interval of the mean of per-record scores in [0, 1]."""
    from scipy import stats

    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return None, None
    if np.all(scores == scores[0]):
        # nothing to resample: the Wilson interval of that many successes out of n
        successes = int(round(float(scores[0]) * scores.size))
        interval = stats.binomtest(successes, scores.size).proportion_ci(confidence, method="wilson")
        return float(interval.low), float(interval.high)
    low, high = _bootstrap_mean((scores,), seed, confidence, n_resamples)
    return max(0.0, low), min(1.0, high)


def _bootstrap_mean(
    samples: tuple[np.ndarray, ...], seed: int, confidence: float, n_resamples: int
) -> tuple[float, float]:
    from scipy import stats

    def interval(method: str):
        with warnings.catch_warnings():  # degenerate resamples are handled below, not shown
            warnings.simplefilter("ignore")
            return stats.bootstrap(
                samples,
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                rng=np.random.default_rng(seed),
                vectorized=True,
                axis=-1,
            ).confidence_interval

    result = interval("BCa")
    if not (np.isfinite(result.low) and np.isfinite(result.high)):
        result = interval("percentile")  # BCa needs spread in the jackknife; tiny samples may lack it
    return float(result.low), float(result.high)


def records_to_settle(score: float, low: float, high: float, n: int, threshold: float) -> int | None:
    """Roughly how many eval records would put the whole interval on one side of the
    threshold (the half-width shrinks as 1/sqrt(n)); None when it already is, or when the
    score sits on the threshold (no number of records settles that)."""
    if low >= threshold or high < threshold or score == threshold:
        return None
    half_width = score - low if score > threshold else high - score
    # rounded first: float noise must not add a record (0.1 / 0.05 is 2.0000000000000004)
    return math.ceil(round(n * (half_width / abs(score - threshold)) ** 2, 6))


def paired_difference(
    reference: pl.DataFrame, other: pl.DataFrame, primary: str, *, seed: int = 0
) -> tuple[int, float, float, float] | None:
    """Mean of reference - other per shared record id, with a seeded bootstrap interval."""
    joined = (
        reference.select("record_id", pl.col(primary).alias("a"))
        .join(other.select("record_id", pl.col(primary).alias("b")), on="record_id")
        .drop_nulls()
    )
    if not joined.height:
        return None
    differences = (joined["a"] - joined["b"]).to_numpy()
    mean = float(differences.mean())
    if np.all(differences == differences[0]):
        return joined.height, mean, mean, mean
    low, high = _bootstrap_mean((differences,), seed, CONFIDENCE, BOOTSTRAP_RESAMPLES)
    return joined.height, mean, low, high


def compare_with_reference(
    board: pl.DataFrame, evals: dict[tuple[str, str], pl.DataFrame], workload_type: str, *, seed: int = 0
) -> list[Comparison]:
    """The recommended row (else the top-scoring one) against every other row, in board order."""
    if board.height < 2:
        return []
    best = board.filter("best")
    reference = (best if best.height else board).row(0, named=True)
    key = (reference["candidate"], reference["experiment"])
    comparisons = []
    for row in board.iter_rows(named=True):
        other = (row["candidate"], row["experiment"])
        if other == key:
            continue
        paired = paired_difference(evals[key], evals[other], PRIMARY_SCORE[workload_type], seed=seed)
        if paired is not None:
            comparisons.append(Comparison(key, other, *paired))
    return comparisons


# ------------------------------------------------------------------------------ display

# short headers for a terminal (`flywheel demo` prints the boards)
# ------------------------------------------------------------------------ recommendation


def _name(row: Mapping[str, Any]) -> str:
    return f"**{row['candidate']} ({row['experiment']})**"


def _interval(row: Mapping[str, Any]) -> str:
    return f"{row['score']:.2f} (95% CI {row['ci_low']:.2f}-{row['ci_high']:.2f}, n={row['n']})"


def _settle(row: Mapping[str, Any], threshold: float) -> str:
    needed = records_to_settle(row["score"], row["ci_low"], row["ci_high"], row["n"], threshold)
    if needed is None:
        return "it sits on the threshold: more records will not settle it"
    return f"about {needed} eval records (now {row['n']}) would settle it"


def _comparison_sentence(comparison: Comparison) -> str:
    reference, other = (f"{name} ({experiment})" for name, experiment in (comparison.reference, comparison.other))
    verdict = "a real difference" if comparison.distinguishable else "not distinguishable on these records"
    return (
        f"{reference} minus {other} (the next row) on their {comparison.shared_records} shared records: "
        f"{comparison.difference:+.2f} (95% CI {comparison.ci_low:+.2f} to {comparison.ci_high:+.2f}), {verdict}."
    )


def recommend(board: pl.DataFrame, comparisons: list[Comparison], threshold: float, rule: ThresholdRule) -> str:
    """One paragraph: which row to take, how sure that is, and what would settle it."""
    rule_text = "its whole 95% interval" if rule == "lower_bound" else "its score"
    scored = board.filter(pl.col("score").is_not_null())
    best = board.filter("best")
    if best.height:
        row = best.row(0, named=True)
        cost = row["cost_vs_production"]
        sentence = (
            f"{_name(row)} reaches the threshold {threshold} ({rule_text})"
            + (f" at {cost:.1%} of the production cost" if cost is not None else "")
            + f": score {_interval(row)}"
        )
        if row["ci_low"] >= threshold:
            sentence += "; the whole interval is above the threshold."
        else:
            sentence += f"; the interval straddles the threshold, so this is not yet sure: {_settle(row, threshold)}."
    else:
        sentence = f"No candidate reaches the threshold {threshold} ({rule_text})."
        straddling = scored.filter((pl.col("ci_high") >= threshold) & (pl.col("ci_low") < threshold))
        if straddling.height:
            row = straddling.sort(pl.col("cost_vs_production").fill_null(float("inf")), -pl.col("score")).row(
                0, named=True
            )
            sentence += f" {_name(row)} might: score {_interval(row)} straddles it; {_settle(row, threshold)}."
        elif scored.height:
            sentence += (
                f" The top row, {_name(scored.row(0, named=True))}, scores {_interval(scored.row(0, named=True))}."
            )
    if comparisons:
        sentence += " " + _comparison_sentence(comparisons[0])
    return sentence
