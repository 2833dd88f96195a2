"""Splitting a curated workload dataset into eval / train / validation chat examples.

The split is a seeded shuffle of the curated records (already in a stable order), so the
same dataset and seed give byte-identical files. The eval split is taken first (default
20 records), then `validation_ratio` of the rest; the train split doubles as the ICL
example pool, so in-context examples never come from the eval split.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from flywheel_assets.core.chat import AssistantMessage, ChatExample


class SplitConfig(BaseModel):
    eval_size: int = Field(default=20, ge=1)
    validation_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_records: int | None = Field(
        default=1000, description="Sample at most this many records (reference `limit`)."
    )
    seed: int = 42


SPLIT_SCHEMA = {
    "record_id": pl.String,
    "workload_id": pl.String,
    "workload_type": pl.String,
    "split": pl.String,
    "messages": pl.String,
    "tools": pl.String,
    "expected": pl.String,
}


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
    return {
        "record_id": row["record_id"],
        "workload_id": row["workload_id"],
        "workload_type": row["workload_type"],
        "split": label,
        "messages": _compact(request["messages"]),
        "tools": _compact(request["tools"]) if request.get("tools") else None,
        "expected": _canonical(
            expected_message(record["response"]["choices"][0]["message"]).model_dump(exclude_none=True)
        ),
    }


def split_dataset(dataset: pl.DataFrame, config: SplitConfig) -> pl.DataFrame:
    """Curated records -> split rows (see SPLIT_SCHEMA), eval first, then validation, train."""
    shuffled = dataset.sample(fraction=1.0, shuffle=True, seed=config.seed)
    if config.max_records is not None:
        shuffled = shuffled.head(config.max_records)
    n = shuffled.height
    n_eval = min(config.eval_size, n)
    rest = n - n_eval
    n_validation = round(rest * config.validation_ratio) if rest > 1 else 0
    labels = ["eval"] * n_eval + ["validation"] * n_validation + ["train"] * (rest - n_validation)
    rows = [_split_row(row, label) for row, label in zip(shuffled.iter_rows(named=True), labels)]
    return pl.DataFrame(rows, schema=SPLIT_SCHEMA)


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
