"""The monitoring assets in a real Dagster instance over real files: an SLO breach fails
its WARN check with a rollback proposal and starts no run; a drift breach requests exactly
one new turn for its workload and none for the others (automation evaluated tick by tick);
the canary analysis reads both versions' traffic."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from flywheel_chain import AutomatedFlywheel

from flywheel_assets.core.audit import AuditRecord, Target
from flywheel_assets.core.candidates import DEMO_CANDIDATE
from flywheel_assets.definitions import defs
from flywheel_assets.lineage import AUDIT_METADATA_KEY
from flywheel_assets.production import DRIFT_CHECK, turn_started_by
from flywheel_assets.sample_data import Serving, generate_records
from partitions.slices import trace_partition_key
from resources.tracking import WANDB_METADATA_KEY, build_tracker

TODAY = dt.datetime.now(dt.UTC).date()
DAY1, DAY2 = (TODAY - dt.timedelta(days=3)).isoformat(), (TODAY - dt.timedelta(days=2)).isoformat()
INGEST = ["raw_traces", "quarantined_traces", "production_metrics"]
SPLITS = ["workload_dataset", "eval_dataset", "train_dataset"]


def drop(folder, workload: str, day: str, n: int, seed: int, serving: Serving | None = None) -> None:
    """Sample tool_router traffic of one day, filed under `workload`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in generate_records(
        n, seed=seed, days=1, end_date=day, malformed_rate=0, workloads="tool_router", serving=serving
    ):
        record = json.loads(line)
        record["workload_id"] = workload
        lines.append(json.dumps(record))
    (folder / f"{workload}-{day}.jsonl").write_text("\n".join(lines) + "\n")


class Flywheel(AutomatedFlywheel):
    def materialize(self, selection, partition_key):
        result = super().materialize(selection, partition_key)
        assert result.success, [e.event_specific_data for e in result.get_step_failure_events()]
        return result

    def ingest(self, day: str, *workloads: str):
        for workload in workloads:
            self.materialize(INGEST, trace_partition_key(day, workload))


@pytest.fixture
def flywheel(tmp_path, monkeypatch):
    monitoring = tmp_path / "monitoring.json"
    monitoring.write_text(json.dumps({"default": {"slo": {"latency_p95_s": 0.5}, "drift": {"recent_days": 1}}}))
    monkeypatch.setenv("FLYWHEEL_MONITORING", str(monitoring))
    with dg.DagsterInstance.ephemeral() as instance:
        yield Flywheel(tmp_path, instance)


def promote(instance, workload: str, at: str) -> AuditRecord:
    """A promotion's audit record as the `promote` job records it (its metadata)."""
    record = AuditRecord(
        id=f"{at.replace('-', '')}T000000Z-test0000",
        action="promote",
        workload_key=workload,
        workload_id=workload,
        target=Target(candidate="tiny-demo", experiment="customized", spec=DEMO_CANDIDATE.model_dump(mode="json")),
        approver="ada",
        reason="test",
        at=f"{at}T00:00:00+00:00",
        dagster_run_id="test0000",
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "promoted_model",
            partition=workload,
            metadata={AUDIT_METADATA_KEY: dg.MetadataValue.json(record.model_dump(mode="json"))},
        )
    )
    return record


def test_an_slo_breach_fails_its_warn_check_with_a_rollback_proposal_and_starts_no_run(flywheel):
    fw = flywheel
    fw.instance.add_dynamic_partitions("workload", ["wa"])
    record = promote(fw.instance, "wa", DAY1)
    drop(fw.traces, "wa", DAY1, 80, 1, Serving(served_model="tiny-demo"))
    drop(fw.traces, "wa", DAY2, 80, 2, Serving(served_model="tiny-demo"))
    fw.ingest(DAY1, "wa")
    fw.ingest(DAY2, "wa")
    run = fw.materialize(["production_slos"], "wa")
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    latency = checks["slo_latency_p95_s"]
    assert not latency.passed and latency.severity == dg.AssetCheckSeverity.WARN
    metadata = {k: v.value for k, v in latency.metadata.items()}
    assert metadata["slo"] == "latency_p95_s" and metadata["limit"] == 0.5 and metadata["observed"] > 0.5
    assert metadata["since"] == DAY1 and metadata["promotion"] == record.id and metadata["served_model"] == "tiny-demo"
    proposal = metadata["rollback_run_config"]
    assert proposal["job"] == "rollback" and proposal["partition"] == "wa"
    dg.validate_run_config(defs.resolve_job_def("rollback"), proposal["run_config"])
    assert "dagster job launch -w workspace.yaml -j rollback" in metadata["rollback_command"]
    assert checks["slo_thumbs_down_rate"].passed and checks["slo_ttft_p95_s"].passed
    assert "nothing judged" in checks["slo_ttft_p95_s"].description  # no telemetry: missing, not "within"
    # proposes, never acts: no rollback (or promotion) run, now or on any automation tick
    for _ in range(3):
        assert "promoted_model" not in fw.tick()
    # new engine telemetry of the day: the SLOs are judged again, still nothing acts
    fw.instance.report_runless_asset_event(
        dg.AssetMaterialization("serving_telemetry", partition=DAY2, tags={"dagster/data_version": "telemetry-1"})
    )
    requested = fw.tick()
    assert requested.get("production_slos") == {"wa"} and "promoted_model" not in requested
    assert fw.instance.get_runs(dg.RunsFilter(job_name="rollback")) == []
    assert fw.instance.get_runs(dg.RunsFilter(job_name="promote")) == []


def test_nothing_automated_selects_promoted_model():
    graph = defs.resolve_asset_graph()
    for sensor in defs.sensors or []:
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            assert dg.AssetKey("promoted_model") not in sensor.asset_selection.resolve(graph)
        else:
            assert all("rollback" != job.name and "promote" != job.name for job in sensor.jobs), sensor.name
    assert all(s.job_name not in ("rollback", "promote") for s in defs.schedules or [])


def test_a_drift_breach_requests_exactly_one_new_turn_for_its_workload(flywheel):
    fw = flywheel
    fw.instance.add_dynamic_partitions("workload", ["wa", "wb"])
    assert fw.tick() == {}  # the first tick records the state
    drop(fw.traces, "wa", DAY1, 150, 1)
    drop(fw.traces, "wb", DAY1, 150, 2)
    fw.ingest(DAY1, "wa", "wb")
    for workload in ("wa", "wb"):
        fw.materialize(SPLITS, workload)
    # new traffic: a drifted tool mix for wa, the same as before for wb; the datasets follow it
    drop(fw.traces, "wa", DAY2, 150, 3, Serving(drift=True))
    drop(fw.traces, "wb", DAY2, 150, 4)
    fw.ingest(DAY2, "wa", "wb")
    for workload in ("wa", "wb"):
        fw.materialize(SPLITS, workload)
    for _ in range(3):  # what the new data requested (training, monitoring) is not run here
        fw.tick()
    assert not any(name in SPLITS for name in fw.tick())

    drifted = fw.materialize(["traffic_drift"], "wa")
    (check,) = drifted.get_asset_check_evaluations()
    assert check.check_name == DRIFT_CHECK and not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "unseen_tool_share" in check.metadata["breached"].value
    (steady,) = fw.materialize(["traffic_drift"], "wb").get_asset_check_evaluations()
    assert steady.passed, steady.description

    # the leaderboard of the turn will say what started it
    assert turn_started_by(fw.instance, "wa")["turn_started_by"].startswith("drift: ")
    assert turn_started_by(fw.instance, "wb") == {"turn_started_by": "new data"}
    requested = fw.tick()
    assert {name: keys for name, keys in requested.items() if name in SPLITS} == {name: {"wa"} for name in SPLITS}, (
        requested
    )
    assert all(keys <= {"wa"} for name, keys in requested.items() if name in SPLITS)
    fw.materialize(SPLITS, "wa")
    for _ in range(2):  # one turn per breach: the breach goes on, nothing more is requested
        assert not any(name in SPLITS for name in fw.tick())
    again = fw.materialize(["traffic_drift"], "wa")
    assert not again.get_asset_check_evaluations()[0].passed
    assert not any(name in SPLITS for name in fw.tick())


def test_the_canary_compares_both_versions_of_the_same_window(flywheel, tmp_path):
    fw = flywheel
    fw.resources["tracker"] = build_tracker(tmp_path, {"WANDB_MODE": "offline"})  # logged when W&B is on
    fw.instance.add_dynamic_partitions("workload", ["wa"])
    promote(fw.instance, "wa", DAY1)
    drop(
        fw.traces,
        "wa",
        DAY2,
        800,
        5,
        Serving(
            served_model="meta/llama-3.3-70b-instruct",
            canary_model="tiny-demo",
            canary_share=0.5,
            canary_latency_factor=2.0,
        ),
    )
    fw.ingest(DAY2, "wa")
    run = fw.materialize(["canary_analysis"], "wa")
    metadata = {k: v.value for k, v in run.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert metadata["canary"].startswith("tiny-demo (") and metadata["baseline"].startswith(
        "meta/llama-3.3-70b-instruct"
    )
    assert metadata["verdict"] == "roll_back" and "latency_s" in metadata["reason"]
    assert "p95 canary/baseline" in metadata["tests"]
    assert metadata[WANDB_METADATA_KEY]["name"] == "canary_analysis.wa"
