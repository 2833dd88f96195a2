"""Data versions of results: a result's version is a hash of what it holds and of what
produced it, so two different results never share a version and an unchanged result
keeps its version (and triggers nothing downstream)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

# Measurements of the run, not of the answers: a re-evaluation that differs only in how
# fast the candidate answered is the same result (the leaderboard is not rebuilt for noise).
TIMING_COLUMNS = ("latency_s",)


def evaluation_version(rows: pl.DataFrame, produced_by: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of an evaluation's rows, in record order and without timing,
    and of `produced_by` (experiment, ICL strategy and examples, judge...)."""
    kept = rows.drop([c for c in TIMING_COLUMNS if c in rows.columns])
    if "record_id" in kept.columns:
        kept = kept.sort("record_id")
    content = {
        "columns": {name: str(dtype) for name, dtype in kept.schema.items()},
        "rows": kept.to_dicts(),
        "produced_by": produced_by,
    }
    text = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
