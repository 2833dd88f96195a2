"""Landing: validate raw trace files once and file them by day x workload.

A raw file (JSONL, gzip JSONL or Parquet, possibly many GB) is read in batches, every
record is validated, and the results are written under
`<landing>/<source id>/day=<day>/workload=<key>/{valid,quarantine}-<batch>.parquet`,
then the folder is renamed into place with a manifest. Each `raw_traces` partition then
reads only its own slice instead of re-reading every source file, and a file is landed
again only when its fingerprint (size + mtime) changes, replacing its old landing.

Records that cannot be attributed to a day and a workload (bad JSON with no readable
`workload_id`/`timestamp`) are quarantined under `day=unattributed/workload=unattributed`
so that they are counted and kept, never dropped.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pydantic_core

from flywheel_assets.core.schema import (
    DEFAULT_MAX_RECORD_BYTES,
    Feedback,
    Rejection,
    TraceRecord,
    validate_trace,
)
from partitions.keys import workload_key

UNATTRIBUTED = "unattributed"
MANIFEST = "manifest.json"

# a valid trace: typed columns for filtering, keys and metadata, plus the record verbatim
# (`raw`); curation cuts messages, tools and the answer out of `raw` for the records it keeps
TRACE_SCHEMA = {
    "record_id": pl.String,
    "timestamp": pl.Int64,
    "day": pl.String,
    "workload_id": pl.String,
    "workload_key": pl.String,
    "client_id": pl.String,
    "model": pl.String,
    "user_key": pl.String,
    "tool_names": pl.String,
    "has_tools": pl.Boolean,
    "has_tool_calls": pl.Boolean,
    "feedback_thumbs": pl.String,
    "feedback_rating": pl.Float64,
    "latency_ms": pl.Float64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "workload_description": pl.String,
    "source": pl.String,
    "raw": pl.String,
}

QUARANTINE_SCHEMA = {
    "source": pl.String,
    "day": pl.String,
    "workload_key": pl.String,
    "workload_id": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "raw": pl.String,
}

_NO_FEEDBACK = Feedback()
_WORKLOAD_IN_RAW = re.compile(r'"workload_id"\s*:\s*"((?:[^"\\]|\\.){1,512})"')
_TIMESTAMP_IN_RAW = re.compile(r'"timestamp"\s*:\s*(\d{1,12})\b')


@dataclass(frozen=True)
class TimeBounds:
    """Timestamps outside [start, end) cannot be given a day partition."""

    start: dt.date
    end: dt.date

    def check(self, day: str) -> str | None:
        d = dt.date.fromisoformat(day)
        if d < self.start:
            return "before_start_date"
        if d >= self.end:
            return "future_timestamp"
        return None


def day_of(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).date().isoformat()


def _day_or_none(timestamp: int) -> str | None:
    """The day of a timestamp, or None past year 9999 (e.g. milliseconds sent as seconds)."""
    try:
        return day_of(timestamp)
    except (ValueError, OverflowError, OSError):
        return None


@functools.lru_cache(maxsize=4096)  # once per day seen instead of once per record
def _day_number_to_day(day_number: int) -> str | None:
    return _day_or_none(day_number * 86_400)


def _json(value: Any) -> str:
    # default=str: Parquet rows can hold datetimes, which validation then rejects by type
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _record_text(record: dict[str, Any]) -> str:
    text = _json(record)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: kept escaped, so the record can be stored
        return json.dumps(record, separators=(",", ":"), default=str)
    return text


def _key_json(strings: list[str]) -> str:
    # same text as _json for a list of strings, at a third of the cost (once per record)
    return pydantic_core.to_json(strings).decode()


def _valid_row(record: TraceRecord, raw_text: str, source: str, day: str) -> tuple:
    """One row of TRACE_SCHEMA, in its column order."""
    request = record.request
    usage = record.response.usage or {}
    feedback = record.feedback or _NO_FEEDBACK
    return (
        hashlib.sha256(raw_text.encode()).hexdigest()[:20],
        record.timestamp,
        day,
        record.workload_id,
        workload_key(record.workload_id),
        record.client_id,
        request.model,
        _key_json(record.user_contents()),
        _key_json(sorted(tool.tool_name for tool in request.tools or [])),
        bool(request.tools),
        bool(record.answer.tool_calls),
        feedback.thumbs,
        feedback.rating,
        record.latency_ms,
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        record.workload_description,
        source,
        raw_text,
    )


def _workload_in_raw(raw: str) -> str | None:
    match = _WORKLOAD_IN_RAW.search(raw)
    if not match:
        return None
    try:
        workload_id = json.loads(f'"{match.group(1)}"')
        workload_id.encode()  # a lone surrogate (escaped \ud800) cannot be stored
    except (json.JSONDecodeError, UnicodeEncodeError):
        return None  # an escape we cannot decode: the record stays unattributed
    return workload_id


def _quarantine_row(raw: str, source: str, rejection: Rejection, bounds_day: str | None):
    timestamp = _TIMESTAMP_IN_RAW.search(raw)
    workload_id = _workload_in_raw(raw)
    day = bounds_day or (_day_or_none(int(timestamp.group(1))) if timestamp else None)
    attributed = workload_id is not None and day is not None
    return {
        "source": source,
        "day": day if attributed else UNATTRIBUTED,
        "workload_key": workload_key(workload_id) if attributed else UNATTRIBUTED,
        "workload_id": workload_id,
        "reason": rejection.reason,
        "detail": rejection.detail,
        "raw": raw,
    }


def validate_batch(
    records: Iterable[tuple[str, str | dict[str, Any]]],
    bounds: TimeBounds,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate `(source, raw)` pairs into (valid traces, quarantined records)."""
    valid: list[tuple] = []
    quarantined: list[dict[str, Any]] = []
    for source, raw in records:
        raw_text = raw if isinstance(raw, str) else _record_text(raw)
        result = validate_trace(raw, max_record_bytes)
        if isinstance(result, Rejection):
            quarantined.append(_quarantine_row(raw_text, source, result, None))
            continue
        day = _day_number_to_day(result.timestamp // 86_400)
        out_of_range = bounds.check(day) if day else "future_timestamp"
        if out_of_range:
            detail = (
                f"day {day} is outside {bounds}"
                if day
                else f"timestamp {result.timestamp} is past year 9999 (milliseconds, not seconds?)"
            )
            rejection = Rejection(reason=out_of_range, detail=detail)
            quarantined.append(_quarantine_row(raw_text, source, rejection, day))
            continue
        valid.append(_valid_row(result, raw_text, source, day))
    return (
        pl.DataFrame(dict(zip(TRACE_SCHEMA, zip(*valid))) if valid else None, schema=TRACE_SCHEMA),
        pl.DataFrame(quarantined, schema=QUARANTINE_SCHEMA),
    )


def _write_by_partition(df: pl.DataFrame, root: Path, prefix: str, batch: int) -> None:
    for (day, key), part in df.group_by(["day", "workload_key"]):
        folder = root / f"day={day}" / f"workload={key}"
        folder.mkdir(parents=True, exist_ok=True)
        # lz4: the landing is read back once per partition, so write speed matters most
        part.write_parquet(folder / f"{prefix}-{batch:05d}.parquet", compression="lz4")


@dataclass(frozen=True)
class LandingResult:
    source_id: str
    fingerprint: str
    landed: bool  # False when the file was already landed with this fingerprint
    partitions: dict[str, dict[str, int]]  # "day|workload_key" -> {"valid": n, "quarantined": n}
    workload_ids: dict[str, str]  # workload_key -> original workload id


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None


def land_file(
    batches: Iterator[list[tuple[str, str | dict[str, Any]]]],
    *,
    source_id: str,
    fingerprint: str,
    landing_dir: Path,
    bounds: TimeBounds,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = 1,
) -> LandingResult:
    """Validate and land one source file; a no-op when it is already landed unchanged.

    Writes go to a temporary folder renamed into place, so a crash leaves either the old
    landing or the new one, never half of one. With `workers` > 1, batches are validated in
    that many processes (validation is CPU-bound Python), with one batch per worker plus one
    in flight so memory stays bounded.
    """
    target = landing_dir / source_id
    manifest = read_manifest(target)
    if manifest and manifest["fingerprint"] == fingerprint:
        return _result_from(manifest, landed=False)
    landing_dir.mkdir(parents=True, exist_ok=True)
    with _landing_lock(landing_dir):
        manifest = read_manifest(target)  # landed by another process while this one waited?
        if manifest and manifest["fingerprint"] == fingerprint:
            return _result_from(manifest, landed=False)
        manifest = _stage_and_swap(
            batches, target, fingerprint, bounds=bounds, max_record_bytes=max_record_bytes, workers=workers
        )
    return _result_from(manifest, landed=True)


@contextlib.contextmanager
def _landing_lock(landing_dir: Path) -> Iterator[None]:
    """One landing at a time per landing folder, across processes: runs of a backfill and
    the drop-folder sensor all land the drop folder, and a large file should be validated
    once, not once per concurrent run. The lock goes with the descriptor."""
    descriptor = os.open(landing_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _stage_and_swap(
    batches, target: Path, fingerprint: str, *, bounds: TimeBounds, max_record_bytes: int, workers: int
) -> dict[str, Any]:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        counts: dict[str, dict[str, int]] = {}
        workload_ids: dict[str, str] = {}
        land = functools.partial(
            _land_batch, staging=staging, bounds=bounds, max_record_bytes=max_record_bytes
        )
        # closed (its pool shut down) before the staging folder is removed
        with contextlib.closing(_map_batches(land, batches, workers)) as landed_batches:
            for batch_counts, batch_workloads in landed_batches:
                for partition, kinds in batch_counts.items():
                    slot = counts.setdefault(partition, {"valid": 0, "quarantined": 0})
                    for kind, n in kinds.items():
                        slot[kind] += n
                workload_ids.update(batch_workloads)
        manifest = {
            "source_id": target.name,
            "fingerprint": fingerprint,
            "partitions": counts,
            "workload_ids": workload_ids,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _land_batch(
    numbered: tuple[int, list[tuple[str, str | dict[str, Any]]]],
    *,
    staging: Path,
    bounds: TimeBounds,
    max_record_bytes: int,
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Validate one batch and write its parts; return its counts and workload ids."""
    batch_no, batch = numbered
    valid, quarantined = validate_batch(batch, bounds, max_record_bytes)
    _write_by_partition(valid, staging, "valid", batch_no)
    _write_by_partition(quarantined, staging, "quarantine", batch_no)
    counts: dict[str, dict[str, int]] = {}
    _count(counts, valid, "valid")
    _count(counts, quarantined, "quarantined")
    return counts, dict(valid.select("workload_key", "workload_id").unique().iter_rows())


def _map_batches(land, batches, workers: int):
    """`land` over the numbered batches, in a process pool when workers > 1 and there is
    more than one batch (starting processes costs more than a small file takes)."""
    numbered = enumerate(batches)
    first = list(itertools.islice(numbered, 2))
    if workers <= 1 or len(first) < 2:
        yield from map(land, itertools.chain(first, numbered))
        return
    context = multiprocessing.get_context("spawn")  # no fork of a threaded Dagster process
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        pending: collections.deque = collections.deque()
        for item in itertools.chain(first, numbered):
            pending.append(pool.submit(land, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # on failure or cancellation: drop queued batches, wait for the running ones, so
        # that nothing writes into the staging folder once the caller removes it
        pool.shutdown(wait=True, cancel_futures=True)


def _count(counts: dict[str, dict[str, int]], df: pl.DataFrame, kind: str) -> None:
    for day, key, n in df.group_by(["day", "workload_key"]).len().iter_rows():
        slot = counts.setdefault(f"{day}|{key}", {"valid": 0, "quarantined": 0})
        slot[kind] += n


def _swap_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        retired = target.with_name(f".{target.name}-retired-{os.getpid()}")
        os.replace(target, retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        # another process landed the same file first; its result is equivalent
        if read_manifest(target) is None:
            raise


def _result_from(manifest: dict[str, Any], landed: bool) -> LandingResult:
    return LandingResult(
        source_id=manifest["source_id"],
        fingerprint=manifest["fingerprint"],
        landed=landed,
        partitions=manifest["partitions"],
        workload_ids=manifest["workload_ids"],
    )


def _partition_glob(landing_dir: Path, day: str, key: str, prefix: str) -> list[Path]:
    # `[!.]*`: skip hidden staging / retired folders of a landing in progress or crashed
    return sorted(landing_dir.glob(f"[!.]*/day={day}/workload={key}/{prefix}-*.parquet"))


def read_partition(landing_dir: Path, day: str, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """All landed valid and quarantined records of one day x workload, in a stable order."""
    valid = _read_parts(_partition_glob(landing_dir, day, key, "valid"), TRACE_SCHEMA)
    quarantined = _read_parts(_partition_glob(landing_dir, day, key, "quarantine"), QUARANTINE_SCHEMA)
    return (
        # (timestamp, record_id): the order curation keeps, so its output needs no sort
        valid.sort("timestamp", "record_id", "source"),
        quarantined.sort("source"),
    )


def read_unattributed(landing_dir: Path) -> pl.DataFrame:
    return _read_parts(
        _partition_glob(landing_dir, UNATTRIBUTED, UNATTRIBUTED, "quarantine"), QUARANTINE_SCHEMA
    )


def _read_parts(paths: list[Path], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not paths:
        return pl.DataFrame(schema=schema)
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")
