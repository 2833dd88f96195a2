"""Days of `raw_traces` stored by an older version (before the answer's quality columns)
still curate beside days stored now, in one look-back window."""

import json

import dagster as dg
import polars as pl

from flywheel_assets.core.ingest import QUALITY_COLUMNS
from flywheel_assets.definitions import ASSETS, build_resources
from partitions.slices import trace_partition_key

DAYS = ("2025-11-19", "2025-11-20")


def test_a_window_of_old_and_new_stored_days_curates(tmp_path):
    (tmp_path / "traces").mkdir()
    records = [
        {
            "timestamp": 1_763_510_400 + 86_400 * (i % 2) + 60 * i,  # both days, alternating
            "workload_id": "mixed",
            "client_id": "app",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"question number {i}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
        }
        for i in range(40)
    ]
    (tmp_path / "traces" / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    resources = build_resources(tmp_path, tmp_path / "traces")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["mixed"])
        for day in DAYS:
            dg.materialize(
                ASSETS,
                selection=["raw_traces", "quarantined_traces"],
                partition_key=trace_partition_key(day, "mixed"),
                instance=instance,
                resources=resources,
            )
        (older,) = [p for p in tmp_path.rglob("*.parquet") if "raw_traces" in p.parts and DAYS[0] in p.parts]
        pl.read_parquet(older).drop(QUALITY_COLUMNS).write_parquet(older)  # as an older version stored it

        result = dg.materialize(
            ASSETS,
            selection=["workload_dataset"],
            partition_key="mixed",
            instance=instance,
            resources=resources,
            run_config={"ops": {"workload_dataset": {"config": {"min_records": 1}}}},
        )
    (materialization,) = result.asset_materializations_for_node("workload_dataset")
    assert materialization.metadata["records_out"].value == 40
