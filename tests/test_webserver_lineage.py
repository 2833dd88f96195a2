"""Browsing an audit the way a person does: a flywheel run and a promotion recorded in a
persistent instance, then the real `dagster-webserver` on loopback, asked through its
GraphQL API for the asset graph, the lineage from promoted_model back to raw_traces, and
the promotion's metadata; and `flywheel-audit` printing the same chain."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
from flywheel_chain import WL, promoted_chain, write_traces

from flywheel_assets.definitions import ASSETS, build_resources
from flywheel_assets.jobs import promote_job, rollback_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A flywheel run (one workload, one epoch) and a promotion, in DAGSTER_HOME=<tmp>/dagster_home."""
    tmp = tmp_path_factory.mktemp("webserver")
    write_traces(tmp / "traces")
    (tmp / "dagster_home").mkdir()
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test(temp_dir=str(tmp / "dagster_home")) as instance:
        mp.setenv("WANDB_MODE", "disabled")
        resources = build_resources(tmp, tmp / "traces")
        defs = dg.Definitions(assets=ASSETS, jobs=[promote_job, rollback_job], resources=resources)
        promoted_chain(defs, instance, resources, approver="carol", reason="audit walkthrough")
    yield tmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(tmp: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "FLYWHEEL_HOME": str(tmp),
        "FLYWHEEL_TRACES_DIR": str(tmp / "traces"),
        "WANDB_MODE": "disabled",
    }


@pytest.fixture(scope="module")
def graphql(home):
    port = free_port()
    webserver = Path(sys.executable).parent / "dagster-webserver"
    log = open(home / "webserver.log", "wb")
    proc = subprocess.Popen(
        [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env_for(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"

    def query(text: str, **variables) -> dict:
        response = httpx.post(url, json={"query": text, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (home / "webserver.log").read_text()[-3000:]
            try:
                status = query(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name "
                    "loadStatus locationOrLoadError { __typename } } } } }"
                )
                entries = status["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dagster-webserver did not load the code location in 240 s"
            time.sleep(1)
        yield query
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


ASSET_GRAPH = """{ assetNodes { assetKey { path } dependencyKeys { path } groupName jobNames
                   automationCondition { label } } }"""

PROMOTION = """query ($partition: String!) {
  assetOrError(assetKey: {path: ["promoted_model"]}) {
    ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) {
      runId partition
      metadataEntries { label __typename
        ... on JsonMetadataEntry { jsonString }
        ... on TextMetadataEntry { text }
        ... on PipelineRunMetadataEntry { runId } } } } } }"""

RUN = """query ($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { jobName status } } }"""


def test_graphql_shows_the_asset_graph_and_lineage_back_to_raw_traces(graphql):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(ASSET_GRAPH)["assetNodes"]}
    assert {
        "raw_traces",
        "workload_dataset",
        "eval_dataset",
        "train_dataset",
        "lora_adapter",
        "base_eval",
        "icl_eval",
        "customized_eval",
        "leaderboard",
        "promoted_model",
    } <= set(nodes)
    parents = {key: {"/".join(d["path"]) for d in n["dependencyKeys"]} for key, n in nodes.items()}

    def paths_up(key):  # every lineage path from `key` to a root
        return [[key]] if not parents[key] else [[key, *p] for parent in sorted(parents[key]) for p in paths_up(parent)]

    paths = paths_up("promoted_model")
    assert [
        "promoted_model",
        "leaderboard",
        "customized_eval",
        "lora_adapter",
        "train_dataset",
        "workload_dataset",
        "raw_traces",
    ] in paths
    assert all(path[-1] == "raw_traces" for path in paths)
    promoted = nodes["promoted_model"]
    assert promoted["groupName"] == "promote" and promoted["automationCondition"] is None
    assert {"promote", "rollback"} <= set(promoted["jobNames"])


def test_graphql_shows_the_promotions_audit_metadata_and_upstream_runs(graphql):
    (materialization,) = graphql(PROMOTION, partition=WL)["assetOrError"]["assetMaterializations"]
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert entries["approver"]["text"] == "carol" and entries["reason"]["text"] == "audit walkthrough"
    assert entries["action"]["text"] == "promote" and entries["candidate"]["text"] == "tiny-demo"
    assert '"upstream"' in entries["audit_record"]["jsonString"]
    assert graphql(RUN, runId=materialization["runId"])["runOrError"] == {
        "__typename": "Run",
        "jobName": "promote",
        "status": "SUCCESS",
    }
    # every upstream materialization is linked by its run, and the runs are in the instance
    links = {label: e["runId"] for label, e in entries.items() if label.startswith("upstream/")}
    assert {
        f"upstream/leaderboard[{WL}]",
        f"upstream/lora_adapter[tiny-demo|{WL}]",
        f"upstream/customized_eval[tiny-demo|{WL}]",
        f"upstream/train_dataset[{WL}]",
        f"upstream/workload_dataset[{WL}]",
    } <= set(links)
    for run_id in set(links.values()):
        assert graphql(RUN, runId=run_id)["runOrError"]["status"] == "SUCCESS"


def test_flywheel_audit_prints_the_chain(home):
    out = subprocess.run(
        [sys.executable, "-m", "flywheel_assets.audit_cli", WL],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    lines = out.splitlines()
    stages = [line.split()[0] for line in lines[1:]]
    assert stages[:4] == ["traces", "dataset", "split", "split"]
    # the production record, then the models that served the traffic (production_metrics)
    after_promotions = stages[stages.index("production") + 1 :]
    assert after_promotions and set(after_promotions) <= {"served", "UNAPPROVED"}
    assert "raw_traces: 1 days" in out and "content_hash" in out
    assert f"lora_adapter[tiny-demo|{WL}]" in out and "final_loss" in out
    assert "function_name_accuracy" in out
    assert "promote: tiny-demo (customized)" in out and "by carol" in out
