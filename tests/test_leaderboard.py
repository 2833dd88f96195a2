"""The leaderboard's logic without Dagster: intervals that cover the true rate, the
threshold rule, how many records would settle a straddling row, paired comparisons on
shared records, tool-calling columns when the evaluations have them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flywheel_assets.core.candidates import CostProfile
from flywheel_assets.core.leaderboard import (
    TOOL_COLUMNS,
    gather_evals,
    leaderboard_report,
    paired_difference,
    records_to_settle,
    score_interval,
)

PRODUCTION = CostProfile(usd_per_million_prompt_tokens=10, usd_per_million_completion_tokens=30)
COSTS = {"small": CostProfile(usd_per_million_prompt_tokens=1), "large": CostProfile(usd_per_million_prompt_tokens=5)}
WORKLOAD = pl.DataFrame(
    {"workload_type": ["tool_calling"] * 3, "prompt_tokens": [100] * 3, "completion_tokens": [20] * 3}
)


def eval_rows(scores, *, ids=None, **extra) -> pl.DataFrame:
    n = len(scores)
    return pl.DataFrame(
        {
            "record_id": ids or [f"r{i:03d}" for i in range(n)],
            "function_name_accuracy": [float(s) for s in scores],
            "function_name_and_args_accuracy": [float(s) for s in scores],
            "reason": [None] * n,
            "latency_s": [0.1] * n,
            "prompt_tokens": [100] * n,
            "completion_tokens": [20] * n,
            "error": [None] * n,
            **extra,
        },
        schema_overrides={"reason": pl.String, "error": pl.String},
    )


def report(evals, threshold=0.9, rule="lower_bound", workload=WORKLOAD):
    return leaderboard_report(evals, workload, costs=COSTS, production=PRODUCTION, threshold=threshold, rule=rule)


def test_bootstrap_intervals_cover_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    true_rate, n, simulations = 0.8, 60, 300
    covered = 0
    for simulation in range(simulations):
        scores = (rng.random(n) < true_rate).astype(float)
        low, high = score_interval(scores, seed=simulation, n_resamples=999)
        covered += low <= true_rate <= high
    assert 0.91 <= covered / simulations <= 0.985, covered / simulations


def test_intervals_are_seeded_and_a_perfect_score_is_not_certain():
    scores = np.array([1.0] * 15 + [0.0] * 5)
    assert score_interval(scores, seed=3) == score_interval(scores, seed=3)
    low, high = score_interval(np.ones(20))
    assert low == pytest.approx(0.839, abs=0.002) and high == pytest.approx(1.0)  # 20/20 (Wilson)
    assert score_interval(np.array([])) == (None, None)


def test_records_to_settle_a_straddling_interval():
    # half-width 0.1 at n=20, 0.05 from the threshold: half as wide needs (0.1 / 0.05)^2 = 4 times the records
    assert records_to_settle(0.95, 0.85, 1.0, 20, 0.9) == 80
    assert records_to_settle(0.85, 0.75, 0.95, 20, 0.9) == 80
    assert records_to_settle(0.97, 0.92, 1.0, 20, 0.9) is None  # already above
    assert records_to_settle(0.5, 0.4, 0.6, 20, 0.9) is None  # already below
    assert records_to_settle(0.9, 0.8, 1.0, 20, 0.9) is None  # on the threshold


def test_the_lower_bound_rule_asks_for_the_whole_interval():
    evals = {("small", "icl"): eval_rows([1] * 19 + [0]), ("large", "base"): eval_rows([1] * 20)}
    point = report(evals, rule="point")
    assert point.board.filter("best")["candidate"].to_list() == ["small"]  # cheaper, 0.95 >= 0.9
    assert "straddles the threshold, so this is not yet sure" in point.recommendation
    assert "eval records (now 20) would settle it" in point.recommendation
    bound = report(evals, rule="lower_bound")
    assert not bound.board.filter(pl.col("candidate") == "small")["meets_threshold"][0]
    assert bound.board.filter("best").height == 0  # 20/20 has a lower bound of 0.84 too
    assert bound.recommendation.startswith("No candidate reaches the threshold 0.9 (its whole 95% interval).")
    assert "**small (icl)** might" in bound.recommendation
    sure = report(evals, threshold=0.7, rule="lower_bound")
    assert sure.board.filter("best")["candidate"].to_list() == ["small"]
    assert "the whole interval is above the threshold" in sure.recommendation


def test_every_row_shows_n_and_its_interval():
    evals = {("small", "base"): eval_rows([1, 0] * 10), ("small", "icl"): eval_rows([1, 1, 0, 1] * 5)}
    board = report(evals).board
    assert board["n"].to_list() == [20, 20]
    assert (board["ci_low"] <= board["score"]).all() and (board["score"] <= board["ci_high"]).all()
    assert board["experiment"].to_list() == ["icl", "base"]  # highest score first


def test_paired_comparison_uses_only_shared_records():
    better = eval_rows([1] * 30, ids=[f"r{i}" for i in range(30)])
    worse = eval_rows([0] * 25 + [1] * 5, ids=[f"r{i}" for i in range(30)])
    shared, difference, low, high = paired_difference(better, worse, "function_name_accuracy")
    assert shared == 30 and difference == pytest.approx(25 / 30) and low > 0
    partial = eval_rows([0] * 10, ids=[f"r{i}" for i in range(20, 30)])
    assert paired_difference(better, partial, "function_name_accuracy")[:2] == (10, 1.0)
    assert paired_difference(better, eval_rows([1], ids=["other"]), "function_name_accuracy") is None


def test_the_recommendation_compares_the_best_with_the_next():
    ids = [f"r{i}" for i in range(40)]
    evals = {
        ("small", "icl"): eval_rows([1] * 39 + [0], ids=ids),
        ("large", "base"): eval_rows([1] * 38 + [0, 0], ids=ids),
        ("small", "base"): eval_rows([0] * 30 + [1] * 10, ids=ids),
    }
    result = report(evals, threshold=0.8)
    assert result.board.filter("best")["candidate"].to_list() == ["small"]
    frame = result.comparisons_frame()
    assert frame["reference"].to_list() == ["small/icl", "small/icl"]
    assert frame.filter(pl.col("other") == "small/base")["distinguishable"][0]
    assert not frame.filter(pl.col("other") == "large/base")["distinguishable"][0]
    assert "small (icl) minus large (base) (the next row) on their 40 shared records: +0.03" in result.recommendation
    assert "not distinguishable on these records" in result.recommendation


def test_tool_columns_when_the_evaluations_have_them():
    n = 4
    detailed = eval_rows(
        [1, 1, 0, 1],
        argument_precision=[1.0, 0.5, None, 1.0],
        argument_recall=[1.0, 1.0, 0.0, 0.5],
        schema_valid=[True, False, None, True],
        hallucinated_tool=[False, False, True, False],
        abstention_error=[None, None, "called a tool where production answered in text", None],
    )
    board = report({("small", "icl"): detailed, ("large", "icl"): eval_rows([1] * n)}).board
    row = board.filter(pl.col("candidate") == "small").row(0, named=True)
    assert row["argument_precision"] == pytest.approx(2.5 / 3)
    assert row["argument_recall"] == pytest.approx(2.5 / 4)
    assert row["schema_validity"] == pytest.approx(2 / 3)
    assert row["hallucination_rate"] == pytest.approx(0.25)
    assert row["abstention_error_rate"] == pytest.approx(0.25)
    plain = board.filter(pl.col("candidate") == "large").row(0, named=True)
    assert all(plain[column] is None for column in TOOL_COLUMNS)  # absent: null, not an error


def test_chat_boards_have_no_tool_columns():
    chat = pl.DataFrame({"workload_type": ["chat"], "prompt_tokens": [10], "completion_tokens": [10]})
    rows = (
        eval_rows([0.5, 0.7, 0.9])
        .rename({"function_name_accuracy": "similarity"})
        .drop("function_name_and_args_accuracy")
    )
    board = report({("small", "base"): rows}, workload=chat).board
    assert not set(TOOL_COLUMNS) & set(board.columns) and "function_name_and_args_accuracy" not in board.columns
    assert board["score"][0] == pytest.approx(0.7)


def test_gather_evals_keys_rows_by_candidate_and_experiment():
    rows = eval_rows([1])
    gathered = gather_evals(
        {"base": {"k1": rows.lazy()}, "icl": {"k1": rows, "k2": rows}}, {"k1": "small", "k2": "large"}.get
    )
    assert set(gathered) == {("small", "base"), ("small", "icl"), ("large", "icl")}
    assert all(isinstance(frame, pl.DataFrame) for frame in gathered.values())


def test_a_chat_record_the_judge_could_not_score_is_left_out_and_counted_not_scored_zero():
    judged = pl.DataFrame(
        {
            "record_id": ["r0", "r1", "r2", "r3"],
            "similarity": [0.9, 0.8, None, 0.0],  # r2: judge reply unparseable; r3: the candidate failed (0)
            "reason": [None, None, "judge reply unparseable: 7-8", "HTTP 500"],
            "latency_s": [0.1] * 4,
            "prompt_tokens": [100] * 4,
            "completion_tokens": [20] * 4,
            "error": [None, None, None, "HTTP 500"],
        }
    )
    chat = pl.DataFrame({"workload_type": ["chat"], "prompt_tokens": [100], "completion_tokens": [20]})
    row = report({("small", "base"): judged}, workload=chat).board.row(0, named=True)
    assert (row["n"], row["unscored"]) == (3, 1)
    assert row["score"] == pytest.approx((0.9 + 0.8 + 0.0) / 3)
