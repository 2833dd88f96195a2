"""Drift of a workload's recent traffic away from the train split behind its promoted model.

| measure | how | why it matters |
|---|---|---|
| `tool_mix_js` | Jensen-Shannon distance (base 2, `scipy.spatial`) of the called tools' shares | the task mix moved |
| `unseen_tool_share` | share of recent calls to tools the train split never offered or called | a new capability the model never learned |
| `prompt_length_ks` | two-sample Kolmogorov-Smirnov statistic (`scipy.stats.ks_2samp`) of prompt lengths | longer/shorter inputs, new clients |
| `novel_prompt_share` | share of recent prompts whose TF-IDF cosine similarity to every train prompt is below 0.4, minus the same share among the held-out validation prompts | new intents (a lexical proxy: it misses a new intent worded like old ones, and flags old intents in new words) |

Thresholds apply to effect sizes, not p-values: with a day of heavy traffic every tiny
difference is significant. Below `min_requests` recent requests nothing is judged.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from flywheel_assets.core.near_duplicates import user_key_prompt
from flywheel_assets.core.slo import DriftThresholds

# scipy is imported where it is used: importing it takes about half a second, and the
# code location (every run's process) imports this module

# a tool call ({"function": {"name"}}) or an offered tool (that, or the flat {"name"} form)
_TOOLS = pl.List(pl.Struct({"function": pl.Struct({"name": pl.String}), "name": pl.String}))
_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
_WORD = r"(?u)\b[a-z]{3,}\b"  # words, not ids or numbers (order ids are new in every request)
# a prompt this far from every train prompt is novel: on the sample traffic, in-distribution
# prompts (held out or new) scored >= 0.4 against their nearest train prompt, 27% of the
# drifted ones (a new tool's requests) below
NOVEL_SIMILARITY = 0.4

MEASURES = ("tool_mix_js", "unseen_tool_share", "prompt_length_ks", "novel_prompt_share")


def _names(column: str) -> pl.Expr:
    element = pl.element().struct
    names = (
        pl.col(column)
        .str.json_decode(_TOOLS)
        .list.eval(pl.coalesce(element.field("function").struct.field("name"), element.field("name")))
    )
    return names.list.drop_nulls().fill_null([])


def _requests(frame: pl.LazyFrame, prompt: pl.Expr, calls: pl.Expr, offered: pl.Expr, *keep: str) -> pl.DataFrame:
    return (
        frame.select(*keep, prompt.alias("prompt"), calls.alias("_calls"), offered.alias("_offered"))
        .with_columns(_names("_calls").alias("tools_called"), _names("_offered").alias("tools_offered"))
        .drop("_calls", "_offered")
        .collect()
    )


def recent_requests(traces: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """From `raw_traces` rows: one row per request with its `record_id`, `prompt` (its user
    messages), `tools_called` and `tools_offered` (names)."""
    return _requests(
        traces.lazy(),
        user_key_prompt(),
        pl.col("raw").str.json_path_match("$.response.choices[0].message.tool_calls"),
        pl.col("raw").str.json_path_match("$.request.tools"),
        "record_id",
    )


def split_requests(split: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """From `train_dataset` rows (SPLIT_SCHEMA): the same columns, plus `split`."""
    users = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    return _requests(
        split.lazy(),
        pl.col("messages").str.json_decode(_MESSAGES).list.eval(users).list.join("\n"),
        pl.col("expected").str.json_path_match("$.tool_calls"),
        pl.col("tools"),
        "record_id",
        "split",
    )


@dataclass
class DriftResult:
    recent_requests: int
    reference_requests: int
    measures: dict[str, float | None]
    thresholds: dict[str, float]
    breached: list[str] = field(default_factory=list)
    unseen_tools: list[str] = field(default_factory=list)
    judged: bool = True
    note: str = ""

    def signature(self, reference_version: str) -> str:
        """The data version of the drift state: a new breach of the same reference changes
        it once; an ongoing one keeps it (so automation requests one turn per breach)."""
        if not self.breached:
            return "within-thresholds" if self.judged else "not-judged"
        text = f"{reference_version}|{','.join(sorted(self.breached))}"
        return "breached-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def table(self) -> pl.DataFrame:
        return pl.DataFrame(
            [(m, self.measures.get(m), self.thresholds[m], m in self.breached) for m in MEASURES],
            schema={"measure": pl.String, "value": pl.Float64, "threshold": pl.Float64, "breached": pl.Boolean},
            orient="row",
        )


def _novel_shares(train: pl.Series, *prompts: pl.Series) -> list[float | None]:
    """Per series: the share of prompts whose nearest train prompt is below NOVEL_SIMILARITY.
    The vocabulary includes the compared prompts, so their unseen words count."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [p.str.to_lowercase().to_list() for p in prompts]
    vectorizer = TfidfVectorizer(sublinear_tf=True, token_pattern=_WORD)
    try:
        vectorizer.fit(train.str.to_lowercase().to_list() + [t for ts in texts for t in ts])
    except ValueError:  # no words at all
        return [None for _ in prompts]
    reference = vectorizer.transform(train.str.to_lowercase().to_list()).T.tocsc()
    shares: list[float | None] = []
    for text in texts:
        if not text:
            shares.append(None)
            continue
        nearest = (vectorizer.transform(text) @ reference).max(axis=1).toarray().ravel()
        shares.append(float((nearest < NOVEL_SIMILARITY).mean()))
    return shares


def measure_drift(recent: pl.DataFrame, reference: pl.DataFrame, thresholds: DriftThresholds) -> DriftResult:
    """Compare `recent_requests` rows with `split_requests` rows (train + validation). The
    split's records of the recent traffic itself are left out: a split rebuilt since the
    traffic arrived must not hide the drift from itself."""
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    reference = reference.filter(~pl.col("record_id").is_in(recent.get_column("record_id").implode()))
    train = reference.filter(pl.col("split") == "train")
    held_out = reference.filter(pl.col("split") == "validation")
    limits = {m: getattr(thresholds, m) for m in MEASURES}
    if recent.height < thresholds.min_requests or train.is_empty():
        return DriftResult(
            recent.height,
            train.height,
            dict.fromkeys(MEASURES),
            limits,
            judged=False,
            note=(
                f"not judged: {recent.height} recent requests (needs {thresholds.min_requests}) "
                f"against {train.height} train records"
            ),
        )
    measures: dict[str, float | None] = {}
    recent_calls = Counter(recent.get_column("tools_called").explode().drop_nulls().to_list())
    train_calls = Counter(train.get_column("tools_called").explode().drop_nulls().to_list())
    seen = set(train_calls) | set(train.get_column("tools_offered").explode().drop_nulls().to_list())
    unseen = sorted(set(recent_calls) - seen)
    if recent_calls or train_calls:
        tools = sorted(set(recent_calls) | set(train_calls))
        p = np.array([recent_calls[t] for t in tools], dtype=float)
        q = np.array([train_calls[t] for t in tools], dtype=float)
        measures["tool_mix_js"] = float(jensenshannon(p, q, base=2)) if p.sum() and q.sum() else 1.0
        total = sum(recent_calls.values())
        measures["unseen_tool_share"] = sum(recent_calls[t] for t in unseen) / total if total else 0.0
    else:
        measures["tool_mix_js"] = measures["unseen_tool_share"] = None
    measures["prompt_length_ks"] = float(
        stats.ks_2samp(
            recent.get_column("prompt").str.len_chars().to_numpy(),
            train.get_column("prompt").str.len_chars().to_numpy(),
        ).statistic
    )
    novel, baseline = _novel_shares(
        train.get_column("prompt"), recent.get_column("prompt"), held_out.get_column("prompt")
    )
    measures["novel_prompt_share"] = None if novel is None else max(0.0, novel - (baseline or 0.0))
    breached = [m for m in MEASURES if measures[m] is not None and measures[m] > limits[m]]
    return DriftResult(recent.height, train.height, measures, limits, breached, unseen)
