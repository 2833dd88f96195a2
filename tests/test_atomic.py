"""core.atomic: files and folders written whole or not at all, temporaries named by their owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flywheel_assets.core import atomic
from flywheel_assets.core.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    owner_tag,
    sweep_leftovers,
)

REPO = Path(__file__).resolve().parents[1]


def test_atomic_path_renames_into_place_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "new" / "folder" / "data.bin"
    with atomic_path(target) as tmp:
        assert isinstance(tmp, Path) and tmp.name == target.name
        assert tmp.parent.parent == target.parent
        assert tmp.parent.name.startswith(".data.bin.") and tmp.parent.name.endswith(owner_tag())
        tmp.write_bytes(b"whole")
        assert not target.exists()  # readers see nothing until the block ends
    assert target.read_bytes() == b"whole"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_folder(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_write_bytes_and_text(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "ünïcode\nline\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "ünïcode\nline\n".encode()
    atomic_write_text(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"


def test_a_durable_write_syncs_the_file_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic, "_fsync", lambda path: synced.append((path, (tmp_path / "d.jsonl").exists())))
    atomic_write_text(tmp_path / "d.jsonl", "{}\n", durable=True)
    (file_sync, file_renamed), (folder_sync, folder_renamed) = synced
    assert file_sync.name == "d.jsonl" and file_sync.parent != tmp_path and not file_renamed
    assert folder_sync == tmp_path and folder_renamed
    synced.clear()
    atomic_write_text(tmp_path / "e.txt", "x")
    assert synced == []


def test_a_durable_write_really_fsyncs(tmp_path):
    atomic_write_bytes(tmp_path / "d.bin", b"kept", durable=True)
    assert (tmp_path / "d.bin").read_bytes() == b"kept"


def test_atomic_directory_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        assert tmp.name.startswith(".model.tmp-") and tmp.name.endswith(owner_tag())
        (tmp / "weights").write_text("v1")
    with atomic_directory(target) as tmp:
        (tmp / "config").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["config"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_keeps_the_old_folder_when_the_block_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("save failed")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_keeps_another_writers_folder(tmp_path, monkeypatch):
    target = tmp_path / "model"
    rename = os.rename

    def someone_else_first(src, dst):
        if Path(dst) == target:
            target.mkdir()
            (target / "theirs").write_text("x")
            raise OSError("Directory not empty")
        rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", someone_else_first)
    with pytest.raises(FileExistsError, match="written by someone else"), atomic_directory(target) as tmp:
        (tmp / "mine").write_text("y")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


KILLED_MID_WRITE = """
    import os, signal, sys
    from pathlib import Path
    from flywheel_assets.core.atomic import atomic_directory, atomic_path
    with atomic_path(Path(sys.argv[1]) / "data.jsonl", durable=True) as tmp:
        tmp.write_text("half")
        with atomic_directory(Path(sys.argv[1]) / "model") as folder:
            (folder / "weights").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_writer_left_is_swept_and_nothing_else(tmp_path):
    (tmp_path / "untagged.tmp").write_text("not ours")
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), str(tmp_path)], check=False, cwd=REPO, timeout=120
    )
    assert child.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert len(left) == 2 and all(".owner-" in name for name in left)
    removed = sweep_leftovers(tmp_path, foreign_after_s=3600)
    assert sorted(leftover.path.name for leftover in removed) == left
    assert sorted(leftover.size for leftover in removed) == [4, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["untagged.tmp"]
