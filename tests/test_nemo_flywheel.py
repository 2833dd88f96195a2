"""The whole flywheel on the `nemo` backend, switched by configuration alone, against the
NeMo emulator: one workload x two candidates, with injected faults.

The flywheel runs in a subprocess configured only through environment variables
(FLYWHEEL_BACKEND=nemo, the three NeMo URLs, FLYWHEEL_CANDIDATES), as an operator would.
"""

import json
import os
import subprocess
import sys

from nemo_emulator import nemo_emulator

from flywheel_assets.core.leaderboard import LEADERBOARD_SCHEMA
from flywheel_assets.sample_data import write_sample_traces

CANDIDATES = {
    "candidates": [
        {
            "name": "llama-1b",
            "backend": "nemo",
            "base_model": "meta/llama-3.2-1b-instruct",
            "customizer_target": "meta/llama-3.2-1b-instruct@2.0",
            "cost": {"usd_per_million_prompt_tokens": 0.05, "usd_per_million_completion_tokens": 0.05},
        },
        {
            "name": "llama-8b",
            "backend": "nemo",
            "base_model": "meta/llama-3.1-8b-instruct",
            "cost": {"usd_per_million_prompt_tokens": 0.2, "usd_per_million_completion_tokens": 0.2},
        },
    ]
}

# The operator's view: the code location's own definitions, NeMo polled fast for the test.
RUN_FLYWHEEL = """
import json, sys
import dagster as dg
from flywheel_assets.definitions import defs
from flywheel_assets.runner import run_flywheel
from resources.nemo.backend import NemoBackend
from resources.platform import NemoPlatform
resources = dict(defs.resources)
platform = resources["platform"]
nemo = platform.nemo  # as the environment configured it; a new resource, polling fast
fast = NemoBackend(
    nemo_base_url=nemo.nemo_base_url, datastore_base_url=nemo.datastore_base_url,
    nim_base_url=nemo.nim_base_url, namespace=nemo.namespace, poll_interval_s=0.01,
    backoff_s=0.01, max_backoff_s=0.05, request_timeout_s=5.0, chat_timeout_s=5.0,
)
resources["platform"] = NemoPlatform(nemo=fast)
with dg.instance_for_test() as instance:
    result = run_flywheel(dg.Definitions(assets=defs.assets, resources=resources), instance, log=lambda m: print(__import__("time").strftime("%X"), m, file=sys.stderr))
from flywheel_assets.train import lora_adapter
print(json.dumps({"failed": len(result.failed), "boards": {w: b.to_dicts() for w, b in result.leaderboards.items()},
                  "gpu_step_tags": lora_adapter.op.tags}))
"""


def run_on_nemo(tmp_path, emulator) -> dict:
    write_sample_traces(tmp_path / "traces", n=260, seed=2, days=1, workloads="tool_router")
    (tmp_path / "candidates.json").write_text(json.dumps(CANDIDATES))
    env = {
        **os.environ,
        "FLYWHEEL_BACKEND": "nemo",
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_TRACES_DIR": str(tmp_path / "traces"),
        "FLYWHEEL_CANDIDATES": str(tmp_path / "candidates.json"),
        "FLYWHEEL_NEMO_BASE_URL": emulator.nemo_base_url,
        "FLYWHEEL_NEMO_DATASTORE_URL": emulator.datastore_base_url,
        "FLYWHEEL_NIM_BASE_URL": emulator.nim_base_url,
    }
    done = subprocess.run([sys.executable, "-c", RUN_FLYWHEEL], env=env, capture_output=True, text=True, timeout=600)
    print(done.stderr[-4000:])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_flywheel_on_nemo_with_faults_gives_the_same_leaderboard_shape(tmp_path):
    with nemo_emulator() as emulator:
        emulator.set_fault_rate(0.2, seed=7)
        outcome = run_on_nemo(tmp_path, emulator)
        assert outcome["failed"] == 0
        (board,) = outcome["boards"].values()
        assert set(board[0]) == set(LEADERBOARD_SCHEMA)
        assert sorted((r["candidate"], r["experiment"]) for r in board) == [
            (c, e) for c in ("llama-1b", "llama-8b") for e in ("base", "customized", "icl")
        ]
        # one customization job per candidate, however many requests were retried
        assert len(emulator.customization_jobs) == 2
        assert emulator.deployments_alive == []
        # the GPU work ran on NeMo: the step pods ask for no GPU of their own
        assert "dagster-k8s/config" not in outcome["gpu_step_tags"]
        # the emulated NIM calls the tool named in the prompt: customized models score
        assert all(0.0 <= r["score"] <= 1.0 for r in board)
