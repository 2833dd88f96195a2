"""Reading files named by a path someone else controls: only regular files, never blocking.

A FIFO named like a config or weights file would hang the reader forever, a device file
would be read without end, and a directory gives a confusing error deep inside a library.
The drop folder also refuses links (it is a boundary between whoever drops files and the
flywheel); configuration files and model directories follow them, as Kubernetes mounts a
ConfigMap through links and the Hugging Face cache links snapshots to blobs.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


class PathRefused(OSError):
    """A path that is not what was expected there; reads "<path> <why>"."""

    def __str__(self) -> str:
        return f"{self.filename} {self.strerror}"


class NotARegularFile(PathRefused):
    """A FIFO, socket, device or directory where a file was expected."""


class LinkRefused(PathRefused):
    """A symbolic link where links are not followed."""


# what `from_pretrained` reads from a model or adapter directory
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja")


def open_regular_file(path: str | os.PathLike, *, follow_links: bool) -> io.BufferedReader:
    """`path` opened for binary reading if it is a regular file. Opening never blocks (a
    FIFO is detected, not waited on) and the type is checked on the opened descriptor, so a
    file swapped after a `stat` cannot slip through."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_links:
            raise LinkRefused(errno.ELOOP, "is a symbolic link", str(path)) from error
        raise
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise NotARegularFile(errno.EINVAL, f"is a {_kind(mode)}, not a regular file", str(path))
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def read_config_file(path: str | os.PathLike, *, what: str, max_bytes: int = 16 * 2**20) -> str:
    """The text of a small configuration file, or an OSError that says which file and why."""
    with open_regular_file(path, follow_links=True) as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PathRefused(errno.EFBIG, f"is larger than {max_bytes} bytes; is this really {what}?", str(path))
    return data.decode("utf-8")


def check_model_directory(path: str | os.PathLike, required_file: str = "config.json") -> Path:
    """`path` if it is a directory holding `required_file` (`adapter_config.json` for a LoRA
    adapter) whose model files are all regular files (links followed); otherwise an OSError
    naming the offending path."""
    directory = Path(path)
    if not directory.is_dir():
        raise PathRefused(errno.ENOTDIR, "is not a directory", str(directory))
    for entry in directory.iterdir():
        if entry.name.endswith(MODEL_FILE_SUFFIXES):
            mode = entry.stat().st_mode  # follows links: the file the loader would read
            if not stat.S_ISREG(mode):
                raise NotARegularFile(errno.EINVAL, f"is a {_kind(mode)}, not a regular file", str(entry))
    if not (directory / required_file).exists():
        raise PathRefused(errno.ENOENT, f"has no {required_file}", str(directory))
    return directory


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")
