"""The live path against the in-process runner, in the same run on the same machine.

1. in-process: `flywheel run` (a fresh process, as a user types it) over the demo traces;
2. live: `dagster dev` (webserver + daemon) on loopback in a temporary home, the sensors
   turned on through GraphQL, the same traces dropped into the folder, until every
   workload's leaderboard exists.

Prints drop-to-leaderboard time per stage, runs launched and failed, and the ratio
live / in-process. Target: <= 1.5 with 0 failed runs.

    .venv/bin/python benchmarks/live_flywheel.py [--records 3000] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel_assets.live import LiveFlywheel, demo_traces  # noqa: E402


def in_process_seconds(home: Path, files: list[Path], first_day: str) -> float:
    traces = home / "traces"
    traces.mkdir(parents=True)
    for path in files:
        shutil.copy(path, traces / path.name)
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "FLYWHEEL_TRACES_DIR": str(traces),
        "FLYWHEEL_START_DATE": first_day,
    }
    started = time.monotonic()
    with open(home / "flywheel_run.log", "wb") as log:
        subprocess.run(
            [str(Path(sys.executable).parent / "flywheel"), "run"],
            env=env,
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the live path may take")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")

    with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
        files, first_day, workloads = demo_traces(Path(tmp) / "sample", args.records, args.seed)
        baseline = in_process_seconds(Path(tmp) / "in_process", files, first_day)
        print(f"in-process `flywheel run`, {args.records} traces: {baseline:.0f} s")

        with LiveFlywheel(Path(tmp) / "live", env={"FLYWHEEL_START_DATE": first_day}) as live:
            live.start_sensors()
            dropped_at = live.drop(files)
            report = live.wait_for_leaderboards(workloads, since=dropped_at, timeout_s=args.timeout)
        print(f"live (`dagster dev`, sensors on), {args.records} traces: {report.summary()}")
        print(f"ratio live / in-process: {report.seconds / baseline:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
