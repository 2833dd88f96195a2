"""Curation benchmark: raw JSONL traces -> deduplicated workload datasets.

Generates N traces (default 1,000,000) into one JSONL file, then measures, each phase in
its own process so peak RSS is its own:
  baseline  a bare polars scan of the same file + unique on the user messages
  curation  the flywheel's path: validate + land by day x workload, store each day x
            workload partition (raw_traces), then per workload scan every day, filter,
            deduplicate, classify and redact PII (workload_dataset)
and prints traces/s, peak RSS and the ratio curation / baseline.

    python benchmarks/curation.py [--records N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_worker_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_baseline(path: Path) -> dict:
    lines = pl.scan_csv(
        path, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String}
    )
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
    from resources.traces import FileTraceSource

    source = FileTraceSource(
        traces_dir=str(path.parent), landing_dir=str(work / "landing"), start_date="2020-01-01",
        validation_workers=workers,
    )
    (landed,) = source.land([path])
    by_workload: dict[str, list[str]] = {}
    for partition in landed.partitions:
        day, key = partition.split("|")
        if key != "unattributed":
            by_workload.setdefault(key, []).append(day)
    # as the assets do: each raw_traces partition is stored, then curation scans them
    stored = work / "raw_traces"
    out = 0
    for key, days in by_workload.items():
        paths = []
        for day in sorted(days):
            paths.append(stored / day / f"{key}.parquet")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            read_partition(source.landing_path, day, key)[0].write_parquet(paths[-1])
        dataset, _ = curate(pl.concat([pl.scan_parquet(p) for p in paths]))
        out += dataset.height
    return {"unique": out, "workloads": len(by_workload)}


def phase(name: str, path: Path, work: Path, workers: int) -> None:
    start = time.perf_counter()
    result = run_baseline(path) if name == "baseline" else run_curation(path, work, workers)
    result.update(
        seconds=time.perf_counter() - start,
        peak_rss_mib=peak_rss_mib(),
        peak_worker_rss_mib=peak_worker_rss_mib(),
    )
    print(json.dumps(result))


def measure(name: str, path: Path, work: Path, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--file", str(path), "--work", str(work),
         "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the generated file and landing here")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="validation processes (default: CPUs)"
    )
    parser.add_argument("--phase", choices=["baseline", "curation"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args.file, args.work, args.workers)
        return

    from flywheel_assets.core.sample_data import generate_records

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
    print(f"ratio curation / baseline: {curation['seconds'] / baseline['seconds']:.2f}  (target <= 2)")
    main_gib = curation["peak_rss_mib"] / 1024
    if args.workers > 1:
        worker_gib = curation["peak_worker_rss_mib"] / 1024
        print(
            f"curation peak RSS: {main_gib:.2f} GiB main process + at most {args.workers} x "
            f"{worker_gib:.2f} GiB validation workers = {main_gib + args.workers * worker_gib:.2f} GiB"
            "  (target <= 2 GiB)"
        )
    else:
        print(f"curation peak RSS: {main_gib:.2f} GiB  (target <= 2 GiB)")


if __name__ == "__main__":
    main()
