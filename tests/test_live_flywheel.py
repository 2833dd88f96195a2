"""The flywheel as its users run it: `dagster dev` (webserver + daemon) on loopback in a
temporary home, the sensors turned on through GraphQL, trace files dropped into the folder,
every run launched by the daemon. Slower than the rest (a few minutes): it is the product.

The tests share one running flywheel and go in order: a first drop reaches every
leaderboard; a new day ingests only its partitions and refreshes downstream; an identical
re-drop launches nothing; the README's backfill command's runs succeed. Waits are bounded
and a timeout names the stage that stood still; `dagster dev` and everything it started are
stopped when the module ends, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from flywheel_assets.core.hyperparameters import DEMO_HYPERPARAMETERS
from flywheel_assets.live import FINISHED, LiveFlywheel
from flywheel_assets.sample_data import write_sample_traces

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["support_chat", "tool_router"]
FIRST_DAYS = ["2026-11-14", "2026-11-15"]
NEW_DAY = "2026-11-16"
STAGE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("live")
    # the demo candidate with fewer epochs and shorter answers: the test is about the
    # live path, not about how well the tiny model learns
    candidates = home / "candidates.json"
    candidates.write_text(
        json.dumps(
            {
                "candidates": [
                    {
                        "name": "tiny-demo",
                        "max_new_tokens": 24,
                        "hyperparameters": {**DEMO_HYPERPARAMETERS.model_dump(exclude_unset=True), "epochs": 2},
                    }
                ]
            }
        )
    )
    env = {
        "FLYWHEEL_START_DATE": FIRST_DAYS[0],
        "FLYWHEEL_CANDIDATES": str(candidates),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    with LiveFlywheel(home, env=env) as flywheel:
        flywheel.start_sensors()
        yield flywheel


def traces(folder: Path, n: int, end_date: str, days: int, seed: int) -> list[Path]:
    return write_sample_traces(folder, n=n, seed=seed, days=days, end_date=end_date, workloads=",".join(WORKLOADS))


def ingest_runs(runs, since: float):
    return [r for r in runs if r.stage == "ingest" and (r.start or time.time()) >= since]


def test_dropped_traces_reach_every_leaderboard_without_a_failed_run(live, tmp_path):
    files = traces(tmp_path, 260, FIRST_DAYS[-1], len(FIRST_DAYS), seed=1)
    dropped_at = live.drop(files)
    report = live.wait_for_leaderboards(WORKLOADS, since=dropped_at, timeout_s=STAGE_TIMEOUT_S)
    print(report.summary())
    assert not [r for r in report.runs if r.status != "SUCCESS"]
    # the dropped days of both workloads are one ingest run, the stage's named job
    (ingest,) = ingest_runs(report.runs, dropped_at)
    assert ingest.job == "ingest" and ingest.partition == f"{FIRST_DAYS[0]}|support_chat...{FIRST_DAYS[-1]}|tool_router"
    assert {r.stage for r in report.runs} >= {"ingest", "curate_and_split", "train_and_evaluate", "report"}
    assert {r.stage for r in report.runs} <= {"ingest", "curate_and_split", "train_and_evaluate", "report", "monitor"}


def test_a_new_day_ingests_only_its_partitions_and_refreshes_downstream(live, tmp_path):
    datasets_before = live.materialized_partitions("workload_dataset")
    files = traces(tmp_path, 80, NEW_DAY, 1, seed=2)
    dropped_at = live.drop(files)
    report = live.wait_for_leaderboards(WORKLOADS, since=dropped_at, timeout_s=STAGE_TIMEOUT_S)
    print(report.summary())
    (ingest,) = ingest_runs(report.runs, dropped_at)
    assert ingest.partition == f"{NEW_DAY}|support_chat...{NEW_DAY}|tool_router"
    datasets = live.materialized_partitions("workload_dataset")
    assert all(datasets[w] > datasets_before[w] for w in WORKLOADS)


def settled(live) -> set[str]:
    """The run ids once automation has caught up: every run finished, and an automation
    tick after that (monitoring follows the leaderboards by a tick or two) found nothing."""

    def quiet():
        return all(r.status in FINISHED for r in live.runs())

    for _ in range(5):  # a condition that never settles fails the test's assertion instead
        live.wait_for(quiet, STAGE_TIMEOUT_S, "the runs so far to finish")
        runs = {r.run_id for r in live.runs()}
        live.wait_for_ticks("automation_sensor", after=time.time(), count=1, timeout_s=120)
        live.wait_for_ticks("gpu_automation_sensor", after=time.time(), count=1, timeout_s=120)
        if {r.run_id for r in live.runs()} == runs and quiet():
            break
    return runs


def test_an_identical_re_drop_launches_nothing(live, tmp_path):
    before = settled(live)
    day_file = live.traces_dir / f"traces-{FIRST_DAYS[0]}.jsonl"
    shutil.copyfile(day_file, tmp_path / "again.jsonl")
    dropped_at = live.drop([tmp_path / "again.jsonl"])  # the same bytes under another name
    shutil.copyfile(day_file, tmp_path / day_file.name)
    live.drop([tmp_path / day_file.name])  # and over itself, with a new mtime
    live.wait_for_ticks("drop_folder_sensor", after=dropped_at, count=2, timeout_s=180)
    live.wait_for_ticks("automation_sensor", after=time.time(), count=1, timeout_s=120)
    assert {r.run_id for r in live.runs()} == before


def readme_backfill_command() -> str:
    """The first bash block of the README's "Backfills" section, as a user copies it."""
    section = (ROOT / "README.md").read_text().split("### Backfills", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readme_backfill_command_runs_against_the_live_instance(live):
    command = readme_backfill_command()
    assert "dagster job backfill" in command
    before = {r.run_id for r in live.runs()}
    env = {**live.env, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def backfill_runs():
        return [r for r in live.runs() if r.run_id not in before and "dagster/backfill" in r.tags]

    live.wait_for(
        lambda: backfill_runs() and all(r.status in FINISHED for r in backfill_runs()),
        STAGE_TIMEOUT_S,
        "the backfill's runs to finish",
    )
    runs = backfill_runs()
    assert {r.partition for r in runs} == {f"{day}|tool_router" for day in FIRST_DAYS}
    assert all(r.status == "SUCCESS" and r.job == "ingest" for r in runs), [(r.partition, r.status) for r in runs]
    # automation may refresh the dataset after it; whatever runs, none fails
    live.wait_for(
        lambda: all(r.status in FINISHED for r in live.runs()), STAGE_TIMEOUT_S, "the runs after the backfill to finish"
    )
    assert not [r for r in live.runs() if r.status == "FAILURE"]
