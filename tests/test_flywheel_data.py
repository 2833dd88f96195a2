"""The data half of the graph, materialized for real in temporary Dagster instances."""

import json

import dagster as dg
import polars as pl
import pytest

from flywheel_assets.definitions import ASSETS, build_resources, defs
from flywheel_assets.runner import run_flywheel
from flywheel_assets.sample_data import write_sample_traces
from partitions.slices import trace_partition_key


def make_resources(tmp_path):
    return build_resources(tmp_path, tmp_path / "traces")


def make_defs(tmp_path) -> dg.Definitions:
    return dg.Definitions(assets=ASSETS, resources=make_resources(tmp_path))


def latest_metadata(instance, asset: str, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
        ).records
        event = records[0].event_log_entry
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("flywheel")
    files = write_sample_traces(tmp_path / "traces", n=1500, seed=3, days=3)
    lines_written = sum(1 for f in files for line in f.read_text().splitlines() if line.strip())
    with dg.instance_for_test() as instance:
        result = run_flywheel(make_defs(tmp_path), instance, log=lambda _: None, through="split")
        yield tmp_path, instance, result, lines_written


def test_whole_data_graph_materializes(flywheel):
    tmp_path, instance, result, _ = flywheel
    assert not result.failed
    assert set(result.workloads) == {"tool_router", "support_chat", "query_rewrite"}
    for workload in result.workloads:
        train = pl.read_parquet(tmp_path / "assets" / "train_dataset" / f"{workload}.parquet")
        evals = pl.read_parquet(tmp_path / "assets" / "eval_dataset" / f"{workload}.parquet")
        assert evals.height == 20
        assert set(train["split"]) == {"train", "validation"}
        assert not set(train["record_id"]) & set(evals["record_id"])
        lines = (tmp_path / "datasets" / "splits" / workload / "train.jsonl").read_text().splitlines()
        first = json.loads(lines[0])
        assert first["messages"][-1]["role"] == "assistant"
    tool_eval = pl.read_parquet(tmp_path / "assets" / "eval_dataset" / "tool_router.parquet")
    assert set(tool_eval["workload_type"]) == {"tool_calling"}


def test_nothing_is_lost_between_source_and_raw_traces(flywheel):
    tmp_path, instance, result, lines_written = flywheel
    valid = pl.read_parquet(tmp_path / "assets" / "raw_traces" / "*" / "*.parquet")
    quarantined = pl.read_parquet(tmp_path / "assets" / "quarantined_traces" / "*" / "*.parquet")
    unattributed = pl.read_parquet(tmp_path / "landing" / "*" / "day=unattributed" / "*" / "*.parquet")
    assert valid.height + quarantined.height + unattributed.height == lines_written
    assert quarantined.height > 0
    assert set(quarantined["reason"]) <= {
        "bad_json",
        "oversized",
        "missing_field",
        "wrong_type",
        "not_chat_request",
        "empty_response",
    }


def test_metadata_tells_an_auditor_what_happened(flywheel):
    _, instance, _, _ = flywheel
    curated = latest_metadata(instance, "workload_dataset", "tool_router")
    assert (
        curated["records_in"]
        == curated["duplicates"]
        + curated["records_out"]
        + curated["removed_without_tool_call"]
        + curated["removed_by_feedback"]
    )
    assert curated["duplicates"] > 0
    assert "user-message" in curated["dedup_key"]
    assert "card_number" in curated["redactions"]
    split = latest_metadata(instance, "train_dataset", "tool_router")
    assert split["seed"] == 42 and split["validation_records"] > 0


def test_pii_never_reaches_the_datasets(flywheel):
    tmp_path, *_ = flywheel
    for path in (tmp_path / "datasets" / "splits").rglob("*.jsonl"):
        text = path.read_text()
        assert "4111 1111 1111 1111" not in text
        assert "@example.com" not in text


def test_rematerializing_unchanged_data_keeps_the_data_version(flywheel):
    tmp_path, instance, _, _ = flywheel
    before = instance.get_latest_data_version_record(dg.AssetKey("train_dataset"), partition_key="tool_router")
    dg.materialize(
        ASSETS,
        selection=["workload_dataset", "eval_dataset", "train_dataset"],
        partition_key="tool_router",
        instance=instance,
        resources=make_resources(tmp_path),
    )
    after = instance.get_latest_data_version_record(dg.AssetKey("train_dataset"), partition_key="tool_router")
    assert after.storage_id != before.storage_id
    version = lambda record: record.asset_materialization.tags["dagster/data_version"]  # noqa: E731
    assert version(after) == version(before)


def test_a_small_workload_is_blocked_with_a_remedy(tmp_path):
    (tmp_path / "traces").mkdir()
    records = [
        {
            "timestamp": 1_763_600_000 + i,
            "workload_id": "tiny",
            "client_id": "app",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
        }
        for i in range(12)
    ]
    (tmp_path / "traces" / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    resources = make_resources(tmp_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["tiny"])
        day = "2025-11-20"
        dg.materialize(
            ASSETS,
            selection=["raw_traces", "quarantined_traces"],
            partition_key=trace_partition_key(day, "tiny"),
            instance=instance,
            resources=resources,
        )
        run = dg.materialize(
            ASSETS,
            selection=["workload_dataset", "eval_dataset", "train_dataset"],
            partition_key="tiny",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not run.success
        (check,) = run.get_asset_check_evaluations()
        assert not check.passed
        assert "has 12 records" in check.description and "needs 50" in check.description
        materialized = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
        assert materialized == {"workload_dataset"}


def test_definitions_load_with_every_stage():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_traces", "quarantined_traces", "workload_dataset", "eval_dataset", "train_dataset"} <= keys
    assert defs.resolve_sensor_def("drop_folder_sensor")
