"""The real chain for one workload, promoted: what the tests that audit a flywheel run
(W&B lineage in test_tracking.py, the webserver's lineage in test_webserver_lineage.py)
start from."""

from pathlib import Path

import dagster as dg

from flywheel_assets.definitions import ASSETS
from flywheel_assets.runner import run_flywheel
from flywheel_assets.sample_data import write_sample_traces
from partitions.slices import candidate_workload_key

WL = "tool_router"
CANDIDATE = "tiny-demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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

    def materialize(selection: list[str], key: str, run_config: dict) -> dg.ExecuteInProcessResult:
        result = dg.materialize(ASSETS, selection=selection, partition_key=key, instance=instance,
                                resources=resources, run_config={**QUIET, **run_config})
        assert result.success
        return result

    candidate = materialize(["lora_adapter", "base_eval", "icl_eval", "customized_eval"],
                            candidate_workload_key(CANDIDATE, WL), {"ops": {"lora_adapter": {"config": {"epochs": 1}}}})
    materialize(["leaderboard"], WL, {})
    promotion = defs.resolve_job_def("promote").execute_in_process(
        instance=instance, partition_key=WL,
        run_config={**QUIET, "ops": {"promoted_model": {"config": {
            "workload": WL, "candidate": CANDIDATE, "experiment": "customized", "min_score": 0.0,
            "approver": approver, "reason": reason}}}},
    )
    assert promotion.success
    return candidate, promotion
