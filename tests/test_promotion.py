"""Promotion and rollback: the refusals, the audit record, the undo stack, and that nothing
but a person's `promote`/`rollback` run ever materializes `promoted_model`.

The upstream stages are small stand-ins under the real asset keys (a leaderboard whose
scores the test chooses), so the rules are tested in seconds; the real chain is promoted in
test_tracking.py and test_webserver_lineage.py.
"""

import json

import dagster as dg
import polars as pl
import pytest

from flywheel_assets import audit_cli
from flywheel_assets.core.audit import AuditRecord, Refused, promotion_refusals, rollback_target
from flywheel_assets.definitions import build_resources
from flywheel_assets.jobs import promote_job, rollback_job
from flywheel_assets.promote import promoted_model
from partitions.slices import candidate_workload_key, candidate_workload_partitions, workload_partitions

CANDIDATE = "tiny-demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SCORES = {"tiny-demo/customized": 0.95, "tiny-demo/icl": 0.6, "tiny-demo/base": 0.3}


class BoardConfig(dg.Config):
    scores: dict[str, float] = SCORES


@dg.asset(name="workload_dataset", partitions_def=workload_partitions)
def workload_dataset_stub(context) -> dg.Output:
    return dg.Output(
        pl.DataFrame({"record_id": ["r1"]}),
        data_version=dg.DataVersion(f"dataset-{context.partition_key}"),
        metadata={"days": dg.MetadataValue.json([]), "records_out": 1},
    )


@dg.asset(name="lora_adapter", partitions_def=candidate_workload_partitions, io_manager_key="json_io_manager")
def lora_adapter_stub(context) -> dg.Output:
    adapter_dir = f"/adapters/{context.partition_key.replace('|', '/')}"
    return dg.Output(
        {"trained": True, "adapter_dir": adapter_dir},
        metadata={"adapter_dir": dg.MetadataValue.path(adapter_dir), "final_loss": 1.5},
    )


@dg.asset(name="customized_eval", partitions_def=candidate_workload_partitions)
def customized_eval_stub() -> dg.Output:
    return dg.Output(
        pl.DataFrame({"record_id": ["r1"], "function_name_accuracy": [0.95]}), metadata={"function_name_accuracy": 0.95}
    )


@dg.asset(name="leaderboard", partitions_def=workload_partitions)
def leaderboard_stub(config: BoardConfig) -> pl.DataFrame:
    rows = [
        {
            "candidate": key.split("/")[0],
            "experiment": key.split("/")[1],
            "score": score,
            "meets_threshold": score >= 0.9,
        }
        for key, score in config.scores.items()
    ]
    return pl.DataFrame(rows)


STUBS = [workload_dataset_stub, lora_adapter_stub, customized_eval_stub, leaderboard_stub]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("promotion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        resources = build_resources(tmp, tmp / "traces")
    defs = dg.Definitions(assets=[*STUBS, promoted_model], jobs=[promote_job, rollback_job], resources=resources)
    (tmp / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "dagster_home")) as instance:
        yield Env(tmp, defs, instance, resources)


class Env:
    def __init__(self, tmp, defs, instance, resources):
        self.tmp, self.defs, self.instance, self.resources = tmp, defs, instance, resources

    def materialize(self, asset, partition, run_config=None):
        result = dg.materialize(
            [*STUBS, promoted_model],
            selection=[asset],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources,
            run_config={**QUIET, **(run_config or {})},
        )
        assert result.success
        return result

    def upstream(self, workload, scores=SCORES):
        """A workload whose stages all ran, leaderboard last."""
        self.instance.add_dynamic_partitions("workload", [workload])
        cw = candidate_workload_key(CANDIDATE, workload)
        self.materialize("workload_dataset", workload)
        self.materialize("lora_adapter", cw)
        self.materialize("customized_eval", cw)
        self.leaderboard(workload, scores)

    def leaderboard(self, workload, scores=SCORES):
        return self.materialize("leaderboard", workload, {"ops": {"leaderboard": {"config": {"scores": scores}}}})

    def run(self, job, partition, tags=None, **config):
        config = {"workload": partition, "approver": "alice@example.com", "reason": "cheaper, as good", **config}
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            partition_key=partition,
            raise_on_error=False,
            tags=tags,
            run_config={**QUIET, "ops": {"promoted_model": {"config": config}}},
        )

    def promote(self, workload, candidate=CANDIDATE, experiment="customized", **config):
        return self.run("promote", workload, candidate=candidate, experiment=experiment, **config)

    def store(self, workload, name):
        return json.loads((self.tmp / "datasets" / "audits" / workload / f"{name}.json").read_text())


def failure(result) -> str:
    assert not result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.user_failure_data.description


def record_of(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return event.materialization.metadata["audit_record"].value


def test_promotion_records_who_why_and_the_upstream_runs(env):
    env.upstream("wl-ok")
    result = env.promote("wl-ok")
    assert result.success
    record = record_of(result)
    assert (record["action"], record["approver"], record["reason"]) == (
        "promote",
        "alice@example.com",
        "cheaper, as good",
    )
    assert record["target"]["candidate"] == CANDIDATE and record["target"]["score"] == 0.95
    assert record["target"]["adapter_dir"] == "/adapters/tiny-demo/wl-ok"
    assert record["forced"] is False and record["replaces_id"] is None
    upstream = {(m["asset"], m["partition"]): m for m in record["upstream"]}
    for asset, partition in [
        ("workload_dataset", "wl-ok"),
        ("leaderboard", "wl-ok"),
        ("lora_adapter", "tiny-demo|wl-ok"),
        ("customized_eval", "tiny-demo|wl-ok"),
    ]:
        latest = env.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
        ).records[0]
        assert upstream[(asset, partition)]["run_id"] == latest.run_id
    assert upstream[("workload_dataset", "wl-ok")]["data_version"] == "dataset-wl-ok"
    # metadata links every upstream run; the record is also in the dataset store
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["upstream/leaderboard[wl-ok]"].value == upstream[("leaderboard", "wl-ok")]["run_id"]
    assert "| leaderboard | wl-ok |" in metadata["lineage"].value
    assert env.store("wl-ok", record["id"]) == env.store("wl-ok", "production") == {**record, "wandb_artifact": None}


@pytest.mark.parametrize(
    ("candidate", "experiment", "expected"),
    [
        ("other-model", "customized", "is not on the current leaderboard"),
        (CANDIDATE, "icl", "score 0.600, below the threshold 0.9"),
    ],
)
def test_promotion_refuses_bad_candidates(env, candidate, experiment, expected):
    workload = f"wl-bad-{experiment}"
    env.upstream(workload)
    result = env.promote(workload, candidate=candidate, experiment=experiment)
    assert expected in failure(result)
    assert not env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=promoted_model.key, asset_partitions=[workload]), limit=1
    ).records
    assert not (env.tmp / "datasets" / "audits" / workload).exists()


def test_force_overrides_a_refusal_and_records_it(env):
    env.upstream("wl-force")
    result = env.promote("wl-force", experiment="icl", force=True, reason="latency matters more here")
    assert result.success
    record = record_of(result)
    assert record["forced"] is True
    assert "below the threshold" in record["overridden_refusals"][0]
    assert record["reason"] == "latency matters more here"


def test_a_leaderboard_older_than_the_evaluation_is_refused(env):
    env.upstream("wl-stale")
    env.materialize("customized_eval", candidate_workload_key(CANDIDATE, "wl-stale"))
    assert "rematerialize the leaderboard" in failure(env.promote("wl-stale"))
    env.leaderboard("wl-stale")
    assert env.promote("wl-stale").success


def test_rollback_restores_the_previous_promotion_like_an_undo_stack(env):
    env.upstream("wl-roll")
    first = record_of(env.promote("wl-roll"))
    env.leaderboard("wl-roll", {**SCORES, "tiny-demo/icl": 0.97})
    second = record_of(env.promote("wl-roll", experiment="icl"))
    assert second["replaces_id"] == first["id"]

    rolled = env.run("rollback", "wl-roll", reason="icl answers drift")
    assert rolled.success
    back = record_of(rolled)
    assert back["action"] == "rollback" and back["restores_id"] == first["id"] and back["replaces_id"] == second["id"]
    assert back["target"] == first["target"] and back["upstream"] == first["upstream"]
    assert env.store("wl-roll", "production")["id"] == back["id"]

    # nothing before the first promotion: a second rollback is refused, not a flip back
    assert "no earlier promotion to restore" in failure(env.run("rollback", "wl-roll"))
    # a rollback after a new promotion goes back to what was in production before it
    third = record_of(env.promote("wl-roll", experiment="icl"))
    assert third["replaces_id"] == back["id"]
    assert record_of(env.run("rollback", "wl-roll"))["target"] == first["target"]


def test_rollback_needs_something_to_roll_back_and_no_candidate(env):
    env.upstream("wl-empty")
    assert "nothing is in production" in failure(env.run("rollback", "wl-empty"))
    assert "leave `candidate` empty" in failure(env.run("rollback", "wl-empty", candidate=CANDIDATE))


def test_only_a_person_launching_promote_or_rollback_materializes_it(env):
    env.upstream("wl-guard")
    direct = dg.materialize(
        [*STUBS, promoted_model],
        selection=["promoted_model"],
        partition_key="wl-guard",
        instance=env.instance,
        resources=env.resources,
        raise_on_error=False,
        run_config={
            **QUIET,
            "ops": {
                "promoted_model": {
                    "config": {"workload": "wl-guard", "candidate": CANDIDATE, "approver": "a", "reason": "r"}
                }
            },
        },
    )
    assert "only by the `promote` and `rollback` jobs" in failure(direct)
    assert "never automated" in failure(env.promote("wl-guard", tags={"dagster/sensor_name": "some_sensor"}))
    assert "launch the job for the workload's partition" in failure(
        env.run("promote", "wl-guard", workload="wl-ok", candidate=CANDIDATE)
    )
    assert "approver and reason are required" in failure(env.promote("wl-guard", approver=" "))


def test_automation_never_requests_promoted_model(env):
    from flywheel_assets.definitions import defs

    env.upstream("wl-auto")
    graph = defs.resolve_asset_graph()
    assert graph.get(promoted_model.key).automation_condition is None
    for trigger in [*(defs.sensors or []), *(defs.schedules or [])]:
        selection = getattr(trigger, "asset_selection", None)
        selected = set(selection.resolve(graph)) if selection is not None else set()
        jobs = (
            [trigger.job_name] if isinstance(trigger, dg.ScheduleDefinition) else [t.job_name for t in trigger.targets]
        )
        for job in jobs:
            selected |= defs.resolve_job_def(job).asset_layer.selected_asset_keys
        assert promoted_model.key not in selected, trigger.name

    def requested(definitions, ticks=3):
        cursor, keys = None, set()
        for _ in range(ticks):
            result = dg.evaluate_automation_conditions(defs=definitions, instance=env.instance, cursor=cursor)
            keys |= {r.key for r in result.results if result.get_requested_partitions(r.key)}
            cursor = result.cursor
            env.leaderboard("wl-auto", {**SCORES, "tiny-demo/customized": 0.91 + 0.01 * len(keys)})
        return keys

    assert promoted_model.key not in requested(defs)
    # the same harness does see a request when the asset would be automated
    eager = promoted_model.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=dg.AutomationCondition.eager())
    )
    control = dg.Definitions(assets=[*STUBS, eager], resources=env.resources)
    assert promoted_model.key in requested(control)


def test_audit_cli_prints_the_chain_and_the_production_record(env, capsys):
    env.upstream("wl-cli")
    env.promote("wl-cli", reason="first cheaper model")
    assert audit_cli.main(["wl-cli"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "workload wl-cli",
        "dataset    workload_dataset[wl-cli]",
        "lora_adapter[tiny-demo|wl-cli]",
        "customized_eval[tiny-demo|wl-cli]",
        "leaderboard[wl-cli]",
        "production",
        "promote: tiny-demo (customized) score 0.950, by alice@example.com",
        "'first cheaper model'",
    ):
        assert expected in out
    assert audit_cli.main(["wl-cli", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["promotions"][0]["target"]["candidate"] == CANDIDATE
    assert audit_cli.main(["no-such-workload"]) == 2


# --- the rules, without Dagster ----------------------------------------------------------


def test_refusal_rules_as_plain_functions():
    from flywheel_assets.core.audit import Materialization

    board = [{"candidate": "a", "experiment": "base", "score": 0.95}]
    lb = Materialization(asset="leaderboard", run_id="r" * 8, storage_id=10, timestamp=0)
    assert promotion_refusals(board, "a", "base", 0.9, leaderboard=lb) == []
    assert "no leaderboard" in promotion_refusals(board, "a", "base", 0.9, leaderboard=None)[0]
    newer = Materialization(asset="base_eval", partition="a|w", run_id="s" * 8, storage_id=11, timestamp=0)
    assert (
        "older than base_eval[a|w]"
        in promotion_refusals(board, "a", "base", 0.9, leaderboard=lb, evaluations=[newer])[0]
    )
    assert "no score" in promotion_refusals([{**board[0], "score": None}], "a", "base", 0.9, leaderboard=lb)[0]


def test_promotion_judges_the_score_by_the_leaderboards_rule():
    from flywheel_assets.core.audit import Materialization

    lb = Materialization(asset="leaderboard", run_id="r" * 8, storage_id=10, timestamp=0)
    # 19/20 right: a score above 0.9 whose interval reaches well below it; 20 * (0.19 / 0.05)^2
    # = 288.8 records would shrink the interval above the threshold
    row = {"candidate": "a", "experiment": "customized", "score": 0.95, "ci_low": 0.76, "ci_high": 0.99, "n": 20}

    def refusals(board_row: dict, rule: str) -> list[str]:
        return promotion_refusals([board_row], "a", "customized", 0.9, leaderboard=lb, rule=rule)

    (unsure,) = refusals(row, "lower_bound")
    assert "score 0.950 (95% interval 0.76-0.99 over 20 eval records)" in unsure
    assert "about 289 eval records would settle it" in unsure and "threshold_rule: point" in unsure
    assert refusals(row, "point") == []
    assert refusals({**row, "ci_low": 0.91}, "lower_bound") == []
    (below,) = refusals({**row, "score": 0.85, "ci_low": 0.64}, "lower_bound")
    assert "below the threshold 0.9" in below and "not yet sure" not in below
    # a board written before intervals: the score decides
    assert refusals({"candidate": "a", "experiment": "customized", "score": 0.95}, "lower_bound") == []


def test_rollback_target_follows_previous_ids():
    def record(id_, previous):
        return AuditRecord(
            id=id_,
            action="promote",
            workload_key="w",
            target={"candidate": id_, "experiment": "base"},
            approver="a",
            reason="r",
            at="t",
            dagster_run_id="x",
            previous_id=previous,
        )

    a, b = record("a", None), record("b", "a")
    assert rollback_target(b, [b, a]).id == "a"
    with pytest.raises(Refused, match="no earlier promotion"):
        rollback_target(a, [a])
    with pytest.raises(Refused, match="not in this instance's history"):
        rollback_target(b, [b])
