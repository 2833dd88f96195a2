"""How close does OpenAICompatibleBackend.complete come to ideal concurrency?

Starts the fake OpenAI-compatible server (tests/fake_openai_server.py) on loopback with
a fixed latency, sends N chat requests at concurrency C, and compares the elapsed time
with the ideal ``N * latency / C`` (a perfectly overlapped client with zero overhead).
Target: ideal / elapsed >= 0.8. Each figure is the min / median / max of ``--repeat`` runs
(default 5), each with a fresh server and client, since a single run on a shared machine can
land anywhere in that range; the exit code follows the median.

The server runs in a subprocess by default so that it does not compete with the client
for one interpreter lock; ``--in-process`` runs both in this process (harder: every
request's server work and client work then share one core's worth of Python).

    python benchmarks/eval_throughput.py [--requests N --concurrency C --latency-ms L --repeat R]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_openai_server import FakeOpenAIServer  # noqa: E402

from flywheel_assets.core.chat import ChatPrompt  # noqa: E402
from resources.openai_compatible import OpenAICompatibleBackend  # noqa: E402

TARGET_FRACTION = 0.8


@contextlib.contextmanager
def server_in_subprocess(latency_ms: float) -> Iterator[str]:
    """The fake server as a child process; yields its base URL."""
    command = [sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.split(" ", 1)[1].strip()
    finally:
        if process.stdin:
            process.stdin.close()  # the server exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def server_in_process(latency_ms: float) -> Iterator[str]:
    with FakeOpenAIServer(latency_s=latency_ms / 1000) as server:
        yield server.base_url


def make_prompts(count: int) -> list[ChatPrompt]:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    return [
        ChatPrompt(messages=[{"role": "user", "content": f"get_weather for city {i}"}], tools=tools)
        for i in range(count)
    ]


def run(requests: int, concurrency: int, latency_ms: float, in_process: bool) -> float:
    """One measurement, printed in a line; returns ideal / elapsed."""
    server = server_in_process if in_process else server_in_subprocess
    prompts = make_prompts(requests)
    with server(latency_ms) as base_url:
        backend = OpenAICompatibleBackend(base_url, "fake-model", max_concurrency=concurrency, timeout_s=30)
        started = time.perf_counter()
        completions = backend.complete(prompts)
        elapsed = time.perf_counter() - started
    errors = sum(1 for c in completions if c.error is not None)
    ideal = requests * (latency_ms / 1000) / concurrency
    print(
        f"  elapsed {elapsed:.3f} s, {requests / elapsed:.1f} requests/s, {errors} errors, "
        f"ideal/elapsed {ideal / elapsed:.3f}"
    )
    return ideal / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAICompatibleBackend throughput against a fake server")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--in-process", action="store_true", help="serve from this process (shares the GIL)")
    parser.add_argument("--repeat", type=int, default=5, help="runs to take min / median / max over")
    args = parser.parse_args(argv)
    ideal = args.requests * (args.latency_ms / 1000) / args.concurrency
    print(
        f"server {'in-process' if args.in_process else 'subprocess'}, latency {args.latency_ms:g} ms; "
        f"{args.requests} requests at concurrency {args.concurrency}; ideal {ideal:.3f} s"
    )
    fractions = [run(args.requests, args.concurrency, args.latency_ms, args.in_process) for _ in range(args.repeat)]
    median = statistics.median(fractions)
    print(
        f"ideal/elapsed over {args.repeat} runs: min {min(fractions):.3f}, median {median:.3f}, "
        f"max {max(fractions):.3f}  (target >= {TARGET_FRACTION})"
    )
    return 0 if median >= TARGET_FRACTION else 1


if __name__ == "__main__":
    sys.exit(main())
