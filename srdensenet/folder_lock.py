"""One owner at a time for an output (a run folder, an LMDB, an export): an exclusive ``flock`` on a lock file beside
it, ``.<name>.lock`` in the same parent folder.

The kernel releases the lock when the process ends, however it ends (SIGKILL included), so a stale lock never
blocks anyone; a lock file left by a killed process is simply taken over. The lock file sits beside the output
rather than in it, so deleting and re-making the output by hand while its owner runs does not make a second owner.
After locking, the file is checked to still be the one at the lock path (same device and inode): an owner that
releases removes the file, and a process that opened it just before must then try again on the new one.

The lock file holds one JSON line about its owner (PID, host, command, start), written in place: the locked inode
must stay the same, so it cannot go through fileio's rename. On network filesystems see docs/errors.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

READ_TRIES, READ_PAUSE = 20, 0.05  # a new owner writes its line just after locking: wait up to a second for it


class FolderBusyError(ValueError):
    """The output is held by another process (its PID, host and command in the message)."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"


def _owner(fd: int) -> dict:
    """The owner's line in a held lock file ({} while it is not written yet or unreadable)."""
    for _ in range(READ_TRIES):
        try:
            text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
            if text.endswith("\n"):
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(READ_PAUSE)
    return {}


def busy_message(path: str | os.PathLike, owner: dict, ways_out: str) -> str:
    """The one line for an output held by ``owner``."""
    pid = owner.get("pid", "?")
    command = " ".join(owner.get("command", [])) or "command unknown"
    return (f"{path} is in use by PID {pid} on {owner.get('host', 'an unknown host')} ({command}; since "
            f"{owner.get('since', '?')}); wait for it to end or stop it (kill {pid}){ways_out}")


def _lock_once(lock: Path, path: str | os.PathLike, ways_out: str) -> int | None:
    """The locked fd of the lock file, or None when the file was replaced meanwhile (try again)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(fd)
        os.close(fd)
        raise FolderBusyError(busy_message(path, owner, ways_out)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        mine, there = os.fstat(fd), os.stat(lock)
    except FileNotFoundError:
        there = None
    if there is None or (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
        os.close(fd)  # its owner released it (and removed it) between our open and our lock
        return None
    return fd


def _write_owner(fd: int) -> None:
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": ["python", *sys.argv],
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.encode("utf-8"), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, a second process just cannot name us


@contextlib.contextmanager
def hold(path: str | os.PathLike, ways_out: str = "", lock: Path | None = None) -> Iterator[Path]:
    """Hold the output ``path`` (which need not exist) for the block; yields the lock file's path.

    Raises FolderBusyError at once when another process holds it (``ways_out`` ends its message, e.g. ", then
    continue with --resume auto"), or the OSError of a lock file that cannot be made (fileio.hold_output names it).
    ``lock``: another lock file than the one beside ``path`` (inside a folder that may be ``.``, whose parent may not
    be writable).
    """
    lock = lock or lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    while fd is None:
        fd = _lock_once(lock, path, ways_out)
    _write_owner(fd)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked: see the module docstring
        os.close(fd)
