"""SLOs (core/slo.py): configuration per workload, breaches with their start day and the
rollback they propose."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flywheel_assets.core.slo import SLO, find_breaches, load_monitoring, rollback_proposal


def observations(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "day": pl.String,
            "served_model": pl.String,
            "candidate": pl.String,
            "promotion": pl.String,
            "requests": pl.Int64,
            "latency_p95_s": pl.Float64,
            "tool_call_schema_valid_rate": pl.Float64,
        },
        orient="row",
    )


OBS = observations(
    [
        ("2026-11-17", "tiny-demo", "tiny-demo", "P1", 100, 1.0, 0.99),
        ("2026-11-18", "tiny-demo", "tiny-demo", "P1", 100, 6.0, 0.99),
        ("2026-11-19", "tiny-demo", "tiny-demo", "P1", 100, 7.5, 0.90),
        ("2026-11-20", "tiny-demo", "tiny-demo", "P1", 100, 8.0, None),
        ("2026-11-20", "meta/llama", None, None, 5, 9.0, 0.10),  # too few requests to judge
    ]
)


def test_a_breach_says_which_slo_by_how_much_since_when_and_for_which_version():
    breaches = find_breaches(OBS, SLO(latency_p95_s=5.0))
    (breach,) = breaches["latency_p95_s"]
    assert (breach.served_model, breach.observed, breach.limit, breach.since) == ("tiny-demo", 8.0, 5.0, "2026-11-18")
    assert breach.promotion == "P1" and breach.excess == 3.0
    text = breach.describe()
    assert "latency_p95_s of tiny-demo (candidate tiny-demo, promotion P1)" in text and "+60%" in text
    assert "since 2026-11-18" in text


def test_a_missing_figure_judges_nothing_and_unwatched_objectives_are_skipped():
    breaches = find_breaches(OBS, SLO(latency_p95_s=None, tool_call_validity=0.95))
    assert breaches["latency_p95_s"] == [] and breaches["tool_call_validity"] == []  # null on the newest day
    assert breaches["ttft_p95_s"] == []  # no telemetry column at all


def test_the_rollback_proposal_is_a_valid_run_of_the_rollback_job():
    import dagster as dg

    from flywheel_assets.definitions import defs

    (breach,) = find_breaches(OBS, SLO())["latency_p95_s"]
    proposal = rollback_proposal(breach, "tool_router", "tool_router", production_id="P1")
    rollback = proposal["rollback"]
    assert rollback["job"] == "rollback" and rollback["partition"] == "tool_router"
    job = defs.resolve_job_def("rollback")
    dg.validate_run_config(job, rollback["run_config"])
    assert "dagster job launch -w workspace.yaml -j rollback" in proposal["command"]
    # no rollback for a model that is not the current promotion
    assert rollback_proposal(breach, "tool_router", None, production_id="P2")["rollback"] is None


def test_configuration_per_workload_over_defaults(tmp_path):
    path = tmp_path / "monitoring.json"
    path.write_text(
        json.dumps(
            {
                "default": {"slo": {"latency_p95_s": 2.0}},
                "workloads": {
                    "support_chat": {"slo": {"latency_p95_s": 4.0, "tokens_per_s": 20}, "drift": {"tool_mix_js": 0.5}}
                },
            }
        )
    )
    config = load_monitoring(path)
    assert config.for_workload("tool_router").slo.latency_p95_s == 2.0
    chat = config.for_workload("support_chat")
    assert (chat.slo.latency_p95_s, chat.slo.tokens_per_s, chat.drift.tool_mix_js) == (4.0, 20, 0.5)
    assert chat.slo.thumbs_down_rate == 0.25  # a default it does not override


def test_a_misspelled_setting_fails_naming_the_file(tmp_path):
    path = tmp_path / "monitoring.json"
    path.write_text(json.dumps({"workloads": {"wa": {"slo": {"latency_p59_s": 2.0}}}}))
    with pytest.raises(ValueError, match=r"FLYWHEEL_MONITORING=.*latency_p59_s"):
        load_monitoring(path)


def test_engine_slos_are_judged_on_the_days_serving_telemetry_of_the_same_model():
    from flywheel_assets.core.slo import daily_observations
    from flywheel_assets.core.telemetry import TELEMETRY_SCHEMA

    def telemetry(**figures):
        row = dict.fromkeys(TELEMETRY_SCHEMA) | {"model": "tiny-demo"} | figures
        return pl.DataFrame([row], schema=TELEMETRY_SCHEMA)

    metrics = {
        day: OBS.filter((pl.col("day") == day) & (pl.col("served_model") == "tiny-demo")).drop("day")
        for day in ("2026-11-19", "2026-11-20")
    }
    observations = daily_observations(
        metrics,
        {
            "2026-11-19": telemetry(ttft_p95_s=2.0, error_rate=0.0),
            "2026-11-20": telemetry(
                ttft_p95_s=3.0, error_rate=0.0, generation_tokens_per_s=5.0, requests_waiting_max=90.0
            ),
        },
    )
    breaches = find_breaches(observations, SLO(tokens_per_s=10))
    assert [(b.observed, b.since) for b in breaches["ttft_p95_s"]] == [(3.0, "2026-11-19")]
    assert [b.observed for b in breaches["tokens_per_s"]] == [5.0] and "below the limit 10" in breaches["tokens_per_s"][
        0
    ].describe()
    assert [b.observed for b in breaches["queue_depth"]] == [90.0]
    assert breaches["error_rate"] == []
