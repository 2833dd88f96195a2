"""`flywheel` command: run the whole flywheel on the embedded default."""

from __future__ import annotations

import argparse
import os
import shutil
import warnings
from pathlib import Path

import dagster as dg
import polars as pl

LOCAL_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "deploy" / "dagster.local.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate sample traces, then run the whole flywheel")
    demo.add_argument("--records", type=int, default=3000, help="sample traces to generate (all workloads)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("run", help="run the whole flywheel on the traces in the drop folder")
    args = parser.parse_args(argv)
    # this command prints the flywheel's progress; Dagster's notes on the beta APIs it uses
    # (data versions, partition mappings) are for developers and repeated on every run
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    # settings are read when the definitions are imported, so import after env is final
    from flywheel_assets.settings import flywheel_home, traces_dir

    os.environ.setdefault("DAGSTER_HOME", str(flywheel_home() / "dagster_home"))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copy(LOCAL_INSTANCE_YAML, dagster_home / "dagster.yaml")
    if args.command == "demo":
        from flywheel_assets.core.sample_data import write_sample_traces

        files = write_sample_traces(traces_dir(), n=args.records, seed=args.seed)
        print(f"wrote {args.records} sample traces to {traces_dir()} ({len(files)} files)")

    from flywheel_assets.definitions import defs
    from flywheel_assets.runner import FlywheelInterrupted, run_flywheel

    with dg.DagsterInstance.get() as instance:
        try:
            result = run_flywheel(defs, instance)
        except FlywheelInterrupted as stop:
            print(f"{stop}; stopped. DAGSTER_HOME={os.environ['DAGSTER_HOME']} has the runs so far")
            return 130
    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        for workload, board in result.leaderboards.items():
            print(f"\nleaderboard [{workload}] ({flywheel_home() / 'assets' / 'leaderboard' / workload}.parquet)")
            print(board)
    print(f"\nDAGSTER_HOME={os.environ['DAGSTER_HOME']}: `dagster dev` shows these runs and their metadata")
    if result.failed:
        print(f"{len(result.failed)} runs failed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
