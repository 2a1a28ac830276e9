"""fileio: the one atomic write (files and folders): permissions, fsync, nothing half-written, cleanup on errors."""

import errno
import io
import json
import os
import subprocess
import sys
from os import replace as rename_for_real

import pytest
import torch

from srdensenet.fileio import (
    OutputError,
    WriteError,
    append_text,
    atomic_folder,
    atomic_write,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask():
    """Set a umask for the test, restore the old one after."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_normal_permissions(tmp_path, umask, mask):
    umask(mask)
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    target, synced = tmp_path / "a.txt", []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((os.fstat(fd).st_size, target.exists()))  # all the data, and the name not yet pointing at it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text_atomic(target, "hello")
    assert synced == [(5, False)] and target.read_text() == "hello"


def test_wrappers_write_bytes_text_and_json(tmp_path):
    write_bytes_atomic(tmp_path / "b", b"\x00\xff")
    write_text_atomic(tmp_path / "t", "ü\n")
    write_json_atomic(tmp_path / "j.json", {"a": float("nan"), "b": [1.5, float("inf")]})
    assert (tmp_path / "b").read_bytes() == b"\x00\xff"
    assert (tmp_path / "t").read_bytes() == "ü\n".encode()
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": None, "b": [1.5, None]}
    write_text_atomic(tmp_path / "new" / "deeper" / "t", "x")  # missing folders are made
    assert (tmp_path / "new" / "deeper" / "t").read_text() == "x"
    assert _leftovers(tmp_path) == []


def test_a_full_disk_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"the good old checkpoint")

    def write(handle):
        handle.write(b"half of the new one")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"--output .*model\.pth: cannot write \(No space left on device\)"):
        atomic_write(target, write, "--output")
    assert target.read_bytes() == b"the good old checkpoint"
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left


def test_any_error_removes_the_temporary_file(tmp_path):
    def interrupted(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a", interrupted)
    with pytest.raises(OutputError, match="a_file"):  # a file where the folder should be
        (tmp_path / "a_file").write_text("")
        write_text_atomic(tmp_path / "a_file" / "x.txt", "x")
    assert os.listdir(tmp_path) == ["a_file"]


def test_folder_swap_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-") and not target.joinpath("new.txt").exists()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert os.listdir(tmp_path) == ["out"]  # neither the temporary nor the old folder is left


def test_folder_swap_cleans_up_on_error(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="bad input"), atomic_folder(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise ValueError("bad input")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_folder_swap_failure_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    def replace(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError(errno.EIO, "Input/output error")
        rename_for_real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"out: cannot write \(Input/output error\)"), atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_folder_swap_removes_leftovers_of_dead_processes(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(finished.stdout), os.getppid()
    (tmp_path / f".out.tmp-{dead}").mkdir()  # a killed run's
    (tmp_path / f".out.tmp-{alive}").mkdir()  # another process's, still at work
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
    assert sorted(os.listdir(tmp_path)) == [f".out.tmp-{alive}", "out"]


class FillsUp(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: the write that does not fit raises ENOSPC."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)


@pytest.mark.parametrize("room", [0, 700])
def test_torch_save_failing_mid_write_is_one_error(tmp_path, room):
    """torch's zip writer answers a failed write with its own RuntimeError ('unexpected pos') on top of the OSError:
    the caller sees one WriteError naming the file, with no chained traceback, and the old file stays."""
    target = tmp_path / "last.pth"
    write_bytes_atomic(target, b"previous")
    with pytest.raises(WriteError) as failed:
        atomic_write(target, lambda handle: torch.save({"w": torch.zeros(1000)}, FillsUp(handle, room)))
    error = failed.value
    assert str(error).startswith(f"{target}: cannot write (No space left on device)")
    assert error.path == target and error.reason == "No space left on device" and error.__suppress_context__
    assert target.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_other_runtime_errors_pass_unchanged(tmp_path):
    def broken(handle):
        raise RuntimeError("not a write")
    with pytest.raises(RuntimeError, match="not a write"):
        atomic_write(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []


def test_failed_append_is_one_error_naming_the_log(tmp_path):
    append_text(tmp_path / "log.txt", "one\n")
    (tmp_path / "dir").mkdir()
    with pytest.raises(WriteError, match=r"dir: cannot write \(Is a directory\); its earlier lines are kept"):
        append_text(tmp_path / "dir", "two\n")
    assert (tmp_path / "log.txt").read_text() == "one\n"
