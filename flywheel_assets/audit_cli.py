"""`flywheel-audit <workload>`: the lineage chain of a workload, from the Dagster instance.

Prints traces window -> dataset version -> split hashes -> adapters -> eval scores ->
leaderboard -> promotions (production first), each with its Dagster run id, data version
and W&B artifact; then the models that actually served the workload's production traffic
(`production_metrics` of the last `--days` days), flagging traffic no promotion approved.
Reads the instance in DAGSTER_HOME (default $FLYWHEEL_HOME/dagster_home, as `flywheel demo`
uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel-audit", description=__doc__.split("\n")[0])
    parser.add_argument("workload", help="workload id or its partition key")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")
    parser.add_argument("--history", type=int, default=10, help="promotions shown (newest first)")
    parser.add_argument("--days", type=int, default=30, help="days of production traffic shown (latest first)")
    args = parser.parse_args(argv)

    import dagster as dg

    from flywheel_assets.core.audit import format_chain, served_models
    from flywheel_assets.lineage import latest_materializations, promotion_history
    from flywheel_assets.monitor import stored_production_metrics
    from flywheel_assets.settings import flywheel_home
    from partitions.keys import workload_key
    from partitions.slices import candidate_partitions, workload_partitions
    from resources.datasets import StoredAssets

    os.environ.setdefault("DAGSTER_HOME", str(flywheel_home() / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        known = instance.get_dynamic_partitions(workload_partitions.name)
        key = args.workload if args.workload in known else workload_key(args.workload)
        if key not in known:
            print(
                f"unknown workload {args.workload!r} in {os.environ['DAGSTER_HOME']}; known: {', '.join(sorted(known)) or 'none'}",
                file=sys.stderr,
            )
            return 2
        latest = latest_materializations(instance, key, candidate_partitions.get_partition_keys())
        promotions = promotion_history(instance, key, limit=args.history)
        stored = StoredAssets(base_dir=str(flywheel_home() / "assets"))
        served = served_models(stored_production_metrics(instance, stored, key, args.days))
    workload_id = next((m.summary.get("workload_id") for m in latest if m.asset == "raw_traces"), None)
    if args.json:
        print(
            json.dumps(
                {
                    "workload_key": key,
                    "workload_id": workload_id,
                    "latest": [m.model_dump(mode="json") for m in latest],
                    "promotions": [p.model_dump(mode="json") for p in promotions],
                    "served_models": served.to_dicts(),
                },
                indent=2,
            )
        )
    else:
        print(format_chain(key, workload_id, latest, promotions, served))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
