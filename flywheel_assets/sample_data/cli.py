"""``flywheel-sample-traces``: write seeded sample traces from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from flywheel_assets.sample_data.generator import DEFAULT_END_DATE, Serving
from flywheel_assets.sample_data.workloads import DEFAULT_WORKLOADS
from flywheel_assets.sample_data.writers import FORMATS, write_sample_traces


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel-sample-traces", description="Write seeded, realistic production LLM traces (one file per day)."
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--records", type=int, default=3000, help="number of records (3000)")
    p.add_argument("--days", type=int, default=7, help="days covered, ending at --end-date (7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--malformed-rate", type=float, default=0.03)
    p.add_argument(
        "--end-date",
        default=DEFAULT_END_DATE.isoformat(),
        help=f"last day, YYYY-MM-DD ({DEFAULT_END_DATE.isoformat()})",
    )
    p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help="comma-separated workload ids")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="jsonl")
    sim = p.add_argument_group("simulated post-promotion traffic (each record carries a `simulation` label)")
    sim.add_argument(
        "--served-model",
        help="model name serving every request, e.g. the promoted candidate's (its name, model_id or served_as)",
    )
    sim.add_argument("--canary-model", help="model name serving a canary share of the requests")
    sim.add_argument("--canary-share", type=float, default=0.0, help="share served by the canary (0)")
    sim.add_argument(
        "--canary-latency-factor", type=float, default=1.0, help="canary latencies times this (1: no real difference)"
    )
    sim.add_argument(
        "--drift", action="store_true", help="drifted tool_router mix with a tool never trained on (exchange_item)"
    )
    return p


def _describe(serving: Serving) -> list[str]:
    parts = [f"served by {serving.served_model}"] if serving.served_model else []
    if serving.canary_model:
        parts.append(
            f"{serving.canary_share:.0%} by canary {serving.canary_model} at {serving.canary_latency_factor:g}x latency"
        )
    return parts + (["drifted tool mix"] if serving.drift else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        serving = Serving(
            args.served_model, args.canary_model, args.canary_share, args.canary_latency_factor, args.drift
        )
        paths = write_sample_traces(
            args.out,
            args.records,
            seed=args.seed,
            days=args.days,
            end_date=args.end_date,
            malformed_rate=args.malformed_rate,
            workloads=args.workloads,
            fmt=args.fmt,
            serving=serving,
        )
    except ValueError as exc:
        print(f"flywheel-sample-traces: error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    kind = f"SIMULATED post-promotion records ({', '.join(_describe(serving))})" if serving.simulated else "records"
    print(f"wrote {args.records} {kind} to {len(paths)} files in {args.out} ({elapsed:.2f}s)")
    return 0
