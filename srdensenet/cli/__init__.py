"""The ``srdensenet`` console command: one subcommand per top-level script, each the same options.

    srdensenet upscale photo.jpg -o out/          # = python inference.py -i photo.jpg -o out/
    srdensenet validate --weights W --valid-dirs data/Set5
    srdensenet train --preset demo
    srdensenet prepare-data --preset demo
    srdensenet export-onnx --output x4.onnx

A subcommand's module is imported only when it runs, so ``srdensenet --help`` loads no PyTorch.
Ctrl-C and SIGTERM end a command with one line (``Stopped``, ``stoppable``); exit codes: docs/errors.md.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ..system_memory import enable_huge_pages

# subcommand -> (module under srdensenet.cli, the clone's script, one line of help)
COMMANDS = {
    "upscale": ("upscale", "inference.py", "upscale photos (the released x4 weights unless --weights)"),
    "validate": ("validate", "validate.py", "score a model or bicubic on benchmark sets (PSNR / SSIM on Y)"),
    "train": ("train", "train.py", "train a model from a preset and overrides"),
    "prepare-data": ("prepare_data", "prepare_dataset.py", "build a preset's data, sub-images or LMDBs"),
    "export-onnx": ("export_onnx", "export_onnx.py", "export weights to ONNX, checked against PyTorch"),
}


# Exit codes of every command (docs/errors.md, "Exit codes").
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised where the command was working (``stoppable``). A KeyboardInterrupt, so
    every clean-up that runs on Ctrl-C (temporary files and folders removed) runs on SIGTERM too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def code(self) -> int:
        """The exit code a shell gives a command its signal ended: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum

    @property
    def what(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise Stopped in this thread (the main one; elsewhere nothing changes), so
    the command can clean up and say in one line what was done; the previous handlers come back after it.

    Only the first signal is raised: one that comes while the command is cleaning up and saying so is ignored, so
    the clean-up is not cut short (SIGKILL still ends it). Worker processes forked inside the block inherit the
    handler: they ignore SIGINT (a Ctrl-C at a terminal reaches every process of the group; the command that
    started them winds them down rather than each printing a traceback) and end on SIGTERM as by default (a
    process pool terminates the workers of a broken pool so).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, stopping = os.getpid(), False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if os.getpid() != owner:  # a forked worker
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if stopping:
            return
        stopping = True
        raise Stopped(signum)

    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def rank_zero() -> bool:
    """Whether this process speaks for the command: under torchrun only rank 0 prints errors and the last line, the
    others would repeat them (read from the environment, before any process group exists, without PyTorch)."""
    return int(os.environ.get("RANK", 0)) == 0


def usage() -> str:
    lines = ["usage: srdensenet COMMAND [options]   (srdensenet COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:13s} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    enable_huge_pages()  # before the first tensor of the command (PyTorch reads it once)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nsrdensenet: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    return module.main(rest, prog=f"srdensenet {name}")


def run_script(module_name: str) -> None:
    """A top-level script's body: run ``module_name``'s main() and exit with its code (quietly when stdout closes)."""
    enable_huge_pages()  # before the first tensor of the command (PyTorch reads it once)
    module = importlib.import_module(f"{__name__}.{module_name}")
    from ..fileio import exit_quietly_on_broken_pipe

    exit_quietly_on_broken_pipe(module.main)


def entry() -> None:
    """The console command (pyproject.toml's [project.scripts])."""
    from ..fileio import exit_quietly_on_broken_pipe

    exit_quietly_on_broken_pipe(main)
