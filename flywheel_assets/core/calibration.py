"""How far to trust the chat similarity: agreement with a human-scored gold set.

The gold set (`flywheel_assets/data/judge_gold.jsonl`, written for this project) holds
chat answer pairs, a reference and a candidate, each with a similarity a person assigned
from 0 (unrelated or contradictory) to 10 (equivalent), the judge prompt's own scale. The
pairs are chosen so that word overlap and meaning disagree often (a paraphrase, a changed
amount in the same sentence, a query rewrite that keeps the words but loses the need).

`calibrate` scores every pair with the similarity method evaluations use (the LLM judge
when one is configured, else token F1: `metrics.similarities`) and reports:

- Spearman's rank correlation with the human scores (`scipy.stats.spearmanr`): does the
  method order answers as a person would? Insensitive to the method's scale, so it is
  fair to token F1, which scores paraphrases low.
- Cohen's kappa over three bins (`sklearn.metrics.cohen_kappa_score`): low [0, 0.4),
  mid [0.4, 0.7), high [0.7, 1] on the [0, 1] scale: does a score mean what it says?
- Judgements that gave no score (judge errors, unreadable replies) are counted and left
  out of both, never scored 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from flywheel_assets.core.chat import ChatBackend
from flywheel_assets.core.metrics import SimilarityMethod, judge_record, similarities

# edges of the low / mid / high bins on the [0, 1] scale
SCORE_BIN_EDGES = (0.4, 0.7)
SCORE_BINS = ("low", "mid", "high")
# below this many scored pairs no agreement is computed: one or two pairs say nothing
MIN_SCORED_PAIRS = 5


class GoldPair(BaseModel):
    id: str
    reference: str
    candidate: str
    human: int = Field(ge=0, le=10, description="similarity a person assigned, 0-10")
    note: str = ""


class Calibration(BaseModel):
    method: SimilarityMethod
    judge: dict[str, Any] | None  # model and prompt hash when the LLM judge scored
    pairs: int
    scored: int
    unscored: int  # judge errors and unreadable replies, left out of the agreement
    spearman: float | None
    spearman_p_value: float | None
    kappa: float | None
    rows: list[dict[str, Any]]  # id, human, machine (both on [0, 1]), bins, reason, note


def load_gold_set(path: Path | None = None) -> list[GoldPair]:
    """The shipped gold set, or the JSONL file at `path`; a bad line names itself."""
    source = path or resources.files("flywheel_assets").joinpath("data/judge_gold.jsonl")
    pairs = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(GoldPair.model_validate_json(line))
        except ValidationError as error:
            raise ValueError(
                f"gold set {source} line {number} is not a gold pair ({error.errors()[0]['msg']}): "
                "each line needs id, reference, candidate and human (an integer 0-10)"
            ) from error
    ids = [pair.id for pair in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"gold set {source} repeats ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return pairs


def score_bin(score: float) -> str:
    """low / mid / high of a score on [0, 1] (edges in `SCORE_BIN_EDGES`)."""
    return SCORE_BINS[sum(score >= edge for edge in SCORE_BIN_EDGES)]


def calibrate(gold: Sequence[GoldPair], judge: ChatBackend | None) -> Calibration:
    """Score the gold pairs with the similarity method in use and measure its agreement."""
    outcomes, method = similarities([(pair.reference, pair.candidate) for pair in gold], judge)
    rows = [
        {
            "id": pair.id,
            "human": pair.human / 10,
            "machine": score,
            "human_bin": score_bin(pair.human / 10),
            "machine_bin": None if score is None else score_bin(score),
            "reason": reason,
            "note": pair.note,
        }
        for pair, (score, reason) in zip(gold, outcomes)
    ]
    scored = [row for row in rows if row["machine"] is not None]
    spearman, p_value, kappa = _agreement(scored) if len(scored) >= MIN_SCORED_PAIRS else (None, None, None)
    return Calibration(
        method=method,
        judge=judge_record(judge),
        pairs=len(rows),
        scored=len(scored),
        unscored=len(rows) - len(scored),
        spearman=spearman,
        spearman_p_value=p_value,
        kappa=kappa,
        rows=rows,
    )


def _agreement(scored: list[dict[str, Any]]) -> tuple[float | None, float | None, float | None]:
    from scipy.stats import spearmanr  # imported here: only calibration needs them
    from sklearn.metrics import cohen_kappa_score

    human = [row["human"] for row in scored]
    machine = [row["machine"] for row in scored]
    result = spearmanr(human, machine)  # nan when one side is constant: no ordering to compare
    kappa = cohen_kappa_score(
        [row["human_bin"] for row in scored], [row["machine_bin"] for row in scored], labels=list(SCORE_BINS)
    )
    return _finite(result.statistic), _finite(result.pvalue), _finite(kappa)


def _finite(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
