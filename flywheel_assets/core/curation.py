"""Curation: a workload's landed traces -> one deduplicated, classified, redacted dataset.

Dedup key: the tuple of user-message contents (as the reference) plus the sorted names of
the tools offered. The reference keys on user contents only; we add the tool names
because the right answer to the same question changes when the tools on offer change,
so those are different examples. The system prompt is left out on purpose: prompt
revisions mostly rephrase instructions, and keeping one copy per question under every
revision would over-weight repeated questions and leak near-copies of eval records into
training. The earliest record of each key is kept (ties broken by record id).

Near-duplicates (prompts whose word bigrams overlap by at least a Jaccard threshold,
`core/near_duplicates.py`) are kept, not removed: each record is marked with its cluster
(the record id of the cluster's earliest record) and the split keeps every cluster on one
side, which prevents leakage between eval and training without losing data.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Literal

import polars as pl
import pydantic_core

from flywheel_assets.core.near_duplicates import DEFAULT_THRESHOLD, near_duplicate_clusters, user_key_prompt

DEDUP_KEY = ("user_key", "tool_names")
# one landed row: its content hash and where it was read (file and line, or row)
ROW_KEY = ("record_id", "source")
DEDUP_KEY_DESCRIPTION = "user-message contents (in order) + sorted tool names; earliest kept"
TOOL_CALLING_SHARE = 0.5

FeedbackFilter = Literal["none", "exclude_negative", "positive_only"]

# Regex patterns, run on decoded strings (see redact_records).
# Order matters: card numbers before phone numbers.
PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "card_number": r"\b(?:\d[ -]?){12,15}\d\b",  # and passes the Luhn check
    "ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "phone": r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b",
    "ip_address": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
}
_PII_REGEXES = {name: re.compile(p) for name, p in PII_PATTERNS.items()}
_ANY_PII = re.compile("|".join(f"(?:{p})" for p in PII_PATTERNS.values()))
_PII_CHARACTER = re.compile(r"[@\d]")  # every pattern needs an @ or a digit: a cheap first test
# The patterns without word boundaries: run on the JSON text by polars, they find every record
# that may hold PII (a superset), so only those records are decoded and redacted in Python.
_PII_CANDIDATE = "|".join(f"(?:{p})" for p in PII_PATTERNS.values()).replace(r"\b", "")

OUTPUT_COLUMNS = (
    "record_id",
    "timestamp",
    "day",
    "workload_id",
    "client_id",
    "model",
    "workload_type",
    "has_tools",
    "has_tool_calls",
    "feedback_thumbs",
    "feedback_rating",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "source",
    "near_duplicate_cluster",  # the record id of its cluster's earliest record (its own if alone)
    "raw",  # the record as received, PII redacted; splitting cuts the chat parts out of it
)


@dataclass
class CurationStats:
    records_in: int = 0
    removed_by_feedback: int = 0
    removed_without_tool_call: int = 0
    duplicates: int = 0
    records_out: int = 0
    workload_type: str = "chat"
    redactions: dict[str, int] = field(default_factory=dict)
    # the output's record ids and clusters, in its order: a data version without reading it
    record_ids: pl.Series = field(default_factory=lambda: pl.Series("record_id", [], pl.String))
    clusters: pl.Series = field(default_factory=lambda: pl.Series("near_duplicate_cluster", [], pl.String))
    # clusters of two or more records: cluster, records, record_ids, prompt (its first record's)
    near_duplicate_clusters: pl.DataFrame = field(default_factory=pl.DataFrame)


def lookback_days(days: list[str], lookback: int) -> list[str]:
    """The days inside a window of `lookback` days ending at the newest day present."""
    if not days:
        return []
    newest = dt.date.fromisoformat(max(days))
    first = (newest - dt.timedelta(days=lookback - 1)).isoformat()
    return sorted(d for d in days if d >= first)


def filter_feedback(df: pl.LazyFrame, mode: FeedbackFilter) -> pl.LazyFrame:
    negative = (pl.col("feedback_thumbs") == "down") | (pl.col("feedback_rating") <= 2)
    positive = (pl.col("feedback_thumbs") == "up") | (pl.col("feedback_rating") >= 4)
    if mode == "exclude_negative":
        return df.filter(~negative.fill_null(False))
    if mode == "positive_only":
        return df.filter(positive.fill_null(False))
    return df


def classify_workload(df: pl.DataFrame) -> str:
    """tool_calling when at least half of the requests offer tools, else chat."""
    if df.height == 0:
        return "chat"
    share = df.select(pl.col("has_tools").mean()).item()
    return "tool_calling" if share >= TOOL_CALLING_SHARE else "chat"


def redact_records(raw: pl.Series) -> tuple[pl.Series, dict[str, int]]:
    """Replace PII in the messages and answers of JSON trace records with `[KIND]`; the
    counts are the replacements made.

    The patterns run on the decoded strings, not on the JSON text: in the JSON text an
    escape such as `\\n` glues a letter to the PII (`\\n4111 1111...` has no word boundary,
    so it leaked) and a replacement can break an escape (`\\njane@x.com` -> `\\[EMAIL]`).
    """
    counts = dict.fromkeys(PII_PATTERNS, 0)
    return pl.Series(raw.name, [_redact_record(text, counts) for text in raw], pl.String), counts


def _redact_record(text: str | None, counts: dict[str, int]) -> str | None:
    if text is None:
        return None
    found = dict.fromkeys(PII_PATTERNS, 0)
    record = pydantic_core.from_json(text)  # a validated record: always a JSON object
    request, response = record.get("request") or {}, record.get("response") or {}
    if isinstance(request.get("messages"), list):
        request["messages"] = _redact_value(request["messages"], found)
    for choice in response.get("choices") or []:
        if isinstance(choice, dict) and "message" in choice:
            choice["message"] = _redact_value(choice["message"], found)
    if not any(found.values()):
        return text  # untouched records stay byte-identical
    for name, n in found.items():
        counts[name] += n
    return pydantic_core.to_json(record).decode()  # compact, like json.dumps, 5x faster


def _redact_value(value, found: dict[str, int]):
    if isinstance(value, str):
        return _redact_text(value, found)
    if isinstance(value, list):
        return [_redact_value(v, found) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, found) for k, v in value.items()}
    return value


def _passes_luhn(number: str) -> bool:
    """The check digit every payment card number carries: an order or tracking number of
    13-16 digits almost never passes it, so it is not redacted as a card."""
    digits = [int(c) for c in number if c.isdigit()]
    doubled = (sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return (sum(digits[-1::-2]) + sum(doubled)) % 10 == 0


_PII_CHECKS = {"card_number": _passes_luhn}


def _redact_text(text: str, found: dict[str, int]) -> str:
    if not (_PII_CHARACTER.search(text) and _ANY_PII.search(text)):
        return text  # most strings of a candidate record hold no PII: one scan, not five
    # in order: card numbers before phone numbers
    for name, regex in _PII_REGEXES.items():
        check = _PII_CHECKS.get(name)
        if check is None:
            text, n = regex.subn(f"[{name.upper()}]", text)
            found[name] += n
            continue
        matches = [m for m in regex.finditer(text) if check(m.group())]
        for match in reversed(matches):  # from the end, so earlier offsets stay valid
            text = f"{text[: match.start()]}[{name.upper()}]{text[match.end() :]}"
        found[name] += len(matches)
    return text


def curate(
    traces: pl.LazyFrame,
    *,
    feedback_filter: FeedbackFilter = "none",
    redact: bool = True,
    near_duplicate_threshold: float = DEFAULT_THRESHOLD,
) -> tuple[pl.LazyFrame, CurationStats]:
    """Filter, classify, deduplicate and redact one workload's traces.

    Everything is decided on the narrow typed columns, and only the records that may hold
    PII are read whole here. The result is a lazy plan over the stored traces: sinking it
    streams the records (`raw`, most of the bytes) to the output instead of holding them.
    """
    stats = CurationStats()
    kept = (
        filter_feedback(traces, feedback_filter)
        .select(*ROW_KEY, "timestamp", "has_tools", "has_tool_calls", *DEDUP_KEY)
        .collect()
        .with_row_index("row")  # here, not on the lazy scan: that would stop it streaming
    )
    stats.records_in = traces.select(pl.len()).collect().item()
    stats.removed_by_feedback = stats.records_in - kept.height
    stats.workload_type = classify_workload(kept)
    if stats.workload_type == "tool_calling":
        with_calls = kept.filter(pl.col("has_tool_calls"))
        stats.removed_without_tool_call = kept.height - with_calls.height
        kept = with_calls
    winners = (
        kept.sort("timestamp", "record_id", maintain_order=True)
        .unique(subset=list(DEDUP_KEY), keep="first", maintain_order=True)
        .select("row", *ROW_KEY, "user_key")
    )
    winners, stats.near_duplicate_clusters = mark_near_duplicates(winners, near_duplicate_threshold)
    stats.duplicates = kept.height - winners.height
    stats.records_out = winners.height
    stats.record_ids = winners.get_column("record_id")
    stats.clusters = winners.get_column("near_duplicate_cluster")
    records = traces.join(
        winners.lazy().select(*ROW_KEY, "near_duplicate_cluster"), on=ROW_KEY, how="inner", maintain_order="left"
    )
    if redact:
        redacted, stats.redactions = _redact_candidates(records)
        records = records.join(redacted.lazy(), on=ROW_KEY, how="left", maintain_order="left").with_columns(
            raw=pl.coalesce("redacted_raw", "raw")
        )
    if not winners.get_column("row").is_sorted():
        # stored partitions come in (timestamp, record_id) order already
        records = records.sort("timestamp", "record_id")
    return records.with_columns(workload_type=pl.lit(stats.workload_type)).select(OUTPUT_COLUMNS), stats


def mark_near_duplicates(records: pl.DataFrame, threshold: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`records` (earliest first, with `record_id` and `user_key`) with their
    `near_duplicate_cluster`, and the clusters of two or more records, largest first."""
    texts = records.select(user_key_prompt()).to_series().to_list()
    first = near_duplicate_clusters(texts, threshold)
    ids = records.get_column("record_id")
    marked = records.with_columns(near_duplicate_cluster=ids.gather(first))
    clusters = (
        marked.with_columns(prompt=pl.Series(texts, dtype=pl.String))
        .group_by("near_duplicate_cluster", maintain_order=True)
        .agg(records=pl.len(), record_ids=pl.col("record_id"), prompt=pl.col("prompt").first())
        .filter(pl.col("records") > 1)
        .sort("records", "near_duplicate_cluster", descending=[True, False])
        .rename({"near_duplicate_cluster": "cluster"})
    )
    return marked, clusters


def _redact_candidates(records: pl.LazyFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Redacted `raw` by row key, for the records the PII patterns may match (a superset)."""
    candidates = (
        records.filter(pl.col("raw").str.contains(_PII_CANDIDATE)).select(*ROW_KEY, "raw").collect(engine="streaming")
    )
    redacted, counts = redact_records(candidates.get_column("raw"))
    return candidates.select(*ROW_KEY, redacted_raw=redacted), counts
