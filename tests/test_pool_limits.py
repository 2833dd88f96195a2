"""The `gpu` pool limit of deploy/dagster.yaml holds: never more GPU steps at once than it allows.

Three test-only steps in pool `gpu` sleep ~1 s each in one run of the multiprocess executor,
which would start them all at once; the instance carries the concurrency and run-queue
settings of deploy/dagster.yaml (SQLite storage instead of Postgres, the single-host
variant). The overlap is computed from STEP_START / STEP_SUCCESS timestamps in the event log.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableJob

from flywheel_assets.gpu import GPU_POOL

GPU_STEPS = 3
SLEEP_S = 1.0


def _gpu_op(name: str) -> dg.OpDefinition:
    @dg.op(name=name, pool=GPU_POOL)
    def gpu_work() -> None:
        time.sleep(SLEEP_S)

    return gpu_work


GPU_OPS = [_gpu_op(f"gpu_{i}") for i in range(GPU_STEPS)]


@dg.job(
    executor_def=dg.multiprocess_executor.configured(
        # forkserver: steps fork from a process that already imported dagster (fast on 2 cores)
        {"max_concurrent": GPU_STEPS, "start_method": {"forkserver": {"preload_modules": ["dagster"]}}}
    )
)
def gpu_burst():
    for op in GPU_OPS:
        op()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one moment (an end at the same instant as a start comes first)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    records = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
    starts = {r.step_key: r.timestamp for r in records if r.dagster_event.event_type == dg.DagsterEventType.STEP_START}
    ends = {r.step_key: r.timestamp for r in records if r.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS}
    return {key: (starts[key], ends[key]) for key in starts}


@pytest.fixture
def deploy_instance():
    # imported here, not at the top: step processes import this module and need none of it
    from test_deploy import deploy_instance_module

    config = deploy_instance_module().single_host()
    config.pop("storage")  # SQLite in a temporary DAGSTER_HOME instead of Postgres
    with dg.instance_for_test(overrides=config) as instance:
        yield instance


def test_instance_reads_the_deploy_concurrency_settings(deploy_instance):
    concurrency = deploy_instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.run_queue_config.tag_concurrency_limits == [{"key": "flywheel/gpu", "limit": 1}]


def test_no_more_gpu_steps_at_once_than_the_pool_allows(deploy_instance):
    limit = deploy_instance.get_concurrency_config().pool_config.default_pool_limit
    assert GPU_STEPS > limit  # more GPU work than the pool holds

    # by file: step processes import this module by path (tests/ is not a package)
    job = ReconstructableJob.for_file(__file__, "gpu_burst")
    result = dg.execute_job(job, instance=deploy_instance)

    assert result.success
    intervals = step_intervals(deploy_instance, result.run_id)
    assert sorted(intervals) == sorted(op.name for op in GPU_OPS)
    assert all(end - start >= SLEEP_S for start, end in intervals.values())
    assert max_overlap(list(intervals.values())) <= limit
    blocked = [r.message for r in deploy_instance.all_logs(result.run_id) if f"pool {GPU_POOL}" in (r.message or "")]
    assert blocked, "the run never waited for a gpu slot"


def test_max_overlap_counts_simultaneous_intervals():
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 2), (1, 3), (1.5, 1.6)]) == 3
    assert max_overlap([]) == 0
