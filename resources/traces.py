"""Trace sources: where production traffic comes from.

`FileTraceSource` reads a drop folder of JSONL (`.jsonl`, `.jsonl.gz`) and Parquet files.
Files are streamed in batches, so a multi-GB file is never held in memory whole.

A file is identified by its content, not its path or mtime (`land_files`): a file is
hashed (SHA-256) only when its stat signature (size, mtime_ns, inode, ctime_ns) differs from
the one recorded for its path, and landed only when that content is not landed yet. So a
byte-identical file re-dropped, copied (under any name, with any mtime) or renamed lands
nothing; a file whose content changed replaces its earlier landing.

The drop folder is a boundary: only regular files in it are read. A symbolic link (wherever
it points), a FIFO, a socket, a device or a directory named like a trace file is refused and
reported, never read, and every read opens the file without following a link
(`open_source`). A file that fails to read (truncated gzip, damaged Parquet, no permission)
is reported with what to do, and the others land.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import itertools
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from flywheel_assets.core.cpus import usable_cpus
from flywheel_assets.core.ingest import (
    DamagedLanding,
    LandingResult,
    Landings,
    RefusedFile,
    TimeBounds,
    land_files,
    last_generation,
    open_source,
    read_error,
    read_partition,
    read_unattributed,
    repair_landing,
)
from flywheel_assets.core.schema import DEFAULT_MAX_RECORD_BYTES
from flywheel_assets.settings import DEFAULT_START_DATE

TRACE_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_SCAN_BLOCK_BYTES = 8 << 20
SourcedRecord = tuple[str, str | dict[str, Any]]  # (source, a JSON line or a decoded row)
Batch = list[SourcedRecord]
T = TypeVar("T")


# what reading a truncated, damaged or unreadable file raises: gzip (EOFError, BadGzipFile,
# zlib.error), Parquet (ArrowInvalid), permissions and I/O (OSError)
_READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)


@contextlib.contextmanager
def reading_errors() -> Iterator[None]:
    """Turns a read error of a source file into a `SourceReadError`: that file fails alone."""
    try:
        yield
    except _READ_ERRORS as error:
        raise read_error(error) from error


_NOT_REGULAR = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def refusal_reason(path: Path, mode: int) -> str | None:
    """Why a file named like a trace file is not read, from its own `lstat` mode (None:
    a regular file, read)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return (
            f"a symbolic link (to {os.readlink(path)}): links are never followed, as one could "
            "expose any file of the host; copy the file itself into the drop folder"
        )
    kind = _NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")
    return f"{kind}, not a regular file: only regular files are read"


@dataclass(frozen=True)
class DropEntry:
    """A file of the drop folder named like a trace file."""

    path: Path
    ctime_ns: int
    refusal: str | None  # why it is not read; None: a regular file, landed


def scan_drop_folder(traces_dir: Path, skip: Sequence[str] = ()) -> list[DropEntry]:
    """Every entry named like a trace file under `traces_dir`, hidden ones and the
    top-level folders in `skip` left out; one `lstat` per entry (`os.scandir`), no link
    followed. A directory named like a trace file is refused and still searched."""
    found: list[DropEntry] = []
    stack = [(Path(traces_dir), True)]
    while stack:
        folder, top = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.name.endswith(TRACE_FILE_SUFFIXES):
                    status = entry.stat(follow_symlinks=False)
                    path = Path(entry.path)
                    found.append(DropEntry(path, status.st_ctime_ns, refusal_reason(path, status.st_mode)))
                if entry.is_dir(follow_symlinks=False) and not (top and entry.name in skip):
                    stack.append((Path(entry.path), False))
    return sorted(found, key=lambda entry: entry.path)


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
        with reading_errors(), open_source(Path(self.path)) as file:  # read in a worker process
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
    # no random access: the batch carries its bytes
    with open_source(path) as file, gzip.open(file, "rb") as lines:
        while batch := list(itertools.islice(lines, batch_size)):
            yield LineBatch(str(path), name, line_no, data=b"".join(batch))
            line_no += len(batch)


def _line_ranges(path: Path, lines_per_range: int) -> Iterator[tuple[int, int]]:
    """`[offset, end)` byte ranges of consecutive runs of `lines_per_range` lines, found by
    counting newlines in large blocks (iterating a multi-GB file line by line in Python
    would cost more than validating it in parallel saves)."""
    start = block_offset = counted = 0
    with open_source(path) as file:
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
    with open_source(path) as file:
        for record_batch in pq.ParquetFile(file).iter_batches(batch_size=batch_size):
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
    """The batches of a trace file of any format; a read error is a `SourceReadError`."""
    read = iter_parquet_batches if path.name.endswith(".parquet") else iter_jsonl_batches
    with reading_errors():
        yield from read(path, batch_size, name)


class FileTraceSource(dg.ConfigurableResource):
    """A drop folder of trace files (JSONL, gzip JSONL, Parquet), landed into the store."""

    traces_dir: str = Field(description="Folder that production traces are dropped into.")
    landing_dir: str = Field(description="Folder for validated records filed by day x workload.")
    start_date: str = Field(
        default=DEFAULT_START_DATE.isoformat(), description="First day partition; older records are quarantined."
    )
    batch_size: int = Field(default=20_000, description="Records validated per batch.")
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES)
    validation_workers: int = Field(
        default=0,
        ge=0,
        description="Processes validating the batches of a file of more than one batch "
        "(0: one per CPU this process may use, counting its cgroup's CPU limit; 1: in this "
        "process). Validation is "
        "CPU-bound Python; each process holds about two batches.",
    )

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_dir)

    def scan(self) -> list[DropEntry]:
        """The drop folder's entries named like trace files (`scan_drop_folder`)."""
        folder = Path(self.traces_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"traces_dir {folder} does not exist: create it and drop JSONL/Parquet trace "
                "files there, or set FLYWHEEL_TRACES_DIR"
            )
        return scan_drop_folder(folder)

    def files(self) -> list[Path]:
        """The trace files to land: the regular files of the drop folder named like one."""
        return [entry.path for entry in self.scan() if entry.refusal is None]

    def refusal(self, path: Path) -> str | None:
        """Why a file given by its path is not read: what `scan_drop_folder` refuses, or a
        path that resolves outside the drop folder (through a linked folder). None: read."""
        try:
            reason = refusal_reason(path, os.lstat(path).st_mode)
        except FileNotFoundError:
            return None  # removed meanwhile: its landing says so
        inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.traces_dir))
        if reason is None and not inside:
            return f"resolves outside the drop folder {self.traces_dir}: only files in it are read"
        return reason

    def source_name(self, path: Path) -> str:
        """How records name their file: its path in the drop folder, unique there, so
        `<name>:<line>` identifies a record even when two folders hold the same file name."""
        try:
            return path.resolve().relative_to(Path(self.traces_dir).resolve()).as_posix()
        except ValueError:
            return path.name

    def bounds(self, today: dt.date | None = None) -> TimeBounds:
        today = today or dt.datetime.now(dt.UTC).date()
        return TimeBounds(dt.date.fromisoformat(self.start_date), today + dt.timedelta(days=1))

    def land(self, paths: list[Path] | None = None) -> list[LandingResult]:
        """Land every file whose content is not landed yet (all files when `paths` is None)."""
        return self.land_report(paths).results

    def land_report(self, paths: list[Path] | None = None) -> Landings:
        """`land`, and which files were refused (never read) or failed to read, and which
        leftovers of killed landers were removed."""
        if paths is None:
            checked = [(entry.path, entry.refusal) for entry in self.scan()]
        else:
            checked = [(path, self.refusal(path)) for path in paths]
        landings = land_files(
            [path for path, reason in checked if reason is None], self._read_batches, **self._landing_options()
        )
        return replace(landings, refused=[RefusedFile(str(path), reason) for path, reason in checked if reason])

    def read_partition(self, day: str, workload_key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The landed valid and quarantined records of one day x workload
        (`read_partition`); a landing found damaged is landed again from its file first."""
        return self._repairing(lambda: read_partition(self.landing_path, day, workload_key))

    def read_unattributed(self) -> pl.DataFrame:
        return self._repairing(lambda: read_unattributed(self.landing_path))

    def _repairing(self, read: Callable[[], T]) -> T:
        repaired: set[Path] = set()
        while True:
            try:
                return read()
            except DamagedLanding as damage:
                if damage.folder in repaired:
                    raise  # damaged again right after it was landed again: look at the disk
                repair_landing(damage, self._read_batches, **self._landing_options())
                repaired.add(damage.folder)

    def _read_batches(self, path: Path) -> Iterator[Iterable[SourcedRecord]]:
        return iter_batches(path, self.batch_size, self.source_name(path))

    def _landing_options(self) -> dict[str, Any]:
        return {
            "landing_dir": self.landing_path,
            "bounds": self.bounds(),
            "max_record_bytes": self.max_record_bytes,
            "workers": self.validation_workers or usable_cpus(),
        }

    def last_generation(self) -> int:
        """The generation of the newest landing, whoever landed it (a counter)."""
        return last_generation(self.landing_path)
