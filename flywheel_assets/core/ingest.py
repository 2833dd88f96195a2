"""Landing: validate raw trace files once and file them by day x workload.

A raw file (JSONL, gzip JSONL or Parquet, possibly many GB) is read in batches, every
record is validated, and the results are written under
`<landing>/<content id>/day=<day>/workload=<key>/{valid,quarantine}-<batch>.parquet`,
then the folder is renamed into place with a manifest. Each `raw_traces` partition then
reads only its own slice instead of re-reading every source file.

A file's identity is its content (`land_files`): the landing folder is named after the
SHA-256 of the file's bytes, so a file re-dropped over itself, copied with a new mtime,
copied under another name or renamed lands nothing new. Hashing is skipped while a file's
stat signature (size, mtime_ns, inode, ctime_ns) is the one recorded for its path in
`sources.json`, the landing folder's index of which content each file held when last seen
(written atomically, like everything here). When a file's content changes, its new content
is landed and its old landing retired once no file of the drop folder holds that content
any more (a deleted file keeps its landing, as a landing is only retired on a change; a
rename is a new path holding known content, so the old path stops holding it). Records'
`source` names the file that first landed the content.

Every landing gets a new generation from a counter in the landing folder, recorded in its
manifest; a file changing to content that is already landed gives that landing a new
generation too. Run keys name landings by (content id, generation): an identical re-drop
keeps its key, while content that goes A -> B -> A at one path is landed (and ingested)
again the third time.

Records that cannot be attributed to a day and a workload (bad JSON with no readable
`workload_id`/`timestamp`) are quarantined under `day=unattributed/workload=unattributed`
so that they are counted and kept, never dropped.

A file that cannot be read (truncated gzip, damaged Parquet, no permission, I/O error) fails
alone: it is reported with its error and what to do (`FailedSource`), the other files land,
and it is read again only once its stat signature changes (`failed_sources.json`). Each
landed part's size and SHA-256 are in the manifest: a part that fails to read is checked
against them and its landing landed again from a file that still holds its content
(`repair_landing`). Temporary files and folders carry their owner's pid (`core.atomic.owner_tag`),
so what a killed process left is swept (`sweep_leftovers`) and a live one's work is kept.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pydantic_core

from flywheel_assets.core.atomic import Leftover, atomic_write_text, owner_tag, sweep_leftovers
from flywheel_assets.core.local_files import LinkRefused, NotARegularFile, open_regular_file
from flywheel_assets.core.schema import (
    DEFAULT_MAX_RECORD_BYTES,
    Feedback,
    Rejection,
    TraceRecord,
    validate_trace,
)
from flywheel_assets.core.tool_schema import CallCounts, OfferedTools
from partitions.keys import workload_key

UNATTRIBUTED = "unattributed"
MANIFEST = "manifest.json"
SOURCE_INDEX = "sources.json"  # path -> stat signature and content digest, per source file
LAST_GENERATION = "last_generation"  # the counter of landings
FAILED_SOURCES = "failed_sources.json"  # path -> stat signature and error, per unreadable file
WORKLOAD_KEYS = "workload_keys.json"  # workload id -> the partition key its records landed under

# a valid trace: typed columns for filtering, keys and metadata, plus the record verbatim
# (`raw`); curation cuts messages, tools and the answer out of `raw` for the records it keeps.
# Production monitoring reads the answer's columns (`served_model` .. `tool_calls_schema_valid`,
# `trace_quality`), computed from the parsed record when it lands.
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
    "served_model": pl.String,
    "finish_reason": pl.String,
    "refused": pl.Boolean,
    # tool calls judged against the tools the request offered (none offered: none judged)
    "tool_calls": pl.Int64,
    "tool_calls_name_offered": pl.Int64,
    "tool_calls_schema_valid": pl.Int64,
    "source": pl.String,
    "raw": pl.String,
}
QUALITY_COLUMNS = (
    "served_model",
    "finish_reason",
    "refused",
    "tool_calls",
    "tool_calls_name_offered",
    "tool_calls_schema_valid",
)

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
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date().isoformat()


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
        *trace_quality(record, raw_text),
        source,
        raw_text,
    )


_NOT_JUDGED = CallCounts(0, 0, 0)


def trace_quality(record: TraceRecord, raw_text: str) -> tuple:
    """The QUALITY_COLUMNS of a valid record (`raw_text`: the record as landed): served
    model, finish reason, refused, and its tool calls judged against the offered tools."""
    calls = record.answer.tool_calls
    judged = _offered_tools(_tools_text(raw_text)).count(calls) if calls and record.request.tools else _NOT_JUDGED
    return (record.served_model, record.finish_reason, record.refused, *judged)


class _RequestTools(msgspec.Struct):
    tools: msgspec.Raw = msgspec.Raw(b"null")


class _RecordTools(msgspec.Struct):
    request: _RequestTools


_RECORD_TOOLS = msgspec.json.Decoder(_RecordTools)


def _tools_text(raw_text: str) -> bytes:
    """The record's `request.tools` as its JSON text, cut out without building Python
    objects for the record (pydantic leaves the tools' schemas unread, on purpose)."""
    try:
        return bytes(_RECORD_TOOLS.decode(raw_text).request.tools)
    except msgspec.DecodeError:  # JSON that msgspec is stricter about (an escaped lone surrogate)
        return json.dumps(json.loads(raw_text)["request"]["tools"]).encode()


@functools.lru_cache(maxsize=128)
def _offered_tools(tools_text: bytes) -> OfferedTools:
    # keyed by the tools' text: a workload offers the same few tool sets all day, so each
    # set is decoded and its schemas compiled once per process
    return OfferedTools(json.loads(tools_text))


def with_quality_columns(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """`frame` (TRACE_SCHEMA rows) with its QUALITY_COLUMNS: rows landed (or stored) before
    those columns existed get them from their `raw` text, by `trace_quality` as at landing."""
    lazy = isinstance(frame, pl.LazyFrame)
    if set(QUALITY_COLUMNS) <= set(frame.collect_schema().names()):
        return frame
    frame = frame.collect() if lazy else frame
    rows = [trace_quality(TraceRecord.model_validate_json(raw), raw) for raw in frame.get_column("raw")]
    quality = pl.DataFrame(
        dict(zip(QUALITY_COLUMNS, zip(*rows))) if rows else None,
        schema={column: TRACE_SCHEMA[column] for column in QUALITY_COLUMNS},
    )
    upgraded = pl.concat([frame.drop(QUALITY_COLUMNS, strict=False), quality], how="horizontal").select(*TRACE_SCHEMA)
    return upgraded.lazy() if lazy else upgraded


def stored_traces(frames: Sequence[pl.LazyFrame], *, with_quality: bool = False) -> pl.LazyFrame:
    """Stored days of `raw_traces` as one frame. A day stored before the answer's columns
    (QUALITY_COLUMNS) existed lacks them: `with_quality` computes them from its raw text
    (`with_quality_columns`); without it they stay null there, for readers that use none."""
    if not frames:
        return pl.LazyFrame(schema=TRACE_SCHEMA)
    if with_quality:
        return pl.concat([with_quality_columns(frame) for frame in frames])
    return pl.concat(frames, how="diagonal_relaxed")


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


def _write_by_partition(df: pl.DataFrame, root: Path, prefix: str, batch: int) -> list[str]:
    """Write a part per day x workload; return their paths relative to `root`."""
    written = []
    for (day, key), part in df.group_by(["day", "workload_key"]):
        name = f"day={day}/workload={key}/{prefix}-{batch:05d}.parquet"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        # lz4: the landing is read back once per partition, so write speed matters most
        part.write_parquet(root / name, compression="lz4")
        written.append(name)
    return written


Batches = Iterator[list[tuple[str, str | dict[str, Any]]]]


@dataclass(frozen=True)
class LandingResult:
    source_id: str  # the landing folder; of a drop-folder file, its content digest
    fingerprint: str
    generation: int  # new with every landing: what run keys name, with the source id
    landed: bool  # False when this content was already landed (nothing was validated)
    partitions: dict[str, dict[str, int]]  # "day|workload_key" -> {"valid": n, "quarantined": n}
    workload_ids: dict[str, str]  # workload_key -> original workload id


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None


def last_generation(landing_dir: Path) -> int:
    """The generation of the newest landing in `landing_dir` (0 before the first one)."""
    try:
        return int((landing_dir / LAST_GENERATION).read_text())
    except FileNotFoundError:
        return 0


def _new_generation(landing_dir: Path) -> int:
    """The next generation, recorded before it is used so that no two landings share one,
    even across a crash. Called under the landing lock."""
    generation = last_generation(landing_dir) + 1
    atomic_write_text(landing_dir / LAST_GENERATION, str(generation))
    return generation


def read_workload_keys(landing_dir: Path) -> dict[str, str]:
    """Every workload id landed so far -> its partition key."""
    try:
        return json.loads((landing_dir / WORKLOAD_KEYS).read_text())
    except FileNotFoundError:
        # a landing area older than this file: gathered from its manifests once
        keys = {}
        for folder in sorted(landing_dir.iterdir()):
            manifest = read_manifest(folder) if folder.is_dir() and not folder.name.startswith(".") else None
            if manifest:
                keys.update({workload_id: key for key, workload_id in manifest["workload_ids"].items()})
        return keys


def pinned_workload_keys(known_keys: dict[str, str]) -> dict[str, str]:
    """Of `read_workload_keys`, the ids landed under a key other than `workload_key`'s today
    (an id with a dot, landed before dots were allowed): they keep that key, so a
    workload's data never moves to another partition silently."""
    return {workload_id: key for workload_id, key in known_keys.items() if workload_key(workload_id) != key}


def _pin_keys(frame: pl.DataFrame, pinned: dict[str, str]) -> pl.DataFrame:
    if not pinned or frame.is_empty():
        return frame
    pinned_key = pl.col("workload_id").replace_strict(pinned, default=pl.col("workload_key"), return_dtype=pl.String)
    return frame.with_columns(
        workload_key=pl.when(pl.col("workload_key") == UNATTRIBUTED).then(pl.col("workload_key")).otherwise(pinned_key)
    )


class SourceReadError(Exception):
    """A source file that cannot be read (truncated, damaged, unreadable, not a regular
    file): that file fails alone, with its error and what to do about it."""

    def __init__(self, error: str, remedy: str):
        super().__init__(error, remedy)  # both in args: raised in a worker, it is pickled
        self.error, self.remedy = error, remedy

    def __str__(self) -> str:
        return f"{self.error} ({self.remedy})"


def read_error(error: BaseException) -> SourceReadError:
    """What reading a source raised, with what the person who dropped it can do."""
    if isinstance(error, PermissionError):
        remedy = (
            "make the file readable by the user the flywheel runs as; it is read again once it changes (a chmod counts)"
        )
    elif isinstance(error, FileNotFoundError):
        remedy = "the file was removed while it was read; drop it again if that was not meant"
    else:
        remedy = "re-export the file and drop it again; it is read again once it changes"
    return SourceReadError(f"{type(error).__name__}: {error}", remedy)


def open_source(path: Path) -> io.BufferedReader:
    """A source file opened for reading only if it is a regular file, never through a
    symbolic link (a drop folder is a boundary: a link could expose any file of the host)
    and without blocking on a FIFO: what the folder held when it was listed may have been
    replaced since. Raises `SourceReadError` for anything else, OSError as `open` does."""
    try:
        return open_regular_file(path, follow_links=False)
    except LinkRefused as error:
        remedy = "links are never followed: copy the file itself into the drop folder"
        raise SourceReadError(f"{path} is a symbolic link", remedy) from error
    except NotARegularFile as error:
        raise SourceReadError(f"{path} {error.strerror}", "only regular files are read") from error


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in large blocks (`hashlib.file_digest`)."""
    try:
        with open_source(path) as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise read_error(error) from error


def stat_signature(path: Path) -> list[int]:
    """Changes when a file is written, replaced, renamed or touched; a `stat` to compare
    (of the path itself: a link is not followed)."""
    status = os.lstat(path)
    return [status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns]


@dataclass
class SourceIndex:
    """Which content each source file held when it was last landed (`sources.json`), and
    the files holding each content, to tell when a landing is held by no file any more."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {"stat", "digest"}
    holders: dict[str, set[str]] = field(default_factory=dict)  # digest -> paths

    @classmethod
    def read(cls, landing_dir: Path) -> SourceIndex:
        index = cls()
        try:
            files = json.loads((landing_dir / SOURCE_INDEX).read_text())
        except FileNotFoundError:
            return index
        for path, entry in files.items():
            index.record(path, entry["stat"], entry["digest"])
        return index

    def write(self, landing_dir: Path) -> None:
        atomic_write_text(landing_dir / SOURCE_INDEX, json.dumps(self.files, sort_keys=True))

    def digest_of(self, path: str) -> str | None:
        entry = self.files.get(path)
        return entry["digest"] if entry else None

    def other_holders(self, digest: str, path: str) -> list[str]:
        """The files other than `path` that still exist and held `digest` when last seen."""
        return [p for p in self.holders.get(digest, ()) if p != path and os.path.exists(p)]

    def record(self, path: str, stat: list[int], digest: str) -> None:
        previous = self.digest_of(path)
        if previous is not None:
            self.holders[previous].discard(path)
        self.files[path] = {"stat": stat, "digest": digest}
        self.holders.setdefault(digest, set()).add(path)

    def forget_missing(self, digest: str) -> None:
        """Forget the files that held `digest` and are gone (a renamed file's old path, a
        deleted file): the landing then belongs to the files that still hold its content,
        and is retired when the last of them changes."""
        for path in [p for p in self.holders.get(digest, ()) if not os.path.exists(p)]:
            self.holders[digest].discard(path)
            del self.files[path]


@dataclass(frozen=True)
class FailedSource:
    """A source file that could not be read; the others landed without it."""

    path: str
    error: str
    remedy: str
    read_now: bool  # False: unchanged since it failed, so it was not read again


@dataclass(frozen=True)
class RefusedFile:
    """A file of the drop folder that is never read (a link, a FIFO, a device...)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Landings:
    """What a landing pass did: a result per landed file, and what it could not land."""

    results: list[LandingResult]
    failed: list[FailedSource] = field(default_factory=list)
    refused: list[RefusedFile] = field(default_factory=list)
    swept: list[Leftover] = field(default_factory=list)  # leftovers of killed landers, removed

    def log_lines(self) -> list[str]:
        """One line per file that was not landed, and per leftover removed, for a log."""
        return (
            [f"refused {r.path}: {r.reason}" for r in self.refused]
            + [
                f"failed {f.path}: {f.error}; {f.remedy}"
                + ("" if f.read_now else " (unchanged since it failed: not read again)")
                for f in self.failed
            ]
            + [f"removed {leftover.path} ({leftover.size} bytes), left by a killed lander" for leftover in self.swept]
        )


@dataclass
class FailedSources:
    """The files that failed to be read, with the stat signature they had then
    (`failed_sources.json`): one is read again only once it changes."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {"stat", "error", "remedy"}

    @classmethod
    def read(cls, landing_dir: Path) -> FailedSources:
        try:
            return cls(json.loads((landing_dir / FAILED_SOURCES).read_text()))
        except FileNotFoundError:
            return cls()

    def write(self, landing_dir: Path) -> None:
        present = {path: entry for path, entry in self.files.items() if os.path.lexists(path)}
        atomic_write_text(landing_dir / FAILED_SOURCES, json.dumps(present, sort_keys=True))

    def unchanged(self, path: str, signature: list[int]) -> FailedSource | None:
        entry = self.files.get(path)
        if entry is None or entry["stat"] != signature:
            return None
        return FailedSource(path, entry["error"], entry["remedy"], read_now=False)

    def record(self, path: str, signature: list[int], error: SourceReadError) -> FailedSource:
        self.files[path] = {"stat": signature, "error": error.error, "remedy": error.remedy}
        return FailedSource(path, error.error, error.remedy, read_now=True)


def land_files(
    paths: Iterable[Path],
    read_batches: Callable[[Path], Batches],
    *,
    landing_dir: Path,
    bounds: TimeBounds,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = 1,
) -> Landings:
    """Land each file under its content (see the module docstring). A file whose stat
    signature is the one recorded for it (landed, or failed) costs a `stat` and a manifest
    read, and no lock; the others are hashed, and landed if their content is new, under the
    landing lock. A file that cannot be read is reported as failed; the others still land."""
    paths = list(paths)
    index, failures = SourceIndex.read(landing_dir), FailedSources.read(landing_dir)
    outcomes = {path: _known_outcome(index, failures, path, landing_dir) for path in paths}
    changed = [path for path, outcome in outcomes.items() if outcome is None]
    swept: list[Leftover] = []
    if changed:
        landing_dir.mkdir(parents=True, exist_ok=True)
        with _landing_lock(landing_dir) as swept:
            # another process may have landed them meanwhile
            index, failures = SourceIndex.read(landing_dir), FailedSources.read(landing_dir)
            try:
                for path in changed:
                    outcomes[path] = _known_outcome(index, failures, path, landing_dir) or _land_or_fail(
                        path,
                        read_batches,
                        index,
                        failures,
                        landing_dir,
                        bounds=bounds,
                        max_record_bytes=max_record_bytes,
                        workers=workers,
                    )
            finally:
                # once, not per file: the index grows with the drop folder. A file whose landing
                # was interrupted has not been recorded, so it is hashed and landed again next time.
                index.write(landing_dir)
                failures.write(landing_dir)
    results = {path: o for path, o in outcomes.items() if isinstance(o, LandingResult)}
    # a file that changed to content another file holds gave that landing a new generation:
    # every file holding it reports the newest
    newest: dict[str, int] = {}
    for result in results.values():
        newest[result.source_id] = max(result.generation, newest.get(result.source_id, 0))
    return Landings(
        results=[
            dataclasses.replace(results[path], generation=newest[results[path].source_id])
            for path in paths
            if path in results
        ],
        failed=[o for o in outcomes.values() if isinstance(o, FailedSource)],
        swept=swept,
    )


def _known_outcome(
    index: SourceIndex, failures: FailedSources, path: Path, landing_dir: Path
) -> LandingResult | FailedSource | None:
    """The landing, or the failure, of a file whose stat signature is the one recorded for
    it; None when it is new or changed (or gone: found out under the lock)."""
    key = os.path.abspath(path)
    try:
        signature = stat_signature(path)
    except OSError:
        return None
    entry = index.files.get(key)
    if entry is not None and entry["stat"] == signature:
        manifest = read_manifest(landing_dir / entry["digest"])
        if manifest:
            return _result_from(manifest, landed=False)
    return failures.unchanged(key, signature)


def _land_or_fail(
    path: Path,
    read_batches: Callable[[Path], Batches],
    index: SourceIndex,
    failures: FailedSources,
    landing_dir: Path,
    **landing,
) -> LandingResult | FailedSource:
    """`_land_content`, or the file's failure when it cannot be read: recorded with the stat
    signature it had before it was read, so a file written while it was read is read again."""
    key = os.path.abspath(path)
    try:
        signature = stat_signature(path)
    except OSError as error:  # removed since it was listed
        failure = read_error(error)
        return FailedSource(key, failure.error, failure.remedy, read_now=True)
    try:
        result = _land_content(path, signature, read_batches, index, landing_dir, **landing)
    except SourceReadError as error:
        return failures.record(key, signature, error)
    failures.files.pop(key, None)
    return result


def _land_content(
    path: Path,
    signature: list[int],
    read_batches: Callable[[Path], Batches],
    index: SourceIndex,
    landing_dir: Path,
    **landing,
) -> LandingResult:
    """Land a file whose stat signature changed (or that is new), or find its content
    landed already; retire the landing of the content it held before if no other file
    holds that content. The index records the file only once that is done."""
    key = os.path.abspath(path)
    digest = content_digest(path)
    folder = landing_dir / digest
    previous = index.digest_of(key)
    retired = []
    if previous is None:  # landed by path before landings were named by content?
        retired.append(landing_dir / _legacy_landing_name(path))
    elif previous != digest and not index.other_holders(previous, key):
        retired.append(landing_dir / previous)
    manifest = read_manifest(folder)
    landed = manifest is None
    if landed:
        manifest = _stage_and_swap(read_batches(path), folder, digest, _new_generation(landing_dir), retired, **landing)
    else:
        _retire(retired)
        if previous not in (None, digest):
            # the file changed to content landed for another file: its partitions changed,
            # so they are ingested again under a new generation
            manifest = {**manifest, "generation": _new_generation(landing_dir)}
            atomic_write_text(folder / MANIFEST, json.dumps(manifest, sort_keys=True))
    index.record(key, signature, digest)
    index.forget_missing(digest)
    if previous is not None:
        index.forget_missing(previous)
    return _result_from(manifest, landed=landed)


def _legacy_landing_name(path: Path) -> str:
    """The folder a file was landed in when landings were named by the file's path."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:60]
    return f"{stem}-{digest}"


def land_file(
    batches: Batches,
    *,
    source_id: str,
    fingerprint: str,
    landing_dir: Path,
    bounds: TimeBounds,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = 1,
) -> LandingResult:
    """Validate and land one stream of records as `<landing>/<source_id>`, replacing its
    earlier landing; a no-op when it is already landed with this fingerprint. (Drop-folder
    files are landed by content, through `land_files`.)

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
            batches,
            target,
            fingerprint,
            _new_generation(landing_dir),
            [target],
            bounds=bounds,
            max_record_bytes=max_record_bytes,
            workers=workers,
        )
    return _result_from(manifest, landed=True)


@contextlib.contextmanager
def _landing_lock(landing_dir: Path) -> Iterator[list[Leftover]]:
    """One landing at a time per landing folder, across processes: runs of a backfill and
    the drop-folder sensor all land the drop folder, and a large file should be validated
    once, not once per concurrent run. The lock goes with the descriptor. Yields the
    leftovers of killed landers it removed first (see `sweep_leftovers`)."""
    descriptor = os.open(landing_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield sweep_leftovers(landing_dir)
    finally:
        os.close(descriptor)


def _stage_and_swap(
    batches: Batches,
    target: Path,
    fingerprint: str,
    generation: int,
    retired: list[Path],
    *,
    bounds: TimeBounds,
    max_record_bytes: int,
    workers: int,
) -> dict[str, Any]:
    """Land into a staging folder, then retire the landings it replaces and rename it into
    place: readers may miss those records for a moment, never count them twice."""
    landing_dir = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=owner_tag(), dir=landing_dir))
    try:
        counts: dict[str, dict[str, int]] = {}
        workload_ids: dict[str, str] = {}
        parts: dict[str, dict[str, Any]] = {}
        known_keys = read_workload_keys(landing_dir)
        land = functools.partial(
            _land_batch,
            staging=staging,
            bounds=bounds,
            max_record_bytes=max_record_bytes,
            pinned_keys=pinned_workload_keys(known_keys),
        )
        # closed (its pool shut down) before the staging folder is removed
        with contextlib.closing(_map_batches(land, batches, workers)) as landed_batches:
            for batch_counts, batch_workloads, batch_parts in landed_batches:
                for partition, kinds in batch_counts.items():
                    slot = counts.setdefault(partition, {"valid": 0, "quarantined": 0})
                    for kind, n in kinds.items():
                        slot[kind] += n
                workload_ids.update(batch_workloads)
                parts.update(batch_parts)
        manifest = {
            "source_id": target.name,
            "fingerprint": fingerprint,
            "generation": generation,
            "partitions": counts,
            "workload_ids": workload_ids,
            "parts": parts,  # checked when a part fails to read (`repair_landing`)
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        _retire(retired)
        os.replace(staging, target)
        known_keys.update({workload_id: key for key, workload_id in workload_ids.items()})
        atomic_write_text(landing_dir / WORKLOAD_KEYS, json.dumps(known_keys, sort_keys=True))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _retire(folders: Iterable[Path]) -> None:
    """Remove landings: renamed out of readers' sight (hidden) first, then deleted."""
    for folder in folders:
        if folder.exists():
            hidden = folder.with_name(f".{folder.name}-retired{owner_tag()}")
            os.replace(folder, hidden)
            shutil.rmtree(hidden, ignore_errors=True)


def _land_batch(
    numbered: tuple[int, list[tuple[str, str | dict[str, Any]]]],
    *,
    staging: Path,
    bounds: TimeBounds,
    max_record_bytes: int,
    pinned_keys: dict[str, str],
) -> tuple[dict[str, dict[str, int]], dict[str, str], dict[str, dict[str, Any]]]:
    """Validate one batch and write its parts; return its counts, workload ids and parts
    (their checksums, computed here while the parts are in the page cache)."""
    batch_no, batch = numbered
    valid, quarantined = (_pin_keys(frame, pinned_keys) for frame in validate_batch(batch, bounds, max_record_bytes))
    parts = [
        *_write_by_partition(valid, staging, "valid", batch_no),
        *_write_by_partition(quarantined, staging, "quarantine", batch_no),
    ]
    counts: dict[str, dict[str, int]] = {}
    _count(counts, valid, "valid")
    _count(counts, quarantined, "quarantined")
    workload_ids = dict(valid.select("workload_key", "workload_id").unique().iter_rows())
    return counts, workload_ids, {part: _checksum(staging / part) for part in parts}


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


def _result_from(manifest: dict[str, Any], landed: bool) -> LandingResult:
    return LandingResult(
        source_id=manifest["source_id"],
        fingerprint=manifest["fingerprint"],
        generation=manifest["generation"],
        landed=landed,
        partitions=manifest["partitions"],
        workload_ids=manifest["workload_ids"],
    )


def _partition_glob(landing_dir: Path, day: str, key: str, prefix: str) -> list[Path]:
    # `[!.]*`: skip hidden staging / retired folders of a landing in progress or crashed
    return sorted(landing_dir.glob(f"[!.]*/day={day}/workload={key}/{prefix}-*.parquet"))


def read_partition(landing_dir: Path, day: str, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """All landed valid and quarantined records of one day x workload, in a stable order."""
    valid = _read_parts(_partition_glob(landing_dir, day, key, "valid"), TRACE_SCHEMA, with_quality_columns)
    quarantined = _read_parts(_partition_glob(landing_dir, day, key, "quarantine"), QUARANTINE_SCHEMA)
    return (
        # (timestamp, record_id): the order curation keeps, so its output needs no sort
        valid.sort("timestamp", "record_id", "source"),
        quarantined.sort("source"),
    )


def read_unattributed(landing_dir: Path) -> pl.DataFrame:
    return _read_parts(_partition_glob(landing_dir, UNATTRIBUTED, UNATTRIBUTED, "quarantine"), QUARANTINE_SCHEMA)


def _read_parts(
    paths: list[Path], schema: dict[str, pl.DataType], upgrade: Callable[[pl.DataFrame], pl.DataFrame] = lambda f: f
) -> pl.DataFrame:
    """The parts, each `upgrade`d to the current schema (a part landed by an older version)."""
    if not paths:
        return pl.DataFrame(schema=schema)
    return pl.concat([upgrade(_read_part(p)) for p in paths], how="vertical")


def _read_part(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        # <landing>/<source id>/day=<day>/workload=<key>/<part>
        raise DamagedLanding(path.parents[2], f"{path.relative_to(path.parents[2])}: {error}") from error


# ------------------------------------------------------------------------- damaged landings


class DamagedLanding(Exception):
    """A landed part failed to read (e.g. truncated on disk after it was landed)."""

    def __init__(self, folder: Path, detail: str):
        super().__init__(f"landing {folder} is damaged: {detail}")
        self.folder, self.detail = folder, detail


class LandingLost(Exception):
    """A damaged landing that no file in the drop folder can land again."""


def _checksum(path: Path) -> dict[str, Any] | None:
    """Size and SHA-256 of a landed part; None when it is missing."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            return {"size": size, "sha256": hashlib.file_digest(file, "sha256").hexdigest()}
    except FileNotFoundError:
        return None


def damaged_parts(folder: Path, manifest: dict[str, Any]) -> list[str] | None:
    """The parts of a landing whose size or SHA-256 differs from its manifest's (or that
    are missing); None for a landing made before manifests recorded them."""
    if "parts" not in manifest:
        return None
    return [part for part, expected in sorted(manifest["parts"].items()) if _checksum(folder / part) != expected]


def repair_landing(
    damage: DamagedLanding,
    read_batches: Callable[[Path], Batches],
    *,
    landing_dir: Path,
    bounds: TimeBounds,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int = 1,
) -> None:
    """Land again, under the landing lock, a landing whose part failed to read, from a file
    of the drop folder that still holds its content; it keeps its generation (same content,
    same records), so nothing new is requested. Raises `LandingLost`, naming the landing,
    its partitions and what to do, when no file holds that content any more."""
    folder = damage.folder
    with _landing_lock(landing_dir):
        manifest = read_manifest(folder)
        if manifest is None or damaged_parts(folder, manifest) == []:
            return  # retired (its file changed) or repaired by another process meanwhile
        holders = SourceIndex.read(landing_dir).holders.get(folder.name, set())
        unreadable = []
        for path in sorted(holders):
            try:
                if content_digest(Path(path)) != folder.name:
                    continue  # changed since: landed under its new content on the next landing
                _stage_and_swap(
                    read_batches(Path(path)),
                    folder,
                    manifest["fingerprint"],
                    manifest["generation"],
                    [folder],
                    bounds=bounds,
                    max_record_bytes=max_record_bytes,
                    workers=workers,
                )
                return
            except SourceReadError as error:
                unreadable.append(f"{path}: {error.error}")
    partitions = sorted(manifest["partitions"])
    raise LandingLost(
        f"landing {folder} is damaged ({damage.detail}) and no file in the drop folder holds its "
        f"content (SHA-256 {folder.name}) to land it again"
        + (f" (unreadable: {'; '.join(unreadable)})" if unreadable else "")
        + f". Its records belong to the day|workload partitions {partitions}. To get them back, "
        f"drop the original file into the drop folder again; to give them up, remove {folder}. "
        "Then materialize raw_traces for those partitions again."
    ) from damage
