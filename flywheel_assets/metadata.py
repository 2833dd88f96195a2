"""Small helpers that turn results into metadata a person can read in the Dagster UI."""

from __future__ import annotations

import hashlib

import dagster as dg
import polars as pl


def table(df: pl.DataFrame, max_rows: int = 10, max_chars: int = 120) -> dg.MetadataValue:
    """A preview of `df` as a Markdown table, long strings cut short."""
    preview = df.head(max_rows).with_columns(
        pl.col(c).str.slice(0, max_chars) for c, t in df.schema.items() if t == pl.String
    )
    header = "| " + " | ".join(preview.columns) + " |"
    rule = "|" + "---|" * len(preview.columns)
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in preview.iter_rows()]
    return dg.MetadataValue.md("\n".join([header, rule, *rows]))


def _cell(value) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def counts_table(counts: dict[str, int], key: str = "reason") -> dg.MetadataValue:
    return table(
        pl.DataFrame({key: list(counts), "count": list(counts.values())}, schema={key: pl.String, "count": pl.Int64})
    )


def column_hash(df: pl.DataFrame, column: str = "record_id") -> str:
    """A content hash over a column of content-derived ids, in row order."""
    digest = hashlib.sha256()
    for value in df.get_column(column):
        digest.update(value.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def frames_hash(frames: dict[str, pl.DataFrame], column: str = "record_id") -> str:
    """A content hash over frames keyed by partition: `column_hash` of each, keys included."""
    digest = hashlib.sha256()
    for key in sorted(frames):
        digest.update(f"{key}={column_hash(frames[key], column)}\n".encode())
    return digest.hexdigest()[:16]
