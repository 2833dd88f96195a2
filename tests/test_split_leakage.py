"""Near-duplicate clusters through curation and the split, and the blocking `no_leakage`
check, materialized for real in a temporary Dagster instance."""

import json
import random

import dagster as dg
import polars as pl
import pytest

from flywheel_assets.definitions import ASSETS, build_resources
from partitions.slices import trace_partition_key

WORDS = "order refund parcel address store hours coat size colour return label invoice".split()


def prompt(rng: random.Random) -> str:
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(30))


@pytest.fixture(scope="module")
def near_copies(tmp_path_factory):
    """120 distinct prompts, the first 20 with a near-copy (one word of 30 changed:
    Jaccard of word bigrams 27/31 = 0.87) landed a few minutes later."""
    tmp_path = tmp_path_factory.mktemp("leakage")
    (tmp_path / "traces").mkdir()
    rng = random.Random(5)
    prompts = [prompt(rng) for _ in range(120)]
    copies = [p.replace(p.split()[15], "changed", 1) for p in prompts[:20]]
    records = [
        {
            "timestamp": 1_763_600_000 + 60 * i,
            "workload_id": "leaky",
            "client_id": "app",
            "request": {"model": "m", "messages": [{"role": "user", "content": text}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
        }
        for i, text in enumerate(prompts + copies)
    ]
    (tmp_path / "traces" / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    resources = build_resources(tmp_path, tmp_path / "traces")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["leaky"])
        dg.materialize(
            ASSETS,
            selection=["raw_traces", "quarantined_traces"],
            partition_key=trace_partition_key("2025-11-20", "leaky"),
            instance=instance,
            resources=resources,
        )

        def split(near_duplicate_threshold: float) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                ASSETS,
                selection=["workload_dataset", "eval_dataset", "train_dataset"],
                partition_key="leaky",
                instance=instance,
                resources=resources,
                raise_on_error=False,
                run_config={
                    "ops": {
                        "workload_dataset": {
                            "config": {
                                "near_duplicate_threshold": near_duplicate_threshold,
                                "min_records": 1,
                            }
                        }
                    }
                },
            )

        yield tmp_path, split


def checks(run: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(c.asset_key.to_user_string(), c.check_name): c for c in run.get_asset_check_evaluations()}


def test_curation_reports_the_clusters_and_the_split_keeps_each_on_one_side(near_copies):
    tmp_path, split = near_copies
    run = split(0.8)
    assert run.success
    curated = next(
        e for e in run.get_asset_materialization_events() if e.asset_key.to_user_string() == "workload_dataset"
    ).materialization.metadata
    assert curated["near_duplicate_clusters"].value == 20
    assert curated["records_in_near_duplicate_clusters"].value == 40
    assert "largest_near_duplicate_clusters" in curated
    dataset = pl.read_parquet(tmp_path / "assets" / "workload_dataset" / "leaky.parquet")
    assert dataset.height == 140 and dataset["near_duplicate_cluster"].n_unique() == 120
    evals = pl.read_parquet(tmp_path / "assets" / "eval_dataset" / "leaky.parquet")
    train = pl.read_parquet(tmp_path / "assets" / "train_dataset" / "leaky.parquet")
    cluster = dict(dataset.select("record_id", "near_duplicate_cluster").iter_rows())
    assert not {cluster[r] for r in evals["record_id"]} & {cluster[r] for r in train["record_id"]}
    for asset in ("eval_dataset", "train_dataset"):
        check = checks(run)[(asset, "no_leakage")]
        assert check.passed and check.metadata["leaking_eval_records"].value == []


def test_a_near_copy_across_the_split_blocks_it_with_the_offending_ids(near_copies):
    _, split = near_copies
    # curation that only clusters copies closer than 0.95 leaves the 0.87 copies apart
    run = split(0.95)
    assert not run.success
    check = checks(run)[("eval_dataset", "no_leakage")]
    assert not check.passed
    leaking = check.metadata["leaking_eval_records"].value
    assert leaking and "near_duplicate_threshold at or below 0.8" in check.description
    assert all(record_id in check.metadata["pairs"].value for record_id in leaking)
