"""The real flywheel in tests: its chain for one workload, promoted (what the tests that
audit a flywheel run start from: W&B lineage in test_tracking.py, the webserver's lineage in
test_webserver_lineage.py), and `AutomatedFlywheel`, materialized by hand and ticked by the
automation conditions as the sensors would (test_automation.py, test_production.py)."""

from pathlib import Path

import dagster as dg

from flywheel_assets.definitions import ASSETS, build_resources
from flywheel_assets.runner import run_flywheel
from flywheel_assets.sample_data import write_sample_traces
from partitions.slices import candidate_workload_key

WL = "tool_router"
CANDIDATE = "tiny-demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize_quietly(
    instance: dg.DagsterInstance, resources: dict, selection: list[str], key: str, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    """`selection` of the flywheel's assets for partition `key`, the console logger at
    WARNING; the run must succeed."""
    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=key,
        instance=instance,
        resources=resources,
        run_config={**QUIET, **(run_config or {})},
    )
    assert result.success
    return result


def write_traces(folder: Path) -> None:
    """One day of WL's sample traces, enough for a candidate to train and be evaluated."""
    write_sample_traces(folder, n=400, seed=5, days=1, workloads=WL)


def promoted_chain(
    defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, *, approver: str, reason: str
) -> tuple[dg.ExecuteInProcessResult, dg.ExecuteInProcessResult]:
    """The flywheel through split, CANDIDATE trained (one epoch) and evaluated, the
    leaderboard, then its customized model promoted whatever its score. Returns the
    candidate's run and the promotion's."""
    assert not run_flywheel(defs, instance, log=lambda _: None, through="split").failed

    candidate = materialize_quietly(
        instance,
        resources,
        ["lora_adapter", "base_eval", "icl_eval", "customized_eval"],
        candidate_workload_key(CANDIDATE, WL),
        {"ops": {"lora_adapter": {"config": {"epochs": 1}}}},
    )
    materialize_quietly(instance, resources, ["leaderboard"], WL)
    promotion = defs.resolve_job_def("promote").execute_in_process(
        instance=instance,
        partition_key=WL,
        run_config={
            **QUIET,
            "ops": {
                "promoted_model": {
                    "config": {
                        "workload": WL,
                        "candidate": CANDIDATE,
                        "experiment": "customized",
                        "min_score": 0.0,
                        "approver": approver,
                        "reason": reason,
                    }
                }
            },
        },
    )
    assert promotion.success
    return candidate, promotion


class AutomatedFlywheel:
    """The code location's assets and resources on a test instance; `tick` evaluates the
    automation conditions as the automation sensors do, with the cursor kept between ticks."""

    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance, *, ignored: tuple[dg.AssetsDefinition, ...] = ()):
        self.instance = instance
        self.traces = tmp_path / "traces"
        self.resources = build_resources(tmp_path, self.traces)
        self.defs = dg.Definitions(assets=ASSETS, resources=self.resources)
        self.ignored = {asset.key for asset in ignored}
        self.cursor = None

    def materialize(self, selection, partition_key) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            ASSETS,
            selection=selection,
            partition_key=partition_key,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
        )

    def tick(self) -> dict[str, set]:
        """One automation tick: {asset: requested partition keys}, the ignored assets left out."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        keys = set(self.defs.resolve_asset_graph().get_all_asset_keys()) - self.ignored
        return {
            k.to_user_string(): {str(p) for p in result.get_requested_partitions(k)}
            for k in keys
            if result.get_num_requested(k)
        }
