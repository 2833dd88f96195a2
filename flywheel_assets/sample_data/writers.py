"""Writers of the generated traffic: one file per day, ``traces-YYYY-MM-DD.<format>``,
written atomically."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

from flywheel_assets.core.atomic import atomic_path
from flywheel_assets.sample_data.generator import (
    DEFAULT_END_DATE,
    Serving,
    iter_days,
    labeled_lines,
)
from flywheel_assets.sample_data.tools import dumps
from flywheel_assets.sample_data.workloads import DEFAULT_WORKLOADS

FORMATS = ("jsonl", "jsonl.gz", "parquet")


def _write_lines(path: Path, items, gz: bool) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if gz else raw
        buf: list[str] = []
        for item in labeled_lines(items):
            buf.append(item.line)
            if len(buf) >= 2048:
                out.write(("\n".join(buf) + "\n").encode())
                buf.clear()
        if buf:
            out.write(("\n".join(buf) + "\n").encode())
        if gz:
            out.close()


def _parquet_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("timestamp", pa.int64()),
            ("workload_id", pa.string()),
            ("client_id", pa.string()),
            ("workload_description", pa.string()),
            ("request", pa.string()),
            ("response", pa.string()),
            ("latency_ms", pa.float64()),
            ("feedback", pa.string()),
        ]
    )


def _write_parquet(path: Path, items) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    cols: dict[str, list] = {name: [] for name in schema.names}

    def flush(writer) -> None:
        writer.write_table(pa.table(cols, schema=schema))
        for v in cols.values():
            v.clear()

    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        pq.ParquetWriter(raw, schema, compression="zstd") as writer,
    ):
        for _, rec, _, _, _ in items:
            ts = rec.get("timestamp")
            cols["timestamp"].append(ts if isinstance(ts, int) else None)
            cols["workload_id"].append(rec.get("workload_id"))
            cols["client_id"].append(rec.get("client_id"))
            cols["workload_description"].append(rec.get("workload_description"))
            cols["request"].append(dumps(rec["request"]))
            cols["response"].append(dumps(rec["response"]))
            cols["latency_ms"].append(rec.get("latency_ms"))
            fb = rec.get("feedback")
            cols["feedback"].append(json.dumps(fb) if fb is not None else None)
            if len(cols["request"]) >= 8192:
                flush(writer)
        flush(writer)


def write_sample_traces(
    out_dir: str | os.PathLike[str],
    n: int = 3000,
    *,
    seed: int = 0,
    days: int = 7,
    end_date: dt.date | str | None = DEFAULT_END_DATE,
    malformed_rate: float = 0.03,
    workloads: Sequence[str] | str = DEFAULT_WORKLOADS,
    fmt: str = "jsonl",
    serving: Serving | None = None,
) -> list[Path]:
    """Write ``n`` records as one file per day, ``traces-YYYY-MM-DD.<fmt>``, into ``out_dir``.

    Every day of the range gets a file (possibly empty), written atomically (a hidden
    temporary folder in ``out_dir``, then a rename: ``core.atomic``). Returns the paths, oldest
    day first. ``fmt`` is ``jsonl``, ``jsonl.gz`` (deterministic gzip, mtime 0) or
    ``parquet`` (no ``invalid_json`` records; a non-numeric timestamp becomes null).
    ``serving``: simulated post-promotion traffic (see ``Serving``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for date, items in iter_days(
        n, seed, days, end_date, malformed_rate, workloads, allow_invalid_json=fmt != "parquet", serving=serving
    ):
        path = out / f"traces-{date.isoformat()}.{fmt}"
        if fmt == "parquet":
            _write_parquet(path, items)
        else:
            _write_lines(path, items, gz=fmt == "jsonl.gz")
        paths.append(path)
    return paths
