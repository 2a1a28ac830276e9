"""Output files that are never half-written, output folders checked before any work is done, and commands whose
standard output may be closed early (``| head``)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np


class OutputError(ValueError):
    """An output path that cannot be written, with the option and the reason in the message."""


def ensure_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Create folder path if needed and prove it is writable, before hours of work depend on it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write there ({error.strerror or error})") from None
    return path


def _json_safe(value: object) -> object:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def write_text_atomic(path: str | os.PathLike, text: str, option: str = "output") -> None:
    """Write text to a temporary file in the target folder, then rename it over the target."""
    path = Path(path)
    ensure_output_dir(path.parent, option)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{option} {path}: could not write ({error.strerror or error})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: object, option: str = "output") -> None:
    """Write JSON to a temporary file in the target folder, then rename it over the target."""
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n", option)


def exit_quietly_on_broken_pipe(main: Callable[[], int | None]) -> NoReturn:
    """Run a command's main() and exit with its code; a reader that went away (``python config.py | head -1``)
    ends the command quietly with 141, as a shell reports a command stopped by SIGPIPE, instead of a
    BrokenPipeError traceback."""
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
