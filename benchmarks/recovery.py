"""Crash recovery: kill the flywheel with SIGKILL at seeded random moments, rerun it, and
compare what it left with a clean run's.

1. A clean `flywheel run` over the demo traces (a small set, the demo candidate with one
   epoch) gives the reference: rows per stored partition of every dataset asset.
2. N times, in a fresh home with the same traces: start `flywheel run`, SIGKILL its whole
   process group (validation workers included) at a seeded random moment of the clean
   run's landing, ingest, curation or training window (each in turn), then run it again to
   the end.
3. Per try: are the counts identical to the clean run's, how many duplicate record ids
   does the data hold, how many bytes of crash leftovers (hidden staging folders, pins and
   temp files) are still there after the rerun, how many runs does the instance still show
   as STARTED, and how long did the rerun take.

Target: N/N identical, 0 duplicates, 0 bytes left over.

    .venv/bin/python benchmarks/recovery.py [--tries 20] [--records 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from flywheel_assets.core.hyperparameters import DEMO_HYPERPARAMETERS  # noqa: E402
from flywheel_assets.live import demo_traces  # noqa: E402

FLYWHEEL_RUN = [str(Path(sys.executable).parent / "flywheel"), "run"]
WINDOWS = ("landing", "ingest", "curation", "training")
DATASETS = ("raw_traces", "quarantined_traces", "workload_dataset", "eval_dataset", "train_dataset")


def environment(home: Path, traces: list[Path], first_day: str, candidates: Path) -> dict[str, str]:
    (home / "traces").mkdir(parents=True)
    for path in traces:
        shutil.copy(path, home / "traces" / path.name)
    return {
        **os.environ,
        "FLYWHEEL_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "FLYWHEEL_TRACES_DIR": str(home / "traces"),
        "FLYWHEEL_START_DATE": first_day,
        "FLYWHEEL_CANDIDATES": str(candidates),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }


def start_run(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(FLYWHEEL_RUN, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_to_end(env: dict[str, str], log: Path) -> float:
    started = time.monotonic()
    process = start_run(env, log)
    if process.wait() != 0:
        raise SystemExit(f"`flywheel run` failed; see {log}")
    return time.monotonic() - started


def stage_windows(env: dict[str, str], log: Path) -> dict[str, tuple[float, float]]:
    """Run `flywheel run` to the end, timing its stages from the lines it prints: landing
    until it reports the trace files, then ingest, curation, and training + report."""
    started = time.monotonic()
    ends: dict[str, float] = {}
    with open(log, "w") as out:
        process = subprocess.Popen(FLYWHEEL_RUN, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
        for line in process.stdout:
            out.write(line)
            stage = (
                "landing"
                if "trace files," in line
                else "ingest"
                if line.startswith("ok   ingest")
                else "curation"
                if line.startswith("ok   curate_and_split")
                else None
            )
            if stage:
                ends[stage] = time.monotonic() - started
        if process.wait() != 0:
            raise SystemExit(f"`flywheel run` failed; see {log}")
    ends["training"] = time.monotonic() - started
    bounds = [0.0, *(ends[stage] for stage in WINDOWS)]
    return {stage: (bounds[i], bounds[i + 1]) for i, stage in enumerate(WINDOWS)}


def progress_at_kill(log: Path) -> str:
    """Where the run was: the runs it had finished (the runner prints `ok <job> [<partition>]`)."""
    lines = log.read_text(errors="replace").splitlines()
    done = [line for line in lines if line.startswith(("ok ", "FAIL"))]
    if done:
        return f"after {len(done)} runs, the last: {done[-1].split(maxsplit=1)[1]}"
    return "during the first run" if any("trace files," in line for line in lines) else "while landing"


def counts(home: Path) -> dict[str, int]:
    """Rows of every stored partition of the dataset assets."""
    found = {}
    for asset in DATASETS:
        for path in sorted((home / "assets" / asset).rglob("*.parquet")):
            if not any(part.startswith(".") for part in path.relative_to(home).parts):
                found[str(path.relative_to(home / "assets"))] = pl.scan_parquet(path).select(pl.len()).collect().item()
    return found


def duplicates(home: Path) -> int:
    """Record ids stored twice: across raw_traces partitions, and within each workload dataset."""
    total = 0
    raw = [p for p in (home / "assets" / "raw_traces").rglob("*.parquet") if not p.name.startswith(".")]
    if raw:
        ids = pl.concat([pl.read_parquet(p, columns=["record_id"]) for p in raw])
        total += ids.height - ids.n_unique()
    for path in (home / "assets" / "workload_dataset").glob("[!.]*.parquet"):
        ids = pl.read_parquet(path, columns=["record_id"])
        total += ids.height - ids.n_unique()
    return total


def leftover_bytes(home: Path) -> int:
    """Bytes under hidden names (staging folders, pins, temp files) outside the instance."""
    size = 0
    for folder in ("landing", "assets", "datasets", "adapters", "models"):
        for path in (home / folder).rglob(".*") if (home / folder).exists() else ():
            if path.is_file():
                size += path.stat().st_size
            elif path.is_dir():
                size += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return size


def started_runs(env: dict[str, str]) -> int:
    code = (
        "import dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    print(len(i.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        tmp = Path(tmp)
        traces, first_day, _ = demo_traces(tmp / "sample", args.records, args.seed)
        candidates = tmp / "candidates.json"
        candidates.write_text(
            json.dumps(
                {
                    "candidates": [
                        {
                            "name": "tiny-demo",
                            "max_new_tokens": 24,
                            "hyperparameters": {**DEMO_HYPERPARAMETERS.model_dump(exclude_unset=True), "epochs": 1},
                        }
                    ]
                }
            )
        )
        clean_env = environment(tmp / "clean", traces, first_day, candidates)
        windows = stage_windows(clean_env, tmp / "clean" / "run.log")
        clean_s = windows["training"][1]
        reference = counts(tmp / "clean")
        print(
            f"clean run: {clean_s:.0f} s ("
            + ", ".join(f"{stage} {start:.1f}-{end:.1f} s" for stage, (start, end) in windows.items())
            + f"), {len(reference)} stored partitions, {sum(reference.values())} rows"
        )

        identical = total_duplicates = total_leftover = total_started = 0
        recover_times = []
        for attempt in range(1, args.tries + 1):
            home = tmp / f"try-{attempt}"
            env = environment(home, traces, first_day, candidates)
            log = home / "run.log"
            window = WINDOWS[(attempt - 1) % len(WINDOWS)]  # every stage in turn
            moment = rng.uniform(*windows[window])
            process = start_run(env, log)
            try:
                process.wait(timeout=moment)
                stage = "finished before the kill"
            except subprocess.TimeoutExpired:
                stage = progress_at_kill(log)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            recover_times.append(run_to_end(env, log))
            same = counts(home) == reference
            dups, left, started = duplicates(home), leftover_bytes(home), started_runs(env)
            identical += same
            total_duplicates += dups
            total_leftover += left
            total_started += started
            print(
                f"try {attempt:2d}: killed at {moment:5.1f} s in {window} ({stage}); rerun {recover_times[-1]:.0f} s; "
                f"counts {'identical' if same else 'DIFFERENT'}; {dups} duplicates; {left} bytes left over; "
                f"{started} runs still STARTED"
            )
            shutil.rmtree(home, ignore_errors=True)

    print(
        f"\n{args.tries} runs compared: {identical}/{args.tries} identical to the clean run, "
        f"{total_duplicates} duplicates, {total_leftover} bytes left over, {total_started} runs left STARTED; "
        f"recovery (rerun) {min(recover_times):.0f}-{max(recover_times):.0f} s, clean run {clean_s:.0f} s"
    )
    return 0 if identical == args.tries and not total_duplicates and not total_leftover else 1


if __name__ == "__main__":
    raise SystemExit(main())
