"""An evaluation's data version is its result (issue 15, item 7): base and ICL results of
one candidate never share a version, an unchanged re-evaluation keeps its version, and a
re-evaluation whose result changed (a remote candidate answering differently) makes the
leaderboard's automation condition request it, in a temporary instance.

The candidate answers through real HTTP on loopback (tests/fake_openai_server.py); the
platform resource is the local one with serving pointed at that endpoint and no training.
"""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg
import polars as pl
from fake_openai_server import FakeOpenAIServer, last_user_text
from test_automation import DAY, GPU, INGEST, SPLITS, Flywheel, write_workload

from flywheel_assets.core.versions import evaluation_version
from partitions.slices import candidate_workload_key, trace_partition_key
from resources.openai_compatible import OpenAICompatibleBackend
from resources.platform import Adapter, LocalPlatform, Trained


class EndpointPlatform(LocalPlatform):
    """Every candidate served by one OpenAI-compatible endpoint, never fine-tuned."""

    endpoint: str

    def train(self, candidate, train, validation, hp, *, workload_key, log) -> Trained:
        return Trained(adapter=Adapter(trained=False, reason="endpoint candidate: no local weights"), metadata={})

    @contextmanager
    def serving(self, candidate, train, adapter=None):
        yield OpenAICompatibleBackend(self.endpoint, "fake-model", backoff_s=0.0)


def data_versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        event.asset_key.to_user_string(): event.materialization.tags["dagster/data_version"]
        for event in result.get_asset_materialization_events()
    }


def test_the_leaderboard_refreshes_when_only_a_result_changed(tmp_path):
    answer = {"prefix": "echo"}  # what the remote candidate says; changed below

    def responder(request):
        return {"role": "assistant", "content": f"{answer['prefix']}: {last_user_text(request)}"}

    workload, key = "wv", candidate_workload_key("tiny-demo", "wv")
    with FakeOpenAIServer(responder=responder) as server, dg.DagsterInstance.ephemeral() as instance:
        fw = Flywheel(tmp_path, instance)
        fw.resources["platform"] = EndpointPlatform(
            model_cache_dir=str(tmp_path / "models"), adapters_dir=str(tmp_path / "adapters"), endpoint=server.base_url
        )
        write_workload(fw.traces, workload, 60, f"{workload}.jsonl")
        instance.add_dynamic_partitions("workload", [workload])
        assert fw.materialize(INGEST, trace_partition_key(DAY.isoformat(), workload)).success
        assert fw.materialize(SPLITS, workload).success
        first = fw.materialize(GPU, key)
        assert first.success
        versions = data_versions(first)
        assert versions["base_eval"] != versions["icl_eval"]  # one version per result
        (icl,) = [e for e in first.get_asset_materialization_events() if e.asset_key.to_user_string() == "icl_eval"]
        metadata = {k: v.value for k, v in icl.materialization.metadata.items()}
        assert metadata["icl_strategy"] == "lexical" and metadata["top_similarity_mean"] > 0
        assert "| record_id | examples | similarity |" in metadata["icl_choices"]
        assert fw.materialize(["leaderboard"], workload).success
        fw.tick()  # records the state

        again = fw.materialize(["base_eval"], key)
        assert data_versions(again)["base_eval"] == versions["base_eval"]  # same answers, same result
        assert "leaderboard" not in fw.tick()

        answer["prefix"] = "I think the answer is"  # the remote model changed: only the result differs
        changed = fw.materialize(["base_eval"], key)
        assert data_versions(changed)["base_eval"] != versions["base_eval"]
        assert fw.tick().get("leaderboard") == {workload}


def test_the_version_covers_the_rows_and_what_produced_them():
    rows = pl.DataFrame({"record_id": ["b", "a"], "similarity": [0.5, 1.0], "latency_s": [0.1, 0.2]})
    base = evaluation_version(rows, {"experiment": "base"})
    assert evaluation_version(rows.reverse(), {"experiment": "base"}) == base  # record order
    assert evaluation_version(rows.with_columns(latency_s=pl.lit(9.0)), {"experiment": "base"}) == base  # timing
    assert evaluation_version(rows.with_columns(similarity=pl.lit(0.5)), {"experiment": "base"}) != base
    assert evaluation_version(rows, {"experiment": "icl"}) != base
    assert evaluation_version(rows, {"experiment": "base", "judge": {"model": "j"}}) != base
    icl = {"experiment": "icl", "icl": {"strategy": "lexical", "examples": {"a": ["x"]}}}
    assert evaluation_version(rows, icl) != evaluation_version(
        rows, {**icl, "icl": {"strategy": "uniform", "examples": {"a": ["x"]}}}
    )
