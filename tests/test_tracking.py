"""W&B tracking in offline mode: one real flywheel run (tiny demo model, one epoch), then
the artifacts, their lineage edges, the evaluation metrics and tables, and the promotion's
`production` alias are read back from the offline run files (what `wandb sync` uploads).
W&B never logs in offline and never prompts for a key: online without one fails naming it."""

import getpass
import json
import re
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import wandb
from flywheel_chain import WL, promoted_chain, write_traces
from wandb.errors import term

from flywheel_assets.definitions import ASSETS, build_resources
from flywheel_assets.jobs import promote_job, rollback_job
from flywheel_assets.settings import SettingsError, load_settings
from resources.datasets import ParquetIOManager
from resources.tracking import NoOpTracker, WandbTracker, artifact_name, build_tracker, read_offline_runs, tracked

CW = f"tiny-demo.{WL}"
KEY = "0123456789abcdef" * 2 + "01234567"  # the shape of a W&B API key (40 characters)


@contextmanager
def wandb_may_not_ask():
    """Refuses, and records, every W&B login and every prompt for a key. W&B is told that a
    user could answer: with no terminal it would skip the prompt, and a test not see it try."""
    asked = []

    def refuse(what):
        def refused(*args, **kwargs):
            asked.append(what)
            raise AssertionError(f"W&B tried to {what}")

        return refused

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(term, "can_use_terminput", lambda: True)
        mp.setattr(term, "_terminput", refuse("prompt"))
        mp.setattr(getpass, "getpass", refuse("read a secret with getpass"))
        mp.setattr(wandb, "login", refuse("log in"))
        yield asked


@pytest.fixture(scope="module")
def wandb_asked():
    with wandb_may_not_ask() as asked:
        yield asked


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory, wandb_asked):
    tmp = tmp_path_factory.mktemp("tracking")
    write_traces(tmp / "traces")
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_API_KEY", KEY)  # offline, a key changes nothing: no login
        for var, folder in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            mp.setenv(var, str(tmp / "wandb-home" / folder))
        resources = build_resources(tmp, tmp / "traces")
        assert isinstance(resources["tracker"], WandbTracker)
        defs = dg.Definitions(assets=ASSETS, jobs=[promote_job, rollback_job], resources=resources)
        models, promotion = promoted_chain(defs, instance, resources, approver="bob", reason="demo: any score goes")
        runs = read_offline_runs(tmp / "wandb")
        yield tmp, instance, models, promotion, runs


def artifacts(runs) -> dict[str, dict]:
    found = {}
    for run in runs:
        for artifact in run["artifacts"]:
            if artifact["type"] != "run_table":
                found[artifact["name"]] = artifact | {"run": run}
    return found


def inputs(artifact) -> dict[str, str]:
    return {ref["name"]: ref["digest"] for ref in artifact["metadata"]["inputs"]}


def metadata(result, asset):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_every_stage_is_a_versioned_artifact(flywheel):
    *_, runs = flywheel
    found = artifacts(runs)
    expected = {
        f"workload_dataset.{WL}": "dataset",
        f"eval_dataset.{WL}": "dataset",
        f"train_dataset.{WL}": "dataset",
        f"lora_adapter.{CW}": "model",
        f"base_eval.{CW}": "evaluation",
        f"icl_eval.{CW}": "evaluation",
        f"customized_eval.{CW}": "evaluation",
        f"leaderboard.{WL}": "leaderboard",
        f"promoted_model.{WL}": "model",
    }
    assert {name: a["type"] for name, a in found.items()} == expected
    assert all(a["digest"] and "latest" in a["aliases"] for a in found.values())
    assert "train_dataset.parquet" in found[f"train_dataset.{WL}"]["files"]
    # workload_dataset is a lazy plan: streamed into the artifact too
    assert "workload_dataset.parquet" in found[f"workload_dataset.{WL}"]["files"]
    assert any(f.startswith("adapter/") and f.endswith(".safetensors") for f in found[f"lora_adapter.{CW}"]["files"])
    # one W&B run per Dagster step, named after the asset partition, grouped by Dagster run
    adapter_run = found[f"lora_adapter.{CW}"]["run"]
    assert (adapter_run["job_type"], adapter_run["name"]) == ("lora_adapter", f"lora_adapter[tiny-demo|{WL}]")
    assert adapter_run["group"] == adapter_run["config"]["dagster_run_id"]
    assert adapter_run["config"]["hyperparameters"]["epochs"] == 1


def test_lineage_edges_point_at_the_exact_upstream_versions(flywheel):
    *_, runs = flywheel
    found = artifacts(runs)
    digest = {name: a["digest"] for name, a in found.items()}

    def edges(name):
        return inputs(found[name])

    assert edges(f"train_dataset.{WL}") == {f"workload_dataset.{WL}": digest[f"workload_dataset.{WL}"]}
    assert edges(f"lora_adapter.{CW}") == {f"train_dataset.{WL}": digest[f"train_dataset.{WL}"]}
    assert edges(f"customized_eval.{CW}") == {
        f"eval_dataset.{WL}": digest[f"eval_dataset.{WL}"],
        f"lora_adapter.{CW}": digest[f"lora_adapter.{CW}"],
    }
    assert set(edges(f"base_eval.{CW}")) == {f"eval_dataset.{WL}", f"train_dataset.{WL}"}
    assert set(edges(f"leaderboard.{WL}")) == {
        f"workload_dataset.{WL}",
        f"base_eval.{CW}",
        f"icl_eval.{CW}",
        f"customized_eval.{CW}",
    }
    assert set(edges(f"promoted_model.{WL}")) == {f"leaderboard.{WL}", f"lora_adapter.{CW}", f"customized_eval.{CW}"}
    # the run that logged an artifact lists the same inputs in its config
    adapter = found[f"lora_adapter.{CW}"]
    assert adapter["run"]["config"]["inputs"] == adapter["metadata"]["inputs"]


def test_evaluation_runs_have_metrics_and_a_per_record_table(flywheel):
    _, _, models, _, runs = flywheel
    found = artifacts(runs)
    evaluation = found[f"customized_eval.{CW}"]
    dagster = metadata(models, "customized_eval")
    summary = evaluation["run"]["summary"]
    assert summary["function_name_accuracy"] == pytest.approx(dagster["function_name_accuracy"])
    assert summary["results"]["_type"] == "table-file" and summary["results"]["nrows"] == 20
    assert "results.table.json" in evaluation["files"]
    table_file = next(Path(evaluation["run"]["path"]).glob("files/media/table/results_*.table.json"))
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 20 and "record_id" in table["columns"]


def test_dagster_metadata_names_the_artifact_and_the_offline_run(flywheel):
    _, _, models, _, runs = flywheel
    found = artifacts(runs)
    adapter = metadata(models, "lora_adapter")
    ref = adapter["wandb_artifact"]
    assert ref["name"] == f"lora_adapter.{CW}" and ref["digest"] == found[f"lora_adapter.{CW}"]["digest"]
    assert adapter["wandb_artifact_version"] == f"offline, digest {ref['digest'][:12]}"
    assert Path(adapter["wandb_run_dir"]).is_dir()


def test_promotion_moves_the_production_alias_and_audits_artifact_versions(flywheel):
    _, _, _, promotion, runs = flywheel
    found = artifacts(runs)
    promoted = found[f"promoted_model.{WL}"]
    assert "production" in promoted["aliases"]
    assert "audit_record.json" in promoted["files"]
    assert any(f.startswith("adapter/") for f in promoted["files"])
    record = metadata(promotion, "promoted_model")["audit_record"]
    by_asset = {m["asset"]: m for m in record["upstream"]}
    assert by_asset["lora_adapter"]["wandb_artifact"]["digest"] == found[f"lora_adapter.{CW}"]["digest"]
    assert record["wandb_artifact"]["name"] == f"promoted_model.{WL}"
    assert {"raw_traces", "workload_dataset", "eval_dataset", "train_dataset", "leaderboard"} <= set(by_asset)


def test_offline_runs_never_log_in_or_ask_for_a_key(flywheel, wandb_asked):
    assert wandb_asked == []


@pytest.mark.parametrize("key", [None, ""], ids=["unset", "empty"])  # empty: e.g. a CI secret not filled in
def test_online_without_a_key_fails_naming_it_and_never_prompts(tmp_path, monkeypatch, key):
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    tracker = build_tracker(tmp_path, {"WANDB_MODE": "online"})
    with wandb_may_not_ask() as asked, pytest.raises(dg.DagsterResourceFunctionError) as caught:
        with dg.build_resources({"tracker": tracker}):
            pass
    assert "WANDB_API_KEY is not set" in str(caught.value.__cause__)
    assert asked == []


def test_online_logs_in_with_the_key_of_the_runs_environment(tmp_path, monkeypatch):
    logins = []
    monkeypatch.setattr(wandb, "login", lambda **kwargs: logins.append(kwargs) or True)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    tracker = build_tracker(tmp_path, {"WANDB_API_KEY": KEY, "WANDB_BASE_URL": "https://wandb.example"})
    with dg.build_resources({"tracker": tracker}) as resources:
        assert resources.tracker.wandb["host"] == "https://wandb.example"
    assert [(login["key"], login["host"]) for login in logins] == [(KEY, "https://wandb.example")]


def test_tracking_is_off_unless_wandb_is_configured(tmp_path):
    storage = ParquetIOManager(base_dir=str(tmp_path))
    for env in ({}, {"WANDB_MODE": "disabled"}, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}):
        tracker = build_tracker(tmp_path, env)
        assert isinstance(tracker, NoOpTracker) and tracked(storage, tracker) is storage
    offline = build_tracker(tmp_path, {"WANDB_MODE": "offline", "WANDB_PROJECT": "traces"})
    assert (offline.mode, offline.project, offline.run_dir) == ("offline", "traces", str(tmp_path / "wandb"))
    own = build_tracker(tmp_path, {"WANDB_MODE": "offline", "WANDB_PROJECT": "traces"}, project="fw")
    assert own.project == "fw"
    assert build_tracker(tmp_path, {"WANDB_MODE": "offline"}).project == "flywheel"
    online = build_tracker(tmp_path, {"WANDB_API_KEY": "secret-key-" + "k" * 29})
    assert online.mode == "online"
    # the key is read from the run's environment when W&B logs in, never held in config
    assert "secret-key" not in repr(online)


def test_artifact_names_of_the_longest_partitions_are_within_wandbs_limit_stable_and_distinct():
    """A 64-character candidate and a 64-character workload: `customized_eval.` + both is
    145 characters, and W&B refuses names over 128 (after the asset's file was written)."""
    from wandb.sdk.artifacts._validators import NAME_MAXLEN

    candidate, workload = "c" * 64, "w" * 64
    name = artifact_name("customized_eval", f"{candidate}|{workload}")
    assert len(name) <= NAME_MAXLEN and name.startswith(f"customized_eval.{candidate}.www")
    assert wandb.Artifact(name, type="evaluation").name == name  # what the tracker builds
    assert artifact_name("customized_eval", f"{candidate}|{workload}") == name  # stable
    neighbour = artifact_name("customized_eval", f"{candidate}|{'w' * 63}x")  # differs past the cut
    assert neighbour != name and len(neighbour) <= NAME_MAXLEN
    assert artifact_name("lora_adapter", f"tiny-demo|{WL}") == f"lora_adapter.{CW}"  # short: as it was


@pytest.mark.parametrize("registry", ["model", "wandb-registry-", "acme/wandb-registry-model", "wandb-registry-a/b"])
def test_a_registry_that_is_not_a_wandb_registry_is_refused_naming_the_form(tmp_path, registry):
    form = "is not a W&B registry: write it as wandb-registry-<name>, e.g. wandb-registry-model"
    with pytest.raises(SettingsError) as err:
        load_settings({"FLYWHEEL_WANDB_REGISTRY": registry})  # refused when the definitions load, W&B on or off
    assert f"FLYWHEEL_WANDB_REGISTRY={registry!r} {form}" in str(err.value)
    # a tracker built by hand, or given the registry by run config at launch, refuses it too
    with pytest.raises(ValueError, match=re.escape(f"registry={registry!r} {form}")):
        build_tracker(tmp_path, {"WANDB_API_KEY": KEY}, registry=registry)
    tracker = build_tracker(tmp_path, {"WANDB_API_KEY": KEY}, registry="wandb-registry-model")
    assert tracker.registry == "wandb-registry-model"


def test_the_code_location_takes_the_project_and_registry_from_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "traces")
    monkeypatch.setenv("FLYWHEEL_WANDB_PROJECT", "fw")
    monkeypatch.setenv("FLYWHEEL_WANDB_REGISTRY", "wandb-registry-model")
    tracker = build_resources(tmp_path, tmp_path / "traces")["tracker"]
    assert (tracker.project, tracker.registry) == ("fw", "wandb-registry-model")
    # empty counts as unset: W&B's own project, and no registry
    monkeypatch.setenv("FLYWHEEL_WANDB_PROJECT", "")
    monkeypatch.setenv("FLYWHEEL_WANDB_REGISTRY", " ")
    tracker = build_resources(tmp_path, tmp_path / "traces")["tracker"]
    assert (tracker.project, tracker.registry) == ("traces", None)
