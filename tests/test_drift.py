"""Drift (core/drift.py) of recent traffic against a train split built by the real
curation and split code from the sample generator's traffic."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from flywheel_assets.core.curation import curate
from flywheel_assets.core.drift import measure_drift, recent_requests, split_requests
from flywheel_assets.core.ingest import TimeBounds, validate_batch
from flywheel_assets.core.slo import DriftThresholds
from flywheel_assets.core.splitting import SplitConfig, split_dataset
from flywheel_assets.sample_data import Serving, generate_records

BOUNDS = TimeBounds(dt.date(2025, 1, 1), dt.date(2030, 1, 1))


def traces(n: int, seed: int, end: str, serving: Serving | None = None, workloads: str = "tool_router") -> pl.DataFrame:
    lines = generate_records(n, seed=seed, days=2, end_date=end, malformed_rate=0, workloads=workloads, serving=serving)
    valid, _ = validate_batch((("sample", line) for line in lines), BOUNDS)
    return valid


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    dataset, _ = curate(traces(600, 0, "2026-11-10").lazy(), redact=False)
    return split_requests(split_dataset(dataset.collect(), SplitConfig(max_records=None)))


def test_traffic_like_the_training_data_is_within_thresholds(reference):
    result = measure_drift(recent_requests(traces(400, 1, "2026-11-20")), reference, DriftThresholds())
    assert result.judged and result.breached == [], result.table()
    assert result.measures["tool_mix_js"] < 0.1 and result.measures["unseen_tool_share"] == 0.0
    assert result.signature("v1") == "within-thresholds"


def test_a_drifted_tool_mix_with_a_new_tool_breaches(reference):
    recent = recent_requests(traces(400, 2, "2026-11-20", Serving(served_model="tiny-demo", drift=True)))
    result = measure_drift(recent, reference, DriftThresholds())
    assert {"tool_mix_js", "unseen_tool_share"} <= set(result.breached), result.table()
    assert result.unseen_tools == ["exchange_item"]
    assert 0.35 < result.measures["unseen_tool_share"] < 0.45
    assert result.measures["novel_prompt_share"] > 0.2  # "exchange ... size" was never asked
    # one signature per breach of one reference: an ongoing breach does not request again
    assert result.signature("v1") == result.signature("v1") != result.signature("v2")


def test_longer_prompts_move_the_length_statistic(reference):
    recent = recent_requests(traces(300, 3, "2026-11-20")).with_columns(pl.col("prompt") + " " + pl.col("prompt"))
    result = measure_drift(recent, reference, DriftThresholds())
    assert "prompt_length_ks" in result.breached and "tool_mix_js" not in result.breached


def test_too_little_recent_traffic_is_not_judged(reference):
    result = measure_drift(recent_requests(traces(30, 4, "2026-11-20")), reference, DriftThresholds(min_requests=100))
    assert not result.judged and result.breached == [] and "needs 100" in result.note
    assert result.signature("v1") == "not-judged"


def test_chat_traffic_has_no_tool_measures(reference):
    chat = split_requests(
        split_dataset(
            curate(traces(300, 5, "2026-11-10", workloads="support_chat").lazy(), redact=False)[0].collect(),
            SplitConfig(max_records=None),
        )
    )
    result = measure_drift(
        recent_requests(traces(200, 6, "2026-11-20", workloads="support_chat")), chat, DriftThresholds()
    )
    assert result.measures["tool_mix_js"] is None and result.breached == []
