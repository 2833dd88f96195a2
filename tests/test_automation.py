"""Declarative automation of the graph, evaluated with Dagster's own
`evaluate_automation_conditions` tick by tick (cursor carried over, as the sensor does);
plus the automation sensors and the opt-in weekly schedules in the definitions."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from flywheel_chain import AutomatedFlywheel

from flywheel_assets.definitions import ASSETS, defs
from flywheel_assets.production import MONITORING_ASSETS
from partitions.slices import trace_partition_key

DAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()
T0 = int(dt.datetime(DAY.year, DAY.month, DAY.day, 9, tzinfo=dt.UTC).timestamp())
INGEST = ["raw_traces", "quarantined_traces"]
SPLITS = ["workload_dataset", "eval_dataset", "train_dataset"]
GPU = ["lora_adapter", "base_eval", "icl_eval", "customized_eval"]


def write_workload(folder, workload: str, n: int, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "timestamp": T0 + i,
            "workload_id": workload,
            "client_id": "app",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"{workload} question {i}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
        }
        for i in range(n)
    ]
    (folder / name).write_text("\n".join(json.dumps(r) for r in records) + "\n")


class Flywheel(AutomatedFlywheel):
    """The monitoring assets follow the traffic too; tests/test_production.py covers them."""

    def __init__(self, tmp_path, instance):
        super().__init__(tmp_path, instance, ignored=tuple(MONITORING_ASSETS))


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory):
    """The state reached by the cascade test; the later tests go on from it."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield Flywheel(tmp_path_factory.mktemp("automation"), instance)


def cascade(fw, workload: str) -> dict[str, set]:
    """Materialize what each tick requests for `workload`, stage by stage (the dataset and
    its splits in one run; training once a split's data version changed); the GPU stage is
    not run here."""
    requested = fw.tick()
    # one run, not two a tick apart; the leaderboard waits for new evaluations
    assert requested == {name: {workload} for name in SPLITS}
    assert fw.materialize(SPLITS, workload).success
    return fw.tick()


def test_new_traces_request_the_dataset_then_splits_then_training(flywheel):
    fw = flywheel
    write_workload(fw.traces, "wa", 60, "wa.jsonl")
    fw.instance.add_dynamic_partitions("workload", ["wa"])
    assert fw.tick() == {}  # the first tick only records the state: no flood over history
    assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "wa")).success
    requested = cascade(fw, "wa")
    assert set(requested) == set(GPU) and requested["lora_adapter"] == {"tiny-demo|wa"}
    assert fw.tick() == {}  # requested once, not on every tick


def test_an_unchanged_split_requests_no_training(flywheel):
    fw = flywheel
    # the same traces re-ingested, the datasets rebuilt: new materializations, same data versions
    assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "wa")).success
    assert fw.tick() == {}  # raw_traces' data version did not change either
    assert fw.materialize(["workload_dataset"], "wa").success
    assert fw.tick() == {}
    assert fw.materialize(["eval_dataset", "train_dataset"], "wa").success
    assert fw.tick() == {}


def test_changed_traces_request_the_cascade_again(flywheel):
    fw = flywheel
    write_workload(fw.traces, "wa", 70, "wa.jsonl")  # 10 more records in the same file
    assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "wa")).success
    assert set(cascade(fw, "wa")) == set(GPU)


def test_a_failed_blocking_check_requests_no_training(flywheel):
    fw = flywheel
    write_workload(fw.traces, "tiny", 12, "tiny.jsonl")
    fw.instance.add_dynamic_partitions("workload", ["tiny"])
    assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "tiny")).success
    # a new workload: its whole (missing) chain is requested at once, as one run
    assert {"workload_dataset", "eval_dataset", "train_dataset"} <= set(fw.tick())
    run = fw.materialize(SPLITS, "tiny")  # the dataset is recorded, its blocking check fails
    (check,) = run.get_asset_check_evaluations()
    assert not run.success and check.check_name == "has_min_records" and not check.passed
    assert {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()} == {"workload_dataset"}
    for _ in range(2):
        requested = fw.tick()
        training = {k: v for k, v in requested.items() if k in SPLITS + GPU}
        assert not any("tiny" in str(keys) for keys in training.values()), requested


def test_the_leaderboard_condition_waits_for_new_evaluations(tmp_path):
    """`refresh_when_evaluations_changed` (proposed for report.py): a new dataset alone
    does not rebuild the leaderboard from the previous dataset's evaluations."""
    from sensors.automation import refresh_when_evaluations_changed

    assets = [
        a.map_asset_specs(lambda s: s.replace_attributes(automation_condition=refresh_when_evaluations_changed))
        if dg.AssetKey("leaderboard") in a.keys
        else a
        for a in ASSETS
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        fw = Flywheel(tmp_path, instance)
        fw.defs = dg.Definitions(assets=assets, resources=fw.resources)
        write_workload(fw.traces, "wb", 60, "wb.jsonl")
        instance.add_dynamic_partitions("workload", ["wb"])
        fw.tick()
        assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "wb")).success
        assert fw.tick() == {name: {"wb"} for name in SPLITS}  # no leaderboard yet
        assert fw.materialize(["workload_dataset"], "wb").success
        assert "leaderboard" not in fw.tick()  # a new dataset alone does not rebuild it


def test_a_new_workload_requests_nothing_before_its_inputs_exist(tmp_path):
    """Seen live: the leaderboard (and the dataset) of a new workload were requested as soon
    as its partition was added, and failed on a missing input."""
    with dg.DagsterInstance.ephemeral() as instance:
        fw = Flywheel(tmp_path, instance)
        write_workload(fw.traces, "wn", 60, "wn.jsonl")
        fw.tick()  # the first tick records the state
        instance.add_dynamic_partitions("workload", ["wn"])  # as the drop-folder sensor does
        assert fw.tick() == {}
        assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), "wn")).success
        assert fw.tick() == {name: {"wn"} for name in SPLITS}  # the dataset and its splits, one run
        assert fw.materialize(SPLITS, "wn").success
        # the GPU stage, not the leaderboard: its evaluations don't exist yet
        assert set(fw.tick()) == set(GPU)
        assert fw.tick() == {}


# ------------------------------------------------------------------------ definitions
def test_every_automated_asset_is_evaluated_by_an_automation_sensor():
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.materializable_asset_keys if graph.get(k).automation_condition is not None}
    assert {dg.AssetKey(n) for n in SPLITS + GPU} <= automated
    covered = set()
    for sensor in repo.sensor_defs:
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            covered |= sensor.asset_selection.resolve(graph)
    assert automated <= covered
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {"automation_sensor", "gpu_automation_sensor", "weave_trace_sensor", "drop_folder_sensor"} <= set(sensors)
    # ours replace Dagster's default sensor (30 s ticks): each stage waits for a tick
    assert "default_automation_condition_sensor" not in sensors
    for name in ("automation_sensor", "gpu_automation_sensor"):
        assert sensors[name].minimum_interval_seconds <= 10
        # runs at once, not an asset backfill that waits for the backfill daemon's next pass
        assert not sensors[name].emit_backfills


def test_weekly_schedules_are_off_by_default_and_request_every_workload():
    repo = defs.get_repository_def()
    schedules = {s.name: s for s in repo.schedule_defs}
    weekly = {"weekly_curate_and_split", "weekly_train_and_evaluate", "weekly_leaderboard"}
    assert weekly <= set(schedules)
    assert all(schedules[n].default_status == dg.DefaultScheduleStatus.STOPPED for n in weekly)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime(2025, 11, 24, 2))
        assert isinstance(schedules["weekly_curate_and_split"](context), dg.SkipReason)
        instance.add_dynamic_partitions("workload", ["wa", "wb"])
        curate = schedules["weekly_curate_and_split"](context)
        assert [r.partition_key for r in curate] == ["wa", "wb"]
        assert schedules["weekly_curate_and_split"].job_name == "curate_and_split"
        train = schedules["weekly_train_and_evaluate"](context)
        assert sorted(str(r.partition_key) for r in train) == ["tiny-demo|wa", "tiny-demo|wb"]
        assert schedules["weekly_train_and_evaluate"].job_name == "train_and_evaluate"
        board = schedules["weekly_leaderboard"](context)
        assert [r.partition_key for r in board] == ["wa", "wb"]
        assert len({r.run_key for r in curate + train + board}) == 6
