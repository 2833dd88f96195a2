"""Weave sensor tick cost: it must follow the new traffic, not the history.

Measures one full `weave_trace_sensor` tick (query the fake Weave trace server, map the
calls, write the JSONL file, land it, build the run requests) that finds 1,000 new calls:

- `fresh`:   a project with only those 1,000 calls (the sensor's first tick);
- `history`: the same 1,000 calls after 1,000,000 calls the cursor has already passed.

The fake server keeps the history as 1M synthetic calls generated on demand (16 bytes a
call) and finds the `started_at` bound (the client's look-back, an hour before its
cursor) by bisection, so it costs the same in both cases unless the client asks for
history (beyond that hour). Each case is timed `--repeat` times from a fresh
landing folder; the median counts. Pass: history <= 2x fresh.

    .venv/bin/python benchmarks/sensor.py [--history 1000000] [--new 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import dagster as dg  # noqa: E402
from fake_weave_server import CallFactory, FakeWeaveServer, iso, op_ref  # noqa: E402

from resources.traces import FileTraceSource  # noqa: E402
from resources.weave_source import WeaveCursor, WeaveTraceSource, to_micros  # noqa: E402
from sensors.weave import poll_weave  # noqa: E402

WORKLOADS = ("tool_router", "support_chat", "query_rewrite")


def history_call(n: int, micros: int) -> dict:
    """A compact past call (built only if a query returns it)."""
    return {
        "op_name": op_ref("acme", "hist", "openai.chat.completions.create"),
        "ended_at": iso(micros + 200_000),
        "attributes": {"workload_id": WORKLOADS[n % 3], "client_id": "app"},
        "inputs": {"model": "m", "messages": [{"role": "user", "content": f"old question {n}"}]},
        "output": {"choices": [{"message": {"role": "assistant", "content": f"old answer {n}"}}]},
    }


def new_calls(project: str, count: int, first: float) -> list[dict]:
    factory = CallFactory(project=project)
    return [
        factory.chat(first + i * 0.5, workload_id=WORKLOADS[i % 3], question=f"new question {i}") for i in range(count)
    ]


def tick(server: FakeWeaveServer, project: str, cursor: WeaveCursor, workdir: Path) -> tuple[float, int, int]:
    traces = workdir / "traces"
    traces.mkdir(parents=True)
    resources = {
        "weave_source": WeaveTraceSource(
            entity="acme", project=project, base_url=server.base_url, page_size=1000, max_retries=0
        ),
        "trace_source": FileTraceSource(traces_dir=str(traces), landing_dir=str(workdir / "landing")),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor.to_json(), resources=resources)
        served = server.calls_served
        start = time.perf_counter()
        result = poll_weave(context, resources["weave_source"], resources["trace_source"])
        elapsed = time.perf_counter() - start
    assert isinstance(result, dg.SensorResult), result
    records = sum(1 for _ in next((traces / "weave").iterdir()).open())
    return elapsed, records, server.calls_served - served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    now = dt.datetime.now(dt.UTC).timestamp()
    new_from = now - 3600  # the new calls: the last hour, settled
    server = FakeWeaveServer().start()
    try:
        t = time.perf_counter()
        # history: a month of traffic before the new calls, all behind the cursor
        step = (30 * 86_400 * 1_000_000) // args.history
        first_micros = to_micros(new_from) - args.history * step
        server.add_synthetic("acme/hist", args.history, first_micros, step, history_call, id_prefix="h-")
        last_seen = first_micros + (args.history - 1) * step
        # the cursor after the last history call, which ended 0.2 s after it started
        history_cursor = WeaveCursor(ended_at=last_seen + 200_000, ids=(f"h-{args.history - 1:012d}",))
        server.add_calls(new_calls("hist", args.new, new_from))
        server.add_calls(new_calls("fresh", args.new, new_from))
        print(
            f"fake server: {args.history:,} history calls + 2 x {args.new:,} new calls "
            f"loaded in {time.perf_counter() - t:.1f} s"
        )

        with tempfile.TemporaryDirectory() as tmp:
            tick(server, "fresh", WeaveCursor(), Path(tmp) / "warmup")  # imports, connections
            times: dict[str, list[float]] = {"fresh": [], "history": []}
            for r in range(args.repeat):
                for case, project, cursor in (
                    ("fresh", "fresh", WeaveCursor()),
                    ("history", "hist", history_cursor),
                ):
                    elapsed, records, served = tick(server, project, cursor, Path(tmp) / f"{case}-{r}")
                    assert records == args.new, (case, records)
                    times[case].append(elapsed)
                    if r == 0:
                        print(f"{case:>8}: {records} records written, {served} calls served by the server")
    finally:
        server.stop()

    fresh, history = statistics.median(times["fresh"]), statistics.median(times["history"])
    ratio = history / fresh
    print(f"tick, {args.new:,} new calls, no history:           {fresh * 1000:8.1f} ms (median of {args.repeat})")
    print(
        f"tick, {args.new:,} new calls, {args.history:,} seen before: {history * 1000:8.1f} ms (median of {args.repeat})"
    )
    print(f"ratio history / fresh: {ratio:.2f} (limit 2.00) -> {'PASS' if ratio <= 2 else 'FAIL'}")
    return 0 if ratio <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
