"""Trace sources: where production traffic comes from.

`FileTraceSource` reads a drop folder of JSONL (`.jsonl`, `.jsonl.gz`) and Parquet files.
Files are streamed in batches, so a multi-GB file is never held in memory whole.

A file is identified by its content, not its path or mtime (`land_files`): a file is
hashed (SHA-256) only when its stat signature (size, mtime_ns, inode, ctime_ns) differs from
the one recorded for its path, and landed only when that content is not landed yet. So a
byte-identical file re-dropped, copied (under any name, with any mtime) or renamed lands
nothing; a file whose content changed replaces its earlier landing.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from flywheel_assets.core.ingest import LandingResult, TimeBounds, land_files, last_generation
from flywheel_assets.core.schema import DEFAULT_MAX_RECORD_BYTES

TRACE_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_SCAN_BLOCK_BYTES = 8 << 20
SourcedRecord = tuple[str, str | dict[str, Any]]  # (source, a JSON line or a decoded row)
Batch = list[SourcedRecord]


# A container sees the node's CPUs, not its own CPU limit: an automatic count is capped
AUTO_WORKERS_CAP = 4


def auto_validation_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), AUTO_WORKERS_CAP))


def is_trace_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(TRACE_FILE_SUFFIXES)


@dataclass(frozen=True)
class LineBatch:
    """Consecutive lines of a JSONL file, cheap to send to a validation process: a byte
    range of the file that the process reads itself, or for gzip (no random access) the
    bytes themselves. Lines are decoded only when iterated."""

    path: str
    name: str  # the file as records' `source` names it
    first_line_no: int
    offset: int = 0
    length: int = 0
    data: bytes | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """`(source, line)` pairs, blank lines skipped; bytes that are not UTF-8 are replaced."""
        text = self._bytes().decode("utf-8", errors="replace")
        for line_no, line in enumerate(text.split("\n"), start=self.first_line_no):
            line = line.rstrip("\r")
            if line.strip():
                yield f"{self.name}:{line_no}", line

    def _bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            return file.read(self.length)


def iter_jsonl_batches(path: Path, batch_size: int, name: str | None = None) -> Iterator[LineBatch]:
    """`batch_size` lines at a time; of a plain file only their byte range is kept. Records
    are sourced as `<name>:<line>` (name: the file name by default)."""
    name = name or path.name
    if not path.name.endswith(".gz"):
        for number, (offset, end) in enumerate(_line_ranges(path, batch_size)):
            yield LineBatch(str(path), name, 1 + number * batch_size, offset, end - offset)
        return
    line_no = 1
    with gzip.open(path, "rb") as lines:  # no random access: the batch carries its bytes
        while batch := list(itertools.islice(lines, batch_size)):
            yield LineBatch(str(path), name, line_no, data=b"".join(batch))
            line_no += len(batch)


def _line_ranges(path: Path, lines_per_range: int) -> Iterator[tuple[int, int]]:
    """`[offset, end)` byte ranges of consecutive runs of `lines_per_range` lines, found by
    counting newlines in large blocks (iterating a multi-GB file line by line in Python
    would cost more than validating it in parallel saves)."""
    start = block_offset = counted = 0
    with open(path, "rb") as file:
        while block := file.read(_SCAN_BLOCK_BYTES):
            position, newlines = 0, block.count(b"\n")
            while newlines >= lines_per_range - counted:
                needed = lines_per_range - counted
                # past the needed-th newline: what the split leaves over is the rest
                rest = block[position:].split(b"\n", needed)[-1]
                position, newlines, counted = len(block) - len(rest), newlines - needed, 0
                yield start, block_offset + position
                start = block_offset + position
            counted += newlines
            block_offset += len(block)
    if block_offset > start:
        yield start, block_offset


def iter_parquet_batches(path: Path, batch_size: int, name: str | None = None) -> Iterator[Batch]:
    """Parquet rows as trace dicts; `request`/`response` may be stored as JSON strings."""
    row_no = 0
    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        batch: Batch = []
        for row in record_batch.to_pylist():
            row_no += 1
            for field in ("request", "response", "feedback"):
                if isinstance(row.get(field), str):
                    try:
                        row[field] = json.loads(row[field])
                    except json.JSONDecodeError:
                        pass  # left as a string: validation quarantines it as wrong_type
            batch.append((f"{name or path.name}:{row_no}", {k: v for k, v in row.items() if v is not None}))
        yield batch


def iter_batches(path: Path, batch_size: int, name: str | None = None) -> Iterator[Iterable[SourcedRecord]]:
    if path.name.endswith(".parquet"):
        return iter_parquet_batches(path, batch_size, name)
    return iter_jsonl_batches(path, batch_size, name)


class FileTraceSource(dg.ConfigurableResource):
    """A drop folder of trace files (JSONL, gzip JSONL, Parquet), landed into the store."""

    traces_dir: str = Field(description="Folder that production traces are dropped into.")
    landing_dir: str = Field(description="Folder for validated records filed by day x workload.")
    start_date: str = Field(
        default="2025-01-01", description="First day partition; older records are quarantined."
    )
    batch_size: int = Field(default=20_000, description="Records validated per batch.")
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES)
    validation_workers: int = Field(
        default=0,
        ge=0,
        description="Processes validating the batches of a file of more than one batch "
        f"(0: one per CPU, at most {AUTO_WORKERS_CAP}; 1: in this process). Validation is "
        "CPU-bound Python; each process holds about two batches.",
    )

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_dir)

    def files(self) -> list[Path]:
        folder = Path(self.traces_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"traces_dir {folder} does not exist: create it and drop JSONL/Parquet trace "
                "files there, or set FLYWHEEL_TRACES_DIR"
            )
        return sorted(p for p in folder.rglob("*") if is_trace_file(p))

    def source_name(self, path: Path) -> str:
        """How records name their file: its path in the drop folder, unique there, so
        `<name>:<line>` identifies a record even when two folders hold the same file name."""
        try:
            return path.resolve().relative_to(Path(self.traces_dir).resolve()).as_posix()
        except ValueError:
            return path.name

    def bounds(self, today: dt.date | None = None) -> TimeBounds:
        today = today or dt.datetime.now(dt.timezone.utc).date()
        return TimeBounds(dt.date.fromisoformat(self.start_date), today + dt.timedelta(days=1))

    def land(self, paths: list[Path] | None = None) -> list[LandingResult]:
        """Land every file whose content is not landed yet (all files when `paths` is None)."""
        return land_files(
            self.files() if paths is None else paths,
            lambda path: iter_batches(path, self.batch_size, self.source_name(path)),
            landing_dir=self.landing_path,
            bounds=self.bounds(),
            max_record_bytes=self.max_record_bytes,
            workers=self.validation_workers or auto_validation_workers(),
        )

    def last_generation(self) -> int:
        """The generation of the newest landing, whoever landed it (a counter)."""
        return last_generation(self.landing_path)
