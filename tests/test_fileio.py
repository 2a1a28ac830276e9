"""fileio: the one atomic write (files and folders): permissions, fsync, nothing half-written, cleanup on errors."""

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from os import replace as rename_for_real

import pytest
import torch

from srdensenet.fileio import (
    OutputError,
    WriteError,
    append_text,
    atomic_folder,
    atomic_write,
    ensure_output_dir,
    remove_stale_temporaries,
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


def killed_writers_leftover(folder) -> str:
    """The temporary file of a writer killed by SIGKILL in the middle of atomic_write (nothing cleaned up)."""
    code = ("import sys, time\nfrom srdensenet.fileio import atomic_write\n"
            "def write(handle):\n    handle.write(b'half')\n    handle.flush()\n    print('writing', flush=True)\n"
            "    time.sleep(600)\n"
            "atomic_write(sys.argv[1], write)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(folder / "a.png")], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    (name,) = [p.name for p in folder.iterdir() if p.name.startswith(".a.png.")]
    return name


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    dead = killed_writers_leftover(tmp_path)
    host, pid, token = re.fullmatch(r"\.a\.png\.([0-9a-f]{4})-(\d+)-([0-9a-f]{8})\.tmp", dead).groups()
    other_host = f"{(int(host, 16) + 1) % 65536:04x}"
    an_hour_ago = time.time() - 2 * 3600
    kept = [".notes.tmp", "a.tmp", ".a.png.tmp", ".write-test-x", f".b.png.{other_host}-{pid}-{token}.tmp",
            f".c.png.{token}.tmp"]  # a user's files; another machine's and the older naming's, fresh: maybe at work
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".d.png.{host}-{pid}-{token}.tmp").mkdir()  # a folder is never a temporary file of atomic_write
    old = [f".e.png.{other_host}-{pid}-{token}.tmp", f".f.png.{token}.tmp", ".write-test-0000-1-abcdefgh"]
    for name in old:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (an_hour_ago, an_hour_ago))
    removed = sorted(p.name for p in remove_stale_temporaries(tmp_path))
    assert removed == sorted([dead, *old])
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, f".d.png.{host}-{pid}-{token}.tmp"])

    def check_own_file_is_kept(handle):  # this process's temporary file, while it writes it
        handle.write(b"x")
        assert [p for p in remove_stale_temporaries(tmp_path) if p.name.startswith(".g.png.")] == []
        assert any(p.name.startswith(".g.png.") for p in tmp_path.iterdir())

    atomic_write(tmp_path / "g.png", check_own_file_is_kept)
    assert (tmp_path / "g.png").read_bytes() == b"x"


def test_the_next_run_into_a_folder_removes_a_killed_runs_leftover(tmp_path, repo_root):
    dead = killed_writers_leftover(tmp_path)
    code = "import sys\nfrom srdensenet.fileio import ensure_output_dir\nensure_output_dir(sys.argv[1], '-o')"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=repo_root)
    assert dead not in os.listdir(tmp_path) and os.listdir(tmp_path) == []
    ensure_output_dir(tmp_path, "-o")  # its own write test leaves nothing either
    assert os.listdir(tmp_path) == []
