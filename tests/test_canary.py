"""Canary analysis (core/canary.py) on simulated per-request traffic, seeded: false alarms
when nothing differs and power against a 2x latency regression (the issue's acceptance)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from flywheel_assets.core.canary import CanaryPolicy, VersionTraffic, analyse_canary, request_values, verdict

POLICY = CanaryPolicy()


def simulate(rng: np.random.Generator, name: str, n: int, latency_factor: float = 1.0) -> VersionTraffic:
    """Traffic like the sample generator's tool_router: lognormal latency (median 0.65 s,
    sigma 0.35), feedback on 10% of requests with 15% thumbs down, 2% invalid tool calls,
    cost from token counts."""
    latency = rng.lognormal(math.log(0.65 * latency_factor), 0.35, n)
    feedback = rng.random(n) < 0.10
    down = feedback & (rng.random(n) < 0.15)
    invalid = rng.random(n) < 0.02
    tokens = rng.normal(420, 40, n)
    return VersionTraffic(
        served_model=name,
        latency_s=latency,
        thumbs_down=int(down.sum()),
        thumbs_up=int((feedback & ~down).sum()),
        tool_calls_valid=int((~invalid).sum()),
        tool_calls_invalid=int(invalid.sum()),
        cost_usd=tokens * 0.88 / 1e6,
    )


def roll_back_share(latency_factor: float, n: int, trials: int = 200) -> float:
    rolled_back = 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        outcome, *_ = verdict(simulate(rng, "old", n), simulate(rng, "new", n, latency_factor), POLICY)
        rolled_back += outcome == "roll_back"
    return rolled_back / trials


def test_no_real_difference_rolls_back_in_at_most_5_percent_of_200_trials():
    assert roll_back_share(1.0, 500) <= 0.05


def test_a_2x_latency_regression_rolls_back_in_at_least_95_percent_of_200_trials():
    assert roll_back_share(2.0, 500) >= 0.95


def test_too_little_traffic_keeps_watching_and_says_how_much_more():
    rng = np.random.default_rng(1)
    result = analyse_canary(simulate(rng, "old", 400), simulate(rng, "new", 120, 2.0), POLICY)
    assert result.verdict == "keep_watching"
    assert result.more_requests_needed == {"new": 180}
    assert "180 more requests of new" in result.reason


def test_a_verdict_comes_with_intervals_and_names_the_regressed_metric():
    rng = np.random.default_rng(2)
    result = analyse_canary(simulate(rng, "old", 500), simulate(rng, "new", 500, 2.0), POLICY)
    assert result.verdict == "roll_back" and "latency_s" in result.reason
    table = result.table()
    latency = table.filter(pl.col("metric").str.starts_with("latency")).row(0, named=True)
    assert latency["regression"] and "p95 canary/baseline" in latency["interval"]
    assert table.filter(pl.col("metric") == "thumbs_down_rate")["interval"][0].startswith("baseline ")


def test_equal_traffic_promotes_fully():
    rng = np.random.default_rng(3)
    assert analyse_canary(simulate(rng, "old", 600), simulate(rng, "new", 600), POLICY).verdict == "promote_fully"


def test_missing_latency_and_no_feedback_are_not_tested_rather_than_zero():
    rng = np.random.default_rng(4)
    base, new = simulate(rng, "old", 400), simulate(rng, "new", 400)
    new.latency_s[:] = np.nan
    new.thumbs_down = new.thumbs_up = 0
    tests = {t.metric: t for t in analyse_canary(base, new, POLICY).tests}
    assert tests["latency_s (median)"].p_value is None and tests["latency_s (median)"].canary is None
    assert tests["thumbs_down_rate"].note.startswith("not tested")


def test_from_requests_reads_one_row_per_request():
    frame = pl.DataFrame(
        {
            "latency_s": [0.5, None, 0.7],
            "thumbs": ["down", None, "up"],
            "tool_calls_valid": [1, 0, 1],
            "tool_calls_invalid": [0, 1, 0],
            "cost_usd": [1e-4, 2e-4, None],
        }
    )
    traffic = VersionTraffic.from_requests("m", frame)
    assert traffic.requests == 3 and np.isnan(traffic.latency_s[1])
    assert (traffic.thumbs_down, traffic.thumbs_up, traffic.tool_calls_invalid) == (1, 1, 1)
    assert len(traffic.cost_usd) == 0  # a partly unknown cost is not compared


def test_request_values_judge_each_tool_call_and_price_each_request():
    import datetime as dt
    import json

    from flywheel_assets.core.candidates import CostProfile
    from flywheel_assets.core.ingest import TimeBounds, validate_batch
    from flywheel_assets.sample_data import Serving, generate_records

    records = [
        json.loads(line)
        for line in generate_records(
            20, seed=7, days=1, malformed_rate=0, workloads="tool_router", serving=Serving(served_model="tiny-demo")
        )
    ]
    call = records[0]["response"]["choices"][0]["message"]["tool_calls"][0]["function"]
    call["arguments"] = "{}"  # every tool requires arguments: invalid against its schema
    valid, _ = validate_batch((("t", r) for r in records), TimeBounds(dt.date(2025, 1, 1), dt.date(2030, 1, 1)))
    values = request_values(valid, {"tiny-demo": CostProfile(usd_per_million_prompt_tokens=1.0)}, CostProfile())
    assert values.height == 20 and set(values["served_model"]) == {"tiny-demo"}
    assert (values["tool_calls_invalid"].sum(), values["tool_calls_valid"].sum()) == (1, 19)
    assert values["cost_usd"][0] == pytest.approx(valid["prompt_tokens"][0] / 1e6)
