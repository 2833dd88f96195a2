"""The model half, materialized for real: adapter + three evals + leaderboard, one workload x
one candidate, in a temporary instance (tiny demo model, short training)."""

import dagster as dg
import pytest
from flywheel_chain import materialize_quietly

from flywheel_assets.definitions import build_resources
from flywheel_assets.sample_data import write_sample_traces
from partitions.slices import candidate_workload_key, trace_partition_key


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    write_sample_traces(tmp / "traces", n=300, seed=5, days=1, workloads="tool_router")
    resources = build_resources(tmp, tmp / "traces")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["tool_router"])

        def run(selection, key, run_config=None):
            return materialize_quietly(instance, resources, selection, key, run_config)

        run(["raw_traces", "quarantined_traces"], trace_partition_key("2026-11-20", "tool_router"))
        run(["workload_dataset", "eval_dataset", "train_dataset"], "tool_router")
        models = run(
            ["lora_adapter", "base_eval", "icl_eval", "customized_eval"],
            candidate_workload_key("tiny-demo", "tool_router"),
            {"ops": {"lora_adapter": {"config": {"epochs": 1}}}},
        )
        board = run(["leaderboard"], "tool_router")
        yield tmp, instance, models, board


def metadata(result, asset):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_adapter_records_training_for_an_audit(trained):
    tmp, _, models, _ = trained
    adapter = metadata(models, "lora_adapter")
    assert adapter["hyperparameters"]["epochs"] == 1
    assert "| step | epoch | loss |" in adapter["loss_curve"]
    assert adapter["adapter_size_bytes"] > 0
    assert (tmp / "adapters").exists() and str(tmp / "adapters") in adapter["adapter_dir"]


def test_evaluations_keep_per_record_results(trained):
    _, _, models, _ = trained
    for asset in ("base_eval", "icl_eval", "customized_eval"):
        rows = models.output_for_node(asset)
        assert rows.height == 20
        assert {"record_id", "function_name_accuracy", "function_name_and_args_accuracy", "reason", "latency_s"} <= set(
            rows.columns
        )
        md = metadata(models, asset)
        assert 0.0 <= md["function_name_accuracy"] <= 1.0
        assert md["latency_p95_s"] >= md["latency_p50_s"]
    icl = metadata(models, "icl_eval")
    assert icl["examples_per_prompt_mean"] >= 1


def test_leaderboard_ranks_every_experiment(trained):
    _, _, _, board_run = trained
    board = board_run.output_for_node("leaderboard")
    assert sorted(board["experiment"]) == ["base", "customized", "icl"]
    assert set(board["candidate"]) == {"tiny-demo"}
    assert board["cost_vs_production"].is_not_null().all()
    md = metadata(board_run, "leaderboard")
    assert "| candidate | experiment | score" in md["leaderboard"]
    assert "threshold" in md["recommendation"]


def test_retrying_training_with_the_same_inputs_reuses_the_adapter(trained):
    tmp, instance, models, _ = trained
    first = metadata(models, "lora_adapter")["adapter_dir"]
    resources_again = materialize_quietly(
        instance,
        build_resources(tmp, tmp / "traces"),
        ["lora_adapter"],
        candidate_workload_key("tiny-demo", "tool_router"),
        {"ops": {"lora_adapter": {"config": {"epochs": 1}}}},
    )
    again = metadata(resources_again, "lora_adapter")
    assert again["adapter_dir"] == first
    adapters = list((tmp / "adapters").rglob("training_result.json"))
    assert len(adapters) == 1
