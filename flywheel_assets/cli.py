"""`flywheel` command: run the whole flywheel on the embedded default."""

from __future__ import annotations

import argparse
import os
import signal
import warnings
from pathlib import Path

import dagster as dg

from flywheel_assets.live import (
    SAMPLE_FIRST_DAY,
    LiveFlywheel,
    LiveFlywheelError,
    demo_traces,
    prepare_instance,
    print_leaderboards,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate sample traces, then run the whole flywheel")
    demo.add_argument("--records", type=int, default=3000, help="sample traces to generate (all workloads)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("run", help="run the whole flywheel on the traces in the drop folder")
    live = sub.add_parser(
        "live",
        help="the flywheel as it runs in production: `dagster dev` with its sensors on, the demo "
        "traces dropped into the folder, progress until every leaderboard exists; the UI stays open",
    )
    live.add_argument("--records", type=int, default=3000, help="sample traces to drop (all workloads)")
    live.add_argument("--seed", type=int, default=0)
    live.add_argument(
        "--home",
        type=Path,
        default=Path(".flywheel_live"),
        help="FLYWHEEL_HOME of the live flywheel (its DAGSTER_HOME is <home>/dagster_home)",
    )
    live.add_argument("--port", type=int, default=3000, help="port of the Dagster UI (on 127.0.0.1)")
    live.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the leaderboards")
    live.add_argument("--exit", action="store_true", help="stop `dagster dev` once the leaderboards exist")
    args = parser.parse_args(argv)
    if args.command == "live":
        return run_live(args)
    # this command prints the flywheel's progress; Dagster's notes on the beta APIs it uses
    # (data versions, partition mappings) are for developers and repeated on every run
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    quiet_model_progress_bars()

    if args.command == "demo":  # day partitions start at the sample data, not years before it
        os.environ.setdefault("FLYWHEEL_START_DATE", SAMPLE_FIRST_DAY)
    # settings are read when the definitions are imported, so import after env is final
    from flywheel_assets.settings import flywheel_home, traces_dir

    os.environ.setdefault("DAGSTER_HOME", str(flywheel_home() / "dagster_home"))
    prepare_instance(Path(os.environ["DAGSTER_HOME"]))
    if args.command == "demo":
        from flywheel_assets.sample_data import write_sample_traces

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
    print_leaderboards(flywheel_home(), result.leaderboards)
    start = os.environ.get("FLYWHEEL_START_DATE")
    print(
        f"\nThese runs and their metadata in the UI: DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
        + (f"FLYWHEEL_START_DATE={start} " if start else "")
        + ".venv/bin/dagster dev -w workspace.yaml"
    )
    if result.held_back:
        print(
            f"{len(result.held_back)} workloads held back by a blocking check (normal for a small one; see `skip` above)"
        )
    if result.failed:
        print(f"{len(result.failed)} runs failed")
        return 1
    return 0


def quiet_model_progress_bars() -> None:
    """The runner's numbered lines are the one progress display: no "Loading weights" /
    "Writing model shards" bar for every model a step loads or saves."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def run_live(args: argparse.Namespace) -> int:
    """`flywheel live`: what a new user sees when the flywheel runs itself."""
    # `kill` stops it as Ctrl-C does: `dagster dev` runs in its own session and must be
    # stopped by us, or it outlives this command
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home = args.home.resolve()
    files, first_day, workloads = demo_traces(home / "sample_traces", args.records, args.seed)
    flywheel = LiveFlywheel(
        home, port=args.port, env={"FLYWHEEL_START_DATE": os.environ.get("FLYWHEEL_START_DATE") or first_day}
    )
    print(f"starting `dagster dev` (FLYWHEEL_HOME={home}; its log: {flywheel.log_path})")
    try:
        with flywheel:
            print(f"Dagster UI: {flywheel.url}  (Runs and Automation tabs show the flywheel at work)")
            flywheel.start_sensors()
            print("sensors on: drop_folder_sensor, automation_sensor, gpu_automation_sensor")
            built = flywheel.materialized_partitions("leaderboard")
            if all(w in built for w in workloads) and all((flywheel.traces_dir / f.name).exists() for f in files):
                print("these traces were dropped and their leaderboards built before: nothing new to do")
            else:
                dropped_at = flywheel.drop(files)
                print(f"dropped {args.records} sample traces ({len(files)} files) into {flywheel.traces_dir}")
                report = flywheel.wait_for_leaderboards(
                    workloads, since=dropped_at, timeout_s=args.timeout, progress=print
                )
                print(report.summary())
            print_leaderboards(home, workloads)
            if args.exit:
                return 0
            print(
                f"\nThe UI stays open at {flywheel.url}; drop more trace files into {flywheel.traces_dir}. Ctrl-C stops."
            )
            flywheel.wait_until_stopped()
    except LiveFlywheelError as error:
        print(f"the live flywheel stopped short: {error}")
        return 1
    except KeyboardInterrupt:
        print("stopped")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
