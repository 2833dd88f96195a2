"""Atomic writes: readers see a file's (or folder's) old content or its new content, never a part.

Everything is written in a private hidden temporary file or folder beside its target and
renamed into place when complete. Temporary names carry their owner's host, pid and start
time (`owner_tag`), so what a process killed mid-write (kill -9, out of memory) left behind
can be removed (`sweep_leftovers`) while a live process's work is kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flywheel_assets.settings import load_settings


@contextlib.contextmanager
def atomic_path(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary file path for `path`, renamed to `path` when the block succeeds and
    removed when it fails: readers never see half a file. `durable` also flushes the file
    and the rename to disk (fsync of the file and its folder) before returning, for a file
    that must survive a power loss once written.

    The file sits in a private hidden folder that a failure removes whole: polars' streaming
    sink can still create its file just after it raised (seen in 27 of 200 failed sinks on a
    busy machine), which would leave a stray file beside `path`; in a removed folder it can't."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=owner_tag(), dir=path.parent))
    tmp = folder / path.name
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            with contextlib.suppress(OSError):  # not every file system syncs a folder
                _fsync(path.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """`text` as UTF-8 with its newlines as they are (no platform translation)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; when the block succeeds, it
    replaces `target` (whatever was there before is removed), else it is deleted. Readers
    of `target` see the old directory or the complete new one (or, for the instant between
    two renames, none), never a half-written one. Raises FileExistsError (and keeps the
    other writer's directory) when another process put a `target` in place meanwhile."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", suffix=owner_tag(), dir=target.parent))
    try:
        yield tmp
        if target.exists():
            stale = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if not target.exists():
                raise
            raise FileExistsError(f"{target} was written by someone else meanwhile") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ leftovers of killed processes

_OWNER_TAG = re.compile(r"\.owner-([0-9a-f]{12})-(\d+)-(\d+)$")


@dataclass(frozen=True)
class Leftover:
    path: Path
    size: int  # bytes freed


@functools.cache
def _machine() -> str:
    """This host and pid namespace: a pid names a process only where it was recorded."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()} {namespace}".encode()).hexdigest()[:12]


def _process_start(pid: int) -> int:
    """When a process started (field 22 of /proc/<pid>/stat, clock ticks since boot), to
    tell it from a later process given the same pid; 0 where there is no /proc."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(status.rsplit(")", 1)[1].split()[19])  # fields after "(command)" start at 3


def owner_tag() -> str:
    """A suffix for the name of a temporary file or folder naming the process that made it
    (host, pid, start time), so that `sweep_leftovers` can tell when that process is gone."""
    pid = os.getpid()
    return f".owner-{_machine()}-{pid}-{_process_start(pid)}"


def _owner_alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and another user's
    return _process_start(pid) == start  # or a later process that was given the same pid


def _last_touched(entry: os.DirEntry) -> float:
    """The newest modification time of a file, or of a folder and anything in it."""
    if not entry.is_dir(follow_symlinks=False):
        return entry.stat(follow_symlinks=False).st_mtime
    inside = (
        os.lstat(os.path.join(folder, name)).st_mtime
        for folder, dirs, names in os.walk(entry.path)
        for name in [*dirs, *names]
    )
    return max(entry.stat(follow_symlinks=False).st_mtime, *inside)


def _abandoned(entry: os.DirEntry, machine: str, pid: int, start: int, foreign_after_s: float) -> bool:
    if machine == _machine():
        return not _owner_alive(pid, start)
    # another host or pod (a step pod on a shared volume): its processes can't be asked from
    # here, so its work counts as abandoned once nothing touched it for `foreign_after_s`
    return time.time() - _last_touched(entry) > foreign_after_s


def _folder_size(path: str) -> int:
    return sum(os.lstat(os.path.join(folder, name)).st_size for folder, _, names in os.walk(path) for name in names)


def sweep_leftovers(folder: Path, foreign_after_s: float | None = None) -> list[Leftover]:
    """Remove the temporary files and folders in `folder` (hidden, named with `owner_tag`)
    whose process is gone: what a process killed mid-write (kill -9, out of memory) left
    behind. A live process's work is kept. An owner on another host can't be checked from
    here: its leftovers go once untouched for `foreign_after_s` (default
    FLYWHEEL_FOREIGN_LEFTOVER_HOURS). A name without an owner tag is never touched."""
    if foreign_after_s is None:
        foreign_after_s = load_settings().foreign_leftover_hours * 3600
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        owner = _OWNER_TAG.search(entry.name)
        if not entry.name.startswith(".") or not owner:
            continue
        try:
            if not _abandoned(entry, owner[1], int(owner[2]), int(owner[3]), foreign_after_s):
                continue
            if entry.is_dir(follow_symlinks=False):
                size = _folder_size(entry.path)
                shutil.rmtree(entry.path)
            else:
                size = entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # removed by another sweeper meanwhile
        removed.append(Leftover(Path(entry.path), size))
    return removed
