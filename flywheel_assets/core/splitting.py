"""Splitting a curated workload dataset into eval / train / validation chat examples.

The split is a seeded shuffle of the curated records (already in a stable order), so the
same dataset and seed give byte-identical files. The eval split is taken first (default
20 records), then `validation_ratio` of the rest; the train split doubles as the ICL
example pool, so in-context examples never come from the eval split.

Stratified as the NVIDIA Data Flywheel Blueprint does: a tool-calling record's class is the
first tool it calls (a record without a call is its own class), and each split takes every
class in proportion (largest remainders). Beyond the blueprint, a tool with two or more
records always gets an eval record (the largest tools first when `eval_size` is smaller
than the number of tools), tools with a single record are pooled as the blueprint's
"others", and a near-duplicate cluster (found by curation) is never cut: all its records go
to the same split, so no eval prompt has a near-copy in training or the ICL pool. We do not
use scikit-learn's `train_test_split` as the blueprint does: it can neither keep clusters
whole nor guarantee the rare tool its eval record (it raises, and the blueprint falls back
to a random split).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from flywheel_assets.core.chat import AssistantMessage, ChatExample
from flywheel_assets.core.near_duplicates import LeakedPair, leaked_pairs, prompt_text


class SplitConfig(BaseModel):
    eval_size: int = Field(default=20, ge=1)
    validation_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_records: int | None = Field(default=1000, description="Sample at most this many records (reference `limit`).")
    seed: int = 42


SPLIT_SCHEMA = {
    "record_id": pl.String,
    "workload_id": pl.String,
    "workload_type": pl.String,
    "split": pl.String,
    "messages": pl.String,
    "tools": pl.String,
    "expected": pl.String,
    "first_tool": pl.String,  # the stratum of a tool-calling record; null for chat
}
NO_TOOL_CALL = "(no tool call)"  # not a valid function name, so never a tool's
SINGLE_RECORD_TOOLS = "(tools with one record)"
CLUSTER_COLUMN = "near_duplicate_cluster"


def _parse_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments or "{}")
    except (TypeError, json.JSONDecodeError):
        return {"__unparsed__": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"__unparsed__": str(arguments)}


def expected_message(answer: dict[str, Any]) -> AssistantMessage:
    """The production answer with tool-call arguments parsed into JSON objects."""
    calls = [
        {
            "id": call.get("id"),
            "function": {
                "name": call.get("function", {}).get("name", ""),
                "arguments": _parse_arguments(call.get("function", {}).get("arguments")),
            },
        }
        for call in answer.get("tool_calls") or []
    ]
    return AssistantMessage(content=answer.get("content"), tool_calls=calls or None)


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _split_row(row: dict[str, Any], label: str) -> dict[str, Any]:
    """One curated record (a validated trace in `raw`) as a split row: the request's
    messages and tools, and the production answer as the expected message."""
    record = json.loads(row["raw"])
    request = record["request"]
    answer = record["response"]["choices"][0]["message"]
    calls = answer.get("tool_calls") or [{}]
    first_tool = (calls[0].get("function") or {}).get("name") or NO_TOOL_CALL
    return {
        "record_id": row["record_id"],
        "workload_id": row["workload_id"],
        "workload_type": row["workload_type"],
        "split": label,
        "messages": _compact(request["messages"]),
        "tools": _compact(request["tools"]) if request.get("tools") else None,
        "expected": _canonical(expected_message(answer).model_dump(exclude_none=True)),
        "first_tool": first_tool if row["workload_type"] == "tool_calling" else None,
    }


SPLIT_ORDER = ("eval", "validation", "train")


def split_dataset(dataset: pl.DataFrame, config: SplitConfig) -> pl.DataFrame:
    """Curated records -> split rows (see SPLIT_SCHEMA), eval first, then validation, train,
    each in the seeded shuffle's order. A `near_duplicate_cluster` column, when present,
    keeps each cluster in one split."""
    shuffled = dataset.sample(fraction=1.0, shuffle=True, seed=config.seed)
    if config.max_records is not None:
        shuffled = shuffled.head(config.max_records)
    rows = [_split_row(row, "") for row in shuffled.iter_rows(named=True)]
    n = len(rows)
    n_eval = min(config.eval_size, n)
    rest = n - n_eval
    n_validation = round(rest * config.validation_ratio) if rest > 1 else 0
    clusters = (
        shuffled.get_column(CLUSTER_COLUMN) if CLUSTER_COLUMN in shuffled.columns else shuffled.get_column("record_id")
    ).to_list()
    labels = assign_splits([row["first_tool"] or "" for row in rows], clusters, n_eval, n_validation)
    for row, label in zip(rows, labels):
        row["split"] = label
    rows.sort(key=lambda row: SPLIT_ORDER.index(row["split"]))  # stable: keeps the shuffle's order
    return pl.DataFrame(rows, schema=SPLIT_SCHEMA)


def assign_splits(classes: Sequence[str], clusters: Sequence[str], n_eval: int, n_validation: int) -> list[str]:
    """The split of each record (in the seeded shuffle's order): `n_eval` records drawn by
    class in proportion with every class of two or more records represented, then
    `n_validation` of the rest in proportion, the remainder for training. A cluster's
    records stay together (the cluster counts in the class of its first record); when a
    cluster is larger than the room left, a later one takes its place, so a split can come
    out smaller than asked only when nothing small enough is left."""
    units: dict[str, list[int]] = {}
    for position, cluster in enumerate(clusters):
        units.setdefault(cluster, []).append(position)
    singles = {c for c, k in Counter(classes).items() if k == 1}
    stratum = {key: SINGLE_RECORD_TOOLS if classes[m[0]] in singles else classes[m[0]] for key, m in units.items()}
    labels = ["train"] * len(classes)
    left = list(units)
    for split, size, guarantee in (("eval", n_eval, True), ("validation", n_validation, False)):
        chosen = _draw(left, units, stratum, size, guarantee)
        for key in chosen:
            for position in units[key]:
                labels[position] = split
        left = [key for key in left if key not in chosen]
    return labels


def _draw(
    order: list[str], units: dict[str, list[int]], stratum: dict[str, str], size: int, guarantee: bool
) -> set[str]:
    counts = Counter()
    for key in order:
        counts[stratum[key]] += len(units[key])
    quotas = apportion(counts, size, one_each=guarantee)
    taken: Counter = Counter()
    chosen: set[str] = set()
    room = size
    # the smallest quotas first, so that a larger cluster taken by a big class cannot use
    # up the room a rare class is owed
    by_quota = sorted(quotas, key=lambda s: (quotas[s], s))
    for wanted in by_quota + [None]:  # None: fill what cut-off clusters left
        for key in order:
            if room == 0:
                return chosen
            n = len(units[key])
            if key in chosen or n > room:
                continue
            if wanted is None or (stratum[key] == wanted and taken[wanted] < quotas[wanted]):
                chosen.add(key)
                taken[stratum[key]] += n
                room -= n
    return chosen


def apportion(counts: dict[str, int], size: int, *, one_each: bool) -> dict[str, int]:
    """Seats per class for a sample of `size` out of `sum(counts)`, in proportion by largest
    remainders; with `one_each`, every class of two or more gets a seat first (largest
    classes first while seats last)."""
    total = sum(counts.values())
    size = min(size, total)
    quotas = dict.fromkeys(counts, 0)
    if one_each:
        for name in sorted(counts, key=lambda c: (-counts[c], c))[:size]:
            if counts[name] >= 2:
                quotas[name] = 1
    for _ in range(size - sum(quotas.values())):
        # the class furthest below its exact share (size * count / total), in integers
        name = max(
            (c for c in counts if quotas[c] < counts[c]),
            key=lambda c: (size * counts[c] - quotas[c] * total, counts[c], c),
        )
        quotas[name] += 1
    return quotas


def tool_counts(rows: pl.DataFrame) -> pl.DataFrame:
    """Records per first tool called (rows) and split (columns), largest tools first."""
    present = [split for split in SPLIT_ORDER if split in set(rows.get_column("split"))]
    counts = (
        rows.filter(pl.col("first_tool").is_not_null())
        .group_by("first_tool", "split")
        .len()
        .pivot(on="split", index="first_tool", values="len")
        .select("first_tool", *present)
        .fill_null(0)
    )
    return counts.with_columns(total=pl.sum_horizontal(present)).sort("total", "first_tool", descending=[True, False])


def leaks(rows: pl.DataFrame, threshold: float) -> list[LeakedPair]:
    """Eval records with an exact or near duplicate prompt in the train split, which is
    also the ICL example pool (`evaluate.py` draws in-context examples from it)."""

    def prompts(split: str) -> list[tuple[str, str]]:
        part = rows.filter(pl.col("split") == split).select("record_id", "messages")
        return [(record_id, prompt_text(json.loads(m))) for record_id, m in part.iter_rows()]

    return leaked_pairs(prompts("eval"), prompts("train"), threshold)


def to_examples(rows: pl.DataFrame) -> list[ChatExample]:
    return [
        ChatExample(
            record_id=row["record_id"],
            workload_id=row["workload_id"],
            workload_type=row["workload_type"],
            messages=json.loads(row["messages"]),
            tools=json.loads(row["tools"]) if row["tools"] else None,
            expected=AssistantMessage.model_validate_json(row["expected"]),
        )
        for row in rows.iter_rows(named=True)
    ]


def to_jsonl(rows: pl.DataFrame) -> bytes:
    return examples_to_jsonl(to_examples(rows))


def examples_to_jsonl(examples: list[ChatExample]) -> bytes:
    """The chat-format file training and evaluation backends read: one example per line,
    `messages` ending with the expected assistant turn, plus `tools` when present."""
    lines = []
    for example in examples:
        record = {
            "record_id": example.record_id,
            "messages": example.messages + [example.expected.model_dump(exclude_none=True)],
        }
        if example.tools:
            record["tools"] = example.tools
        lines.append(_canonical(record))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def content_hash(rows: pl.DataFrame) -> str:
    """A data version: the hash of the split's canonical JSONL bytes."""
    return hashlib.sha256(to_jsonl(rows)).hexdigest()[:16]
