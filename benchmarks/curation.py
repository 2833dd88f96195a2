"""Curation benchmark: raw JSONL traces -> deduplicated workload datasets.

Generates N traces (default 1,000,000) into one JSONL file, then measures, each phase in
its own process so peak RSS is its own:
  baseline  a bare polars scan of the same file + unique on the user messages
  curation  the flywheel's path: validate + land by day x workload, store each day x
            workload partition (raw_traces), then per workload scan every day, filter,
            deduplicate, classify, redact PII and store the dataset (workload_dataset)
and prints traces/s, peak RSS and the ratio curation / baseline. Peak RSS is the largest
sum, sampled every 20 ms, over the phase's process and its validation workers. Last, the
landing alone with 1, 2 and every usable CPU's validation worker, to show how it scales.

    python benchmarks/curation.py [--records N] [--workers W] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import psutil

from flywheel_assets.core.cpus import usable_cpus


class TreeRssSampler(threading.Thread):
    """The largest RSS of this process plus its children (validation workers) at once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_bytes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.wait(0.02):
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        # the kernel's own high-water mark of this process catches a peak between samples
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.peak_bytes, own_peak) / 2**20


def run_baseline(path: Path) -> dict:
    lines = pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String})
    unique = (
        lines.with_columns(key=pl.col("line").str.json_path_match("$.request.messages"))
        .unique("key")
        .select(pl.len())
        .collect()
        .item()
    )
    return {"unique": unique}


def run_curation(path: Path, work: Path, workers: int) -> dict:
    from flywheel_assets.core.curation import curate
    from flywheel_assets.core.ingest import read_partition
    from resources.datasets import write_parquet_atomically
    from resources.traces import FileTraceSource

    start = time.perf_counter()
    source = FileTraceSource(
        traces_dir=str(path.parent),
        landing_dir=str(work / "landing"),
        start_date="2020-01-01",
        validation_workers=workers,
    )
    (landed,) = source.land([path])
    landed_at = time.perf_counter()
    by_workload: dict[str, list[str]] = {}
    for partition in landed.partitions:
        day, key = partition.split("|")
        if key != "unattributed":
            by_workload.setdefault(key, []).append(day)
    # as the assets and the I/O manager do: each raw_traces partition is stored, then
    # curation scans them and its lazy result is streamed to the workload_dataset file
    stored = work / "raw_traces"
    out = 0
    store_s = 0.0
    for key, days in by_workload.items():
        stored_at = time.perf_counter()
        paths = []
        for day in sorted(days):
            paths.append(stored / day / f"{key}.parquet")
            write_parquet_atomically(read_partition(source.landing_path, day, key)[0], paths[-1])
        store_s += time.perf_counter() - stored_at
        dataset, stats = curate(pl.concat([pl.scan_parquet(p) for p in paths]))
        write_parquet_atomically(dataset, work / "workload_dataset" / f"{key}.parquet")
        out += stats.records_out
    curate_s = time.perf_counter() - landed_at - store_s
    return {
        "unique": out,
        "workloads": len(by_workload),
        "phases": {"land": landed_at - start, "store raw_traces": store_s, "curate": curate_s},
    }


def run_landing(path: Path, work: Path, workers: int) -> dict:
    from resources.traces import FileTraceSource

    source = FileTraceSource(
        traces_dir=str(path.parent),
        landing_dir=str(work / f"landing-{workers}"),
        start_date="2020-01-01",
        validation_workers=workers,
    )
    source.land([path])
    return {}


PHASES = {"baseline": lambda path, work, workers: run_baseline(path), "curation": run_curation, "land": run_landing}


def phase(name: str, path: Path, work: Path, workers: int) -> None:
    sampler = TreeRssSampler()
    sampler.start()
    start = time.perf_counter()
    result = PHASES[name](path, work, workers)
    result.update(seconds=time.perf_counter() - start, peak_rss_mib=sampler.stop())
    print(json.dumps(result))


def measure(name: str, path: Path, work: Path, workers: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            name,
            "--file",
            str(path),
            "--work",
            str(work),
            "--workers",
            str(workers),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the generated file and landing here")
    parser.add_argument(
        "--workers", type=int, default=usable_cpus(), help="validation processes (default: usable CPUs)"
    )
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args.file, args.work, args.workers)
        return

    from flywheel_assets.sample_data import generate_records

    work = args.keep or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "traces" / "traces.jsonl"
    path.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    with path.open("w") as out:
        for line in generate_records(args.records, seed=0):
            out.write(line + "\n")
    size_mib = path.stat().st_size / 2**20
    print(f"generated {args.records:,} traces ({size_mib:,.0f} MiB) in {time.perf_counter() - start:.1f}s")
    baseline = measure("baseline", path, work, args.workers)
    curation = measure("curation", path, work, args.workers)
    for name, r in (("baseline (polars scan + unique)", baseline), ("curation (flywheel)", curation)):
        print(
            f"{name:34s} {r['seconds']:7.1f}s  {args.records / r['seconds']:>10,.0f} traces/s  "
            f"peak RSS {r['peak_rss_mib']:,.0f} MiB  unique {r['unique']:,}"
        )
    print("curation phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in curation["phases"].items()))
    print(f"ratio curation / baseline: {curation['seconds'] / baseline['seconds']:.2f}  (target <= 2)")
    print(
        f"curation peak RSS: {curation['peak_rss_mib'] / 1024:.2f} GiB, {args.workers} validation "
        "worker(s) included  (target <= 2 GiB)"
    )
    for workers in sorted({1, 2, usable_cpus()}):
        landing = measure("land", path, work, workers)
        print(
            f"landing with {workers} validation worker(s): {landing['seconds']:6.1f}s  "
            f"{args.records / landing['seconds']:>10,.0f} traces/s  peak RSS {landing['peak_rss_mib']:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
