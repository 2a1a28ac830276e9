"""Output files and folders that are never half-written, output folders checked before any work is done, and
commands whose standard output may be closed early (``| head``).

Every whole file this project writes goes through ``atomic_write`` (or its wrappers), every built folder through
``atomic_folder``: the data goes to a temporary name beside the target and is renamed over it only when complete.
Logs are the exception: they are appended in place (``append_text``). A write that fails is one WriteError line
naming the file. ``hold_output`` makes a process the one writer of an output (folder_lock.py); ``atomic_folder``
holds its folder so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from . import folder_lock


class OutputError(ValueError):
    """An output path that cannot be written, with the option and the reason in the message."""


# Temporary files are named after the machine and the process that write them (``_owner_tag``), so a later run can
# tell a killed run's leftovers (``remove_stale_temporaries``) from another live process's file in progress.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]
# atomic_write's ".<name>.<host>-<pid>-<8 hex>.tmp" (and the older ".<name>.<8 hex>.tmp"), ensure_output_dir's
# ".write-test-<host>-<pid>-<8 of tempfile's characters>": nothing else is ever removed as a leftover.
_TEMPORARY = re.compile(r"\.(?:.+\.(?:(?P<host>[0-9a-f]{4})-(?P<pid>\d+)-)?[0-9a-f]{8}\.tmp"
                        r"|write-test-(?P<test_host>[0-9a-f]{4})-(?P<test_pid>\d+)-[a-z0-9_]{8})")
# A temporary file untouched this long is stale whoever wrote it (a writer updates its file as it writes): the rule
# for files of another machine, of a process whose number was reused, and of the older naming without one.
STALE_SECONDS = 3600
_cleaned: set[str] = set()  # folders already cleaned by this process


def _owner_tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def _is_stale(entry: os.DirEntry, now: float) -> bool:
    match = _TEMPORARY.fullmatch(entry.name)
    if match is None or not entry.is_file(follow_symlinks=False):
        return False
    try:
        if now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
            return True
    except OSError:
        return False
    host, pid = match.group("host") or match.group("test_host"), match.group("pid") or match.group("test_pid")
    return host == _HOST and pid is not None and not _process_alive(int(pid))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left in folder: temporary files named by ``atomic_write`` or ``ensure_output_dir``
    whose process is gone (on this machine), or which nobody touched for STALE_SECONDS. Files of live writers and
    every other file are left alone; a folder that cannot be listed is left as it is. Returns the files removed."""
    removed = []
    now = time.time()
    try:
        with os.scandir(folder) as entries:
            stale = [Path(entry.path) for entry in entries if _is_stale(entry, now)]
    except OSError:
        return []
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _clean_once(folder: Path) -> None:
    """remove_stale_temporaries, the first time this process writes into folder (a run into a folder cleans it)."""
    key = os.path.abspath(folder)
    if key not in _cleaned:
        _cleaned.add(key)
        remove_stale_temporaries(folder)


def ensure_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create folder path if needed and prove it is writable, before hours of work depend on it; leftovers of killed
    runs in it are removed (``remove_stale_temporaries``)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _clean_once(path)
        with tempfile.NamedTemporaryFile(dir=path, prefix=f".write-test-{_owner_tag()}-"):
            pass
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write there ({error.strerror or error})") from None
    return path


class WriteError(OutputError):
    """A write that failed (disk full, quota, read-only, permissions, I/O error): ``path`` and ``reason`` say which
    file and why, so callers can add what is kept."""

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason

    def keeping(self, kept: str) -> WriteError:
        """The same failure, saying instead what is kept (a caller that knows more, e.g. the last checkpoint)."""
        return _write_error(self.path, self.reason, kept)


def _write_error(path: Path, reason: str, kept: str, option: str = "") -> WriteError:
    where = f"{option} {path}" if option else str(path)
    return WriteError(f"{where}: cannot write ({reason}); {kept}", path, reason)


def _cannot_write(path: Path, option: str, error: OSError,
                  kept: str = "the previous version, if any, is untouched") -> WriteError:
    return _write_error(path, error.strerror or str(error), kept, option)


def os_error_behind(error: BaseException) -> OSError | None:
    """The OSError an error is, or was raised while handling: torch.save turns a failed write of its file into a
    RuntimeError ('unexpected pos') raised on top of the OSError."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], option: str = "") -> None:
    """Replace path with what ``write(handle)`` writes, or leave it as it was.

    The bytes go to a temporary file in the same folder, created with the permissions of any new file (0o666 less
    the umask), flushed and fsynced, then renamed over path. On any error the temporary file is removed; an OSError
    (also one that a writer such as torch.save wrapped in a RuntimeError) becomes a WriteError naming the file (and
    the command-line option it came from, if given), with no chained traceback. The temporary name says which process
    writes it, so the first write of a later process into the folder removes what a killed one left
    (``remove_stale_temporaries``).
    """
    path = Path(path)
    tmp, created = path.with_name(f".{path.name}.{_owner_tag()}-{secrets.token_hex(4)}.tmp"), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_once(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        created = True
        with open(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException as error:
        if created:
            tmp.unlink(missing_ok=True)
        cause = os_error_behind(error) if isinstance(error, (OSError, RuntimeError)) else None
        if cause is not None:
            raise _cannot_write(path, option, cause) from None
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, option: str = "") -> None:
    """``atomic_write`` of bytes."""
    atomic_write(path, lambda handle: handle.write(data), option)


def write_text_atomic(path: str | os.PathLike, text: str, option: str = "") -> None:
    """``atomic_write`` of text, as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"), option)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append text to a log, in place (logs are the exception to atomic writes); a failure is a WriteError."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise _cannot_write(Path(path), "", error, "its earlier lines are kept") from None


def _json_safe(value: object) -> object:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def write_json_atomic(path: str | os.PathLike, data: object, option: str = "") -> None:
    """``atomic_write`` of data as indented JSON (NaN and infinities as null)."""
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n", option)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temporary_folder(path: Path) -> Path:
    """A fresh hidden folder beside path; leftovers of killed runs (their process gone) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            _remove(stale)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    tmp.mkdir()
    return tmp


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename the finished tmp to path; an existing path is moved aside first, and put back if the rename fails."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def hold_output(path: str | os.PathLike, option: str = "", ways_out: str = "",
                lock: Path | None = None) -> Iterator[None]:
    """Be the one process writing the output path (a file or folder) for the block: folder_lock.hold, whose
    FolderBusyError says who holds it; a lock file that cannot be made is a WriteError naming it. ``lock``: see
    folder_lock.hold."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock.hold(path, ways_out, lock))
        except OSError as error:
            raise _cannot_write(lock or folder_lock.lock_path(path), option, error, "nothing was written") from None
        yield


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, option: str = "") -> Iterator[Path]:
    """Build a folder in place of path, as its one writer (hold_output): yields an empty hidden folder beside it,
    which takes path's place (replacing any path there) when the block ends without an error, and is removed
    otherwise.

    An OSError while making or swapping in the folder becomes a WriteError naming it; errors raised in the block
    are passed on as they are.
    """
    path = Path(path)
    with hold_output(path, option, ", or choose another output"):
        try:
            tmp = _temporary_folder(path)
        except OSError as error:
            raise _cannot_write(path, option, error) from None
        try:
            yield tmp
            try:
                _swap_in(tmp, path)
            except OSError as error:
                raise _cannot_write(path, option, error) from None
        finally:
            _remove(tmp)


def exit_quietly_on_broken_pipe(main: Callable[[], int | None]) -> NoReturn:
    """Run a command's main() and exit with its code; a reader that went away
    (``python -m srdensenet.config | head -1``) ends the command quietly with 141, as a shell reports a command
    stopped by SIGPIPE, instead of a BrokenPipeError traceback."""
    try:
        try:
            code = main()
        finally:
            sys.stdout.flush()  # also after SystemExit (argparse --help): the interpreter's own flush would complain
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush has nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code)
