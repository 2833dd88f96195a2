"""Near-duplicate benchmark: curation's near-duplicate clusters against its exact dedup.

Generates N traces (default 1,000,000) with the sample generator and keeps the columns
curation decides on (record id, timestamp, dedup key = user contents + tool names) in a
Parquet file. Then measures, each phase in its own process so peak RSS is its own:
  exact  read the file, order by time, keep the earliest record of each dedup key
         (curation's exact dedup)
  near   the same, then mark every kept record's near-duplicate cluster
         (`mark_near_duplicates`: MinHash signatures, LSH banding, exact confirmation)
and prints records/s, peak RSS, the number of clusters and the ratio near / exact.

    python benchmarks/near_duplicates.py [--records N] [--threshold J] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from curation import TreeRssSampler  # noqa: E402  (benchmarks/ is the script's folder)


def exact_dedup(path: Path) -> pl.DataFrame:
    from flywheel_assets.core.curation import DEDUP_KEY

    return (
        pl.read_parquet(path)
        .sort("timestamp", "record_id", maintain_order=True)
        .unique(subset=list(DEDUP_KEY), keep="first", maintain_order=True)
    )


def run_phase(name: str, path: Path, threshold: float) -> dict:
    kept = exact_dedup(path)
    result = {"unique": kept.height}
    if name == "near":
        from flywheel_assets.core.curation import mark_near_duplicates

        _, clusters = mark_near_duplicates(kept, threshold)
        result.update(clusters=clusters.height, clustered=int(clusters.get_column("records").sum()))
    return result


def phase(name: str, path: Path, threshold: float) -> None:
    sampler = TreeRssSampler()
    sampler.start()
    start = time.perf_counter()
    result = run_phase(name, path, threshold)
    result.update(seconds=time.perf_counter() - start, peak_rss_mib=sampler.stop())
    print(json.dumps(result))


def measure(name: str, path: Path, threshold: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--file", str(path), "--threshold", str(threshold)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_dedup_columns(records: int, path: Path) -> int:
    """The generator's valid traces as curation's narrow columns; returns how many."""
    from flywheel_assets.sample_data import generate_records

    rows = {"record_id": [], "timestamp": [], "user_key": [], "tool_names": []}
    for i, line in enumerate(generate_records(records, seed=0, malformed_rate=0.0)):
        record = json.loads(line)
        request = record["request"]
        users = [m["content"] for m in request["messages"] if m["role"] == "user"]
        rows["record_id"].append(f"r{i}")
        rows["timestamp"].append(record["timestamp"])
        rows["user_key"].append(json.dumps(users, ensure_ascii=False))
        rows["tool_names"].append(json.dumps(sorted(t["function"]["name"] for t in request.get("tools", []))))
    pl.DataFrame(rows).write_parquet(path)
    return len(rows["record_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--keep", type=Path, help="keep the generated file here")
    parser.add_argument("--phase", choices=["exact", "near"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args.file, args.threshold)
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "dedup_columns.parquet"
    start = time.perf_counter()
    n = write_dedup_columns(args.records, path)
    print(f"generated {n:,} traces in {time.perf_counter() - start:.1f}s")
    exact = measure("exact", path, args.threshold)
    near = measure("near", path, args.threshold)
    for name, r in (("exact dedup (polars unique)", exact), ("+ near-duplicate clusters", near)):
        print(
            f"{name:30s} {r['seconds']:7.1f}s  {n / r['seconds']:>10,.0f} records/s  "
            f"peak RSS {r['peak_rss_mib']:,.0f} MiB  unique {r['unique']:,}"
        )
    print(
        f"near-duplicate clusters: {near['clusters']:,} holding {near['clustered']:,} records "
        f"(Jaccard >= {args.threshold})"
    )
    print(f"ratio near / exact: {near['seconds'] / exact['seconds']:.1f}  (target <= 3)")
    print(f"near peak RSS: {near['peak_rss_mib'] / 1024:.2f} GiB  (target <= 2 GiB)")


if __name__ == "__main__":
    main()
