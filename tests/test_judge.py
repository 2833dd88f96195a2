"""Judge calibration: the shipped gold set, the agreement measures, and the asset materialized
against the embedded default (token F1) and an LLM judge on loopback."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import dagster as dg
import pytest
from fake_openai_server import FakeOpenAIServer
from scipy.stats import spearmanr

from flywheel_assets.core.calibration import (
    SCORE_BINS,
    GoldPair,
    calibrate,
    load_gold_set,
    score_bin,
)
from flywheel_assets.core.chat import AssistantMessage, ChatPrompt, Completion
from flywheel_assets.core.metrics import JUDGE_PROMPT_SHA256, token_f1_similarity
from flywheel_assets.judge import AGREEMENT_CHECK, judge_calibration
from resources.datasets import ParquetIOManager
from resources.platform import LocalPlatform

GOLD = load_gold_set()


def test_shipped_gold_set_covers_the_scale():
    assert 30 <= len(GOLD) <= 40
    assert len({pair.id for pair in GOLD}) == len(GOLD)
    bins = Counter(score_bin(pair.human / 10) for pair in GOLD)
    assert all(bins[name] >= 8 for name in SCORE_BINS), bins  # every bin well populated
    assert {0, 10} <= {pair.human for pair in GOLD}


def test_score_bins_edges():
    assert [score_bin(s) for s in (0.0, 0.39, 0.4, 0.69, 0.7, 1.0)] == ["low", "low", "mid", "mid", "high", "high"]


def test_a_bad_gold_line_names_itself(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text(
        '{"id": "a", "reference": "x", "candidate": "y", "human": 4}\n'
        '{"id": "b", "reference": "x", "candidate": "y", "human": 12}\n'
    )
    with pytest.raises(ValueError, match=r"line 2 .*human \(an integer 0-10\)"):
        load_gold_set(path)
    path.write_text('{"id": "a", "reference": "x", "candidate": "y", "human": 4}\n' * 2)
    with pytest.raises(ValueError, match=r"repeats ids: \['a'\]"):
        load_gold_set(path)


def test_token_f1_calibration_says_which_method_and_matches_scipy():
    result = calibrate(GOLD, judge=None)
    assert (result.method, result.judge, result.pairs, result.unscored) == ("token_f1", None, len(GOLD), 0)
    machine = [token_f1_similarity(pair.reference, pair.candidate) for pair in GOLD]
    assert result.spearman == pytest.approx(spearmanr([p.human for p in GOLD], machine).statistic)
    # the gold set is built so that shared words and meaning disagree: token F1 ranks poorly
    assert result.spearman < 0.6


class GoldJudge:
    """A ChatBackend judge that knows the gold scores: answers with the human score (shifted
    by `offset`), or one of `replies` for the listed gold ids."""

    model = "gold-judge"
    temperature = 0.0

    def __init__(self, replies: dict[str, str | Exception] | None = None, offset: int = 0) -> None:
        self.replies = replies or {}
        self.offset = offset

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        out = []
        for prompt in prompts:
            pair = _gold_pair_of(prompt.messages[-1]["content"])
            reply = self.replies.get(pair.id, f"Reasoning.\nSIMILARITY: {min(10, pair.human + self.offset)}")
            out.append(
                Completion(error=str(reply))
                if isinstance(reply, Exception)
                else Completion(message=AssistantMessage(content=reply))
            )
        return out


def _gold_pair_of(user_prompt: str) -> GoldPair:
    reference = re.search(r"<reference>\n(.*)\n</reference>", user_prompt, re.DOTALL).group(1)
    candidate = re.search(r"<candidate>\n(.*)\n</candidate>", user_prompt, re.DOTALL).group(1)
    return next(p for p in GOLD if (p.reference, p.candidate) == (reference, candidate))


def test_a_judge_that_agrees_with_people_calibrates_perfectly():
    result = calibrate(GOLD, GoldJudge())
    assert result.method == "judge"
    assert result.judge == {"model": "gold-judge", "prompt_sha256": JUDGE_PROMPT_SHA256, "temperature": 0.0}
    assert result.spearman == pytest.approx(1.0) and result.kappa == pytest.approx(1.0)


def test_a_judge_that_is_one_point_generous_keeps_rank_but_loses_kappa():
    result = calibrate(GOLD, GoldJudge(offset=1))
    assert result.spearman > 0.95  # capped at 10: nearly the same order
    assert result.kappa < 1.0  # 3 -> 4 and 6 -> 7 cross bin edges


def test_failed_judgements_are_counted_and_left_out_never_scored_zero():
    broken = {GOLD[0].id: RuntimeError("HTTP 503"), GOLD[1].id: "SIMILARITY: 7-8", GOLD[2].id: "I can't rate this."}
    result = calibrate(GOLD, GoldJudge(broken))
    assert (result.scored, result.unscored) == (len(GOLD) - 3, 3)
    assert result.spearman == pytest.approx(1.0)  # a 0 for each would have broken the perfect ranking
    reasons = {row["id"]: row["reason"] for row in result.rows if row["machine"] is None}
    assert reasons[GOLD[0].id] == "judge error: HTTP 503"
    assert "a range" in reasons[GOLD[1].id] and "no SIMILARITY" in reasons[GOLD[2].id]


def test_too_few_scored_pairs_give_no_agreement():
    replies = {pair.id: "no idea" for pair in GOLD[4:]}
    result = calibrate(GOLD, GoldJudge(replies))
    assert (result.scored, result.spearman, result.kappa) == (4, None, None)


def _materialize(tmp_path, platform: LocalPlatform, config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [judge_calibration],
        resources={"platform": platform, "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets"))},
        run_config={"ops": {"judge_calibration": {"config": config or {}}}},
        instance=dg.DagsterInstance.ephemeral(),
    )


def _platform(tmp_path, **judge) -> LocalPlatform:
    return LocalPlatform(model_cache_dir=str(tmp_path / "models"), adapters_dir=str(tmp_path / "adapters"), **judge)


def test_embedded_default_calibrates_token_f1_and_warns(tmp_path):
    result = _materialize(tmp_path, _platform(tmp_path))
    assert result.success  # a WARN never fails the run
    metadata = result.asset_materializations_for_node("judge_calibration")[0].metadata
    assert metadata["method"].value == "token_f1" and metadata["judge_model"].value == ""
    assert metadata["pairs"].value == len(GOLD)
    check = result.get_asset_check_evaluations()[0]
    assert (check.check_name, check.passed, check.severity) == (AGREEMENT_CHECK, False, dg.AssetCheckSeverity.WARN)
    assert check.description.startswith("token_f1: Spearman")
    assert "configure an LLM judge (FLYWHEEL_JUDGE_BASE_URL" in check.description
    assert (tmp_path / "assets" / "judge_calibration.parquet").exists()


def test_calibration_against_an_llm_judge_on_loopback(tmp_path):
    def respond(request: dict) -> dict:
        pair = _gold_pair_of(request["messages"][-1]["content"])
        return {"role": "assistant", "content": f"They agree on the facts.\n**SIMILARITY:** {pair.human}"}

    with FakeOpenAIServer(model="judge-70b", responder=respond) as server:
        platform = _platform(tmp_path, judge_base_url=server.base_url, judge_model="judge-70b")
        result = _materialize(tmp_path, platform, {"min_spearman": 0.9, "min_kappa": 0.9})
        assert len(server.requests) == len(GOLD)
    assert result.success
    metadata = result.asset_materializations_for_node("judge_calibration")[0].metadata
    assert metadata["method"].value == "judge" and metadata["judge_model"].value == "judge-70b"
    assert metadata["judge_prompt_sha256"].value == JUDGE_PROMPT_SHA256
    assert metadata["spearman"].value == pytest.approx(1.0)
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.description == "judge agrees with the human scores"
