"""Production metrics per served model (core, no Dagster) and the `production_metrics` asset."""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import polars as pl
import pytest

from flywheel_assets.core.audit import AuditRecord, Target
from flywheel_assets.core.candidates import CandidateSpec, CostProfile, FlywheelModels
from flywheel_assets.core.ingest import TimeBounds, validate_batch
from flywheel_assets.core.production_metrics import (
    PRODUCTION_METRICS_SCHEMA,
    approvals,
    day_end,
    empty_answers_by_model,
    metrics_by_served_model,
)
from resources.tracking import Tracker

DAY = "2026-11-20"
T0 = int(dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC).timestamp())
BOUNDS = TimeBounds(dt.date(2026, 1, 1), dt.date(2027, 1, 1))
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "find_store",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
ADAPTER = CandidateSpec(
    name="llama-1b",
    model_id="meta/llama-3.2-1b-instruct",
    served_as=["llama-1b-router-lora"],
    cost=CostProfile(usd_per_million_prompt_tokens=0.1, usd_per_million_completion_tokens=0.2),
)
OTHER = CandidateSpec(name="qwen-05b", cost=CostProfile(usd_per_million_prompt_tokens=0.05))


def trace(
    model: str | None,
    *,
    latency_ms: float | None = 100.0,
    content: str | None = "ok",
    calls=None,
    tools=None,
    thumbs: str | None = None,
    usage=(10, 5),
    request_model: str = "prod-70b",
    **message,
) -> str:
    answer = {"role": "assistant", "content": content, **message}
    if calls is not None:
        answer["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    record = {
        "timestamp": T0,
        "workload_id": "router",
        "client_id": "app",
        "request": {
            "model": request_model,
            "messages": [{"role": "user", "content": "hi"}],
            **({"tools": tools} if tools else {}),
        },
        "response": {
            "choices": [{"message": answer, "finish_reason": message.pop("finish_reason", "stop")}],
            **({"model": model} if model else {}),
            **({"usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}} if usage else {}),
        },
    }
    if latency_ms is not None:
        record["latency_ms"] = latency_ms
    if thumbs:
        record["feedback"] = {"thumbs": thumbs}
    return json.dumps(record)


def traces(lines: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    return validate_batch((("test", line) for line in lines), BOUNDS)


def promotion(record_id: str, candidate: CandidateSpec, at: str, action: str = "promote") -> AuditRecord:
    return AuditRecord(
        id=record_id,
        action=action,
        workload_key="router",
        at=at,
        approver="ana",
        reason="better",
        dagster_run_id="r" * 32,
        target=Target(candidate=candidate.name, experiment="customized", spec=candidate.model_dump(mode="json")),
    )


def metrics(lines: list[str], history=(), candidates=(ADAPTER, OTHER), **kw) -> dict[str, dict]:
    valid, quarantined = traces(lines)
    frame = metrics_by_served_model(
        valid,
        candidates=list(candidates),
        approved=approvals(list(history), day_end(DAY)),
        empty_answers=empty_answers_by_model(quarantined),
        **kw,
    )
    assert frame.schema == pl.Schema(PRODUCTION_METRICS_SCHEMA)
    return {row["served_model"]: row for row in frame.to_dicts()}


def test_latency_quantiles_match_numpy():
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(5, 0.8, size=997)
    rows = metrics([trace("llama-1b-router-lora", latency_ms=float(x)) for x in latencies])
    row = rows["llama-1b-router-lora"]
    for q in (50, 95, 99):
        assert row[f"latency_p{q}_s"] == pytest.approx(np.quantile(latencies / 1000, q / 100), rel=1e-12)
    assert row["requests"] == row["latency_measured"] == 997


def test_traces_without_latency_tokens_or_feedback_are_missing_not_zero():
    rows = metrics([trace("llama-1b-router-lora", latency_ms=None, usage=None) for _ in range(3)])
    row = rows["llama-1b-router-lora"]
    assert row["requests"] == 3 and row["latency_measured"] == 0
    for column in (
        "latency_p50_s",
        "latency_p95_s",
        "latency_p99_s",
        "prompt_tokens_per_request",
        "completion_tokens_per_request",
        "estimated_cost_usd",
        "thumbs_up_rate",
        "thumbs_down_rate",
        "tool_call_name_valid_rate",
        "tool_call_schema_valid_rate",
    ):
        assert row[column] is None, column
    assert row["feedback_count"] == 0 and row["tool_calls"] == 0


def test_a_model_no_promotion_approved_is_reported_not_dropped():
    history = [promotion("20261119T120000Z-aaaa", ADAPTER, "2026-11-19T12:00:00+00:00")]
    rows = metrics([trace("llama-1b-router-lora"), trace("prod-70b"), trace(None, request_model="qwen-05b")], history)
    adapter = rows["llama-1b-router-lora"]
    assert (adapter["candidate"], adapter["promotion"], adapter["approved"]) == (
        "llama-1b",
        "20261119T120000Z-aaaa",
        True,
    )
    production = rows["prod-70b"]  # the model before the flywheel: not a candidate, never approved
    assert (production["candidate"], production["promotion"], production["approved"]) == (None, None, False)
    assert production["estimated_cost_usd"] is None  # no cost profile for it
    qwen = rows["qwen-05b"]  # a configured candidate serving traffic nobody approved
    assert (qwen["candidate"], qwen["approved"]) == ("qwen-05b", False)


def test_a_promotion_after_the_day_does_not_approve_it_and_a_rollback_does():
    later = [promotion("20261121T000000Z-bbbb", ADAPTER, "2026-11-21T00:00:00+00:00")]
    assert not metrics([trace("meta/llama-3.2-1b-instruct")], later)["meta/llama-3.2-1b-instruct"]["approved"]
    history = [
        promotion("a", OTHER, "2026-11-01T00:00:00+00:00"),
        promotion("b", ADAPTER, "2026-11-10T00:00:00+00:00"),
        promotion("c", OTHER, "2026-11-15T00:00:00+00:00", action="rollback"),
    ]
    rows = metrics([trace("qwen-05b"), trace("llama-1b")], history)
    assert rows["qwen-05b"]["promotion"] == "c"  # the latest record that put it in production
    assert rows["llama-1b"]["promotion"] == "b"


def test_cost_tokens_and_feedback():
    rows = metrics(
        [
            trace("llama-1b", usage=(100, 50), thumbs="up"),
            trace("llama-1b", usage=(300, 150), thumbs="down"),
            trace("llama-1b", usage=None, thumbs="up"),
            trace("llama-1b", usage=(200, 100)),
        ]
    )
    row = rows["llama-1b"]
    assert row["prompt_tokens_per_request"] == 200 and row["completion_tokens_per_request"] == 100
    assert row["estimated_cost_usd"] == pytest.approx((600 * 0.1 + 300 * 0.2) / 1e6)
    assert row["feedback_count"] == 3
    assert row["thumbs_up_rate"] == pytest.approx(2 / 3) and row["thumbs_down_rate"] == pytest.approx(1 / 3)


def test_tool_calls_are_checked_against_the_offered_tools_and_their_schemas():
    rows = metrics(
        [
            trace("llama-1b", content=None, tools=TOOLS, calls=[("get_order_status", '{"order_id": "A1"}')]),
            trace("llama-1b", content=None, tools=TOOLS, calls=[("get_order_status", '{"order_id": "A1"}')]),
            trace("llama-1b", content=None, tools=TOOLS, calls=[("get_order_status", '{"order": 3}')]),  # schema
            trace("llama-1b", content=None, tools=TOOLS, calls=[("find_store", '{"city": ')]),  # not JSON
            trace(
                "llama-1b",
                content=None,
                tools=TOOLS,
                calls=[("cancel_order", "{}"), ("find_store", '{"city": "Oslo"}')],
            ),
            trace("llama-1b", content="Your order shipped."),  # no tools: not a tool call
        ]
    )
    row = rows["llama-1b"]
    assert row["tool_calls"] == 6
    assert row["tool_call_name_valid_rate"] == pytest.approx(5 / 6)
    assert row["tool_call_schema_valid_rate"] == pytest.approx(3 / 6)


def test_each_record_is_checked_against_the_tools_it_offered():
    """Same tool names, another schema (a new version of the agent) or other formatting:
    each record is judged by its own tools, not by the first record's."""
    v2 = json.loads(json.dumps(TOOLS))
    v2[0]["function"]["parameters"]["required"] = ["order_number"]
    compact = json.dumps(
        json.loads(trace("llama-1b", content=None, tools=TOOLS, calls=[("get_order_status", '{"order_id": "A1"}')])),
        separators=(",", ":"),
    )
    rows = metrics(
        [
            trace("llama-1b", content=None, tools=TOOLS, calls=[("get_order_status", '{"order_id": "A1"}')]),
            trace(
                "llama-1b", content=None, tools=v2, calls=[("get_order_status", '{"order_id": "A1"}')]
            ),  # misses order_number
            compact,
        ]
    )
    row = rows["llama-1b"]
    assert row["tool_calls"] == 3 and row["tool_call_name_valid_rate"] == 1.0
    assert row["tool_call_schema_valid_rate"] == pytest.approx(2 / 3)


def test_empty_and_refused_answers():
    rows = metrics(
        [
            trace("llama-1b", content="I'm sorry, but I can't help with that."),
            trace("llama-1b", content="Here you go", refusal="policy"),
            trace("llama-1b", content="partial", finish_reason="content_filter"),
            trace("llama-1b", content="Sure: the store opens at 9."),
            trace("llama-1b", content=""),  # quarantined as empty_response, still a request of llama-1b
            trace("llama-1b", content="I'm sorry to hear that; your refund is on its way."),
        ]
    )
    row = rows["llama-1b"]
    assert row["requests"] == 6
    assert row["empty_or_refused_rate"] == pytest.approx(4 / 6)


def test_an_answer_field_of_another_type_is_read_as_its_json_text():
    """A refusal given as an object (or a model as a number) is no reason to quarantine the
    trace: every figure is still computed, the odd record included."""
    lines = [
        trace("llama-1b", content="I cannot help with that."),
        trace("llama-1b", content="Sure."),
        trace("llama-1b", content="Fine", refusal={"category": "violence"}),
        trace(3, content="Fine"),  # a number as the model: served as "3", its JSON text
    ]
    rows = metrics(lines)
    row = rows["llama-1b"]
    assert row["requests"] == 3 and row["empty_or_refused_rate"] == pytest.approx(2 / 3)
    assert rows["3"]["requests"] == 1


def test_served_names_must_not_be_claimed_twice():
    with pytest.raises(ValueError, match="belongs to candidates"):
        FlywheelModels(candidates=[ADAPTER, CandidateSpec(name="other", model_id="meta/llama-3.2-1b-instruct")])


def test_sample_traffic_one_row_per_served_model():
    from flywheel_assets.sample_data import generate_records

    valid, _ = traces(list(generate_records(400, seed=3, days=1, end_date=DAY, workloads="tool_router")))
    frame = metrics_by_served_model(valid, candidates=[ADAPTER], approved={})
    assert frame.get_column("requests").sum() == valid.height
    assert frame.get_column("served_model").n_unique() == frame.height
    assert not frame.get_column("approved").any()
    assert frame.get_column("tool_call_name_valid_rate").drop_nulls().min() > 0.9


# ------------------------------------------------------------------------- the asset
LOGGED = []


class RecordingTracker(Tracker):
    """W&B on, recording what would be logged."""

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request):
        LOGGED.append(request)
        return {"name": request.name, "type": request.type, "digest": "e" * 32}


def test_the_ingest_job_records_production_metrics_per_partition_with_promotions(tmp_path, monkeypatch, capsys):
    """A real instance: one promotion recorded for workload `router`, an ingest run over two
    days; the adapter's traffic is tied to it, the old production model is flagged, and
    `flywheel-audit` shows both."""
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from flywheel_assets import audit_cli
    from flywheel_assets.definitions import ASSETS, build_resources
    from flywheel_assets.jobs import ingest_job
    from flywheel_assets.lineage import AUDIT_METADATA_KEY
    from resources.tracking import WANDB_METADATA_KEY

    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [(today - dt.timedelta(days=2 - d)) for d in range(2)]
    (tmp_path / "traces").mkdir()
    for day in days:
        lines = [json.loads(trace("llama-1b-router-lora", latency_ms=100.0 + i)) for i in range(5)]
        lines += [json.loads(trace("prod-70b", latency_ms=None))]
        for i, record in enumerate(lines):
            record["timestamp"] = int(day.timestamp()) + 3600 + i
        (tmp_path / "traces" / f"{day.date()}.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    record = promotion(
        "20261120T000000Z-abcd1234",
        CandidateSpec(name="tiny-demo", served_as=["llama-1b-router-lora"]),
        (days[1] + dt.timedelta(hours=1)).isoformat(),
    )
    tracker = RecordingTracker()
    defs = dg.Definitions(
        assets=ASSETS,
        jobs=[ingest_job],
        resources={**build_resources(tmp_path, tmp_path / "traces"), "tracker": tracker},
    )
    promoted_ref = {"name": "promoted_model.router", "type": "model", "digest": "d" * 32}
    first, last = (f"{day.date()}|router" for day in days)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions("workload", ["router"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "promoted_model",
                partition="router",
                metadata={
                    AUDIT_METADATA_KEY: dg.MetadataValue.json(record.model_dump(mode="json")),
                    WANDB_METADATA_KEY: dg.MetadataValue.json(promoted_ref),
                },
            )
        )
        run = defs.resolve_job_def("ingest").execute_in_process(
            instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        )
        assert run.success
        warnings = [
            e.message
            for e in instance.all_logs(run.run_id)
            if e.level == logging.WARNING and "no promotion approved" in e.message
        ]
        # one warning per model for the whole run, not one per partition
        assert [w.split(", in ")[0] for w in warnings] == [
            "traffic served by llama-1b-router-lora, which no promotion approved",
            "traffic served by prod-70b, which no promotion approved",
        ]
        assert "in 2 partition(s)" in warnings[1]
        events = {
            e.partition: e.metadata
            for e in (m.materialization for m in run.get_asset_materialization_events())
            if e.asset_key == dg.AssetKey("production_metrics")
        }
        assert audit_cli.main(["router"]) == 0
        audit = capsys.readouterr().out
        assert audit_cli.main(["router", "--json"]) == 0
        served = {s["served_model"]: s for s in json.loads(capsys.readouterr().out)["served_models"]}
    assert (
        f"served     llama-1b-router-lora: 10 requests on 2 days {first.split('|')[0]}..{last.split('|')[0]}, "
        f"candidate tiny-demo, promotions {record.id}"
    ) in audit
    assert (
        f"UNAPPROVED   5 requests served by llama-1b-router-lora with no promotion approving it (days {first.split('|')[0]})"
        in audit
    )
    assert "UNAPPROVED   2 requests served by prod-70b" in audit
    assert served["prod-70b"]["unapproved_requests"] == 2 and served["prod-70b"]["candidate"] is None
    assert set(events) == {first, last}
    assert events[first]["unapproved_models"].value == "llama-1b-router-lora, prod-70b"  # promoted the day after
    assert events[last]["unapproved_models"].value == "prod-70b"
    assert events[last]["promotions"].value == record.id
    # W&B: only the day a promotion approved traffic, in a run that uses the promoted model
    (logged,) = LOGGED
    assert logged.partition == last and logged.inputs == [promoted_ref] and logged.type == "production-metrics"
    assert logged.tables["production_metrics"].height == 2
    assert events[last]["wandb_artifact_version"].value.startswith("offline")
    stored = pl.read_parquet(tmp_path / "assets" / "production_metrics" / str(days[1].date()) / "router.parquet")
    rows = {r["served_model"]: r for r in stored.to_dicts()}
    assert rows["llama-1b-router-lora"]["candidate"] == "tiny-demo" and rows["llama-1b-router-lora"]["approved"]
    assert rows["llama-1b-router-lora"]["latency_p50_s"] == pytest.approx(0.102)
    assert rows["prod-70b"]["latency_p50_s"] is None and rows["prod-70b"]["latency_measured"] == 0
