"""The ``srdensenet`` console command: one subcommand per top-level script, each the same options.

    srdensenet upscale photo.jpg -o out/          # = python inference.py -i photo.jpg -o out/
    srdensenet validate --weights W --valid-dirs data/Set5
    srdensenet train --preset demo
    srdensenet prepare-data --preset demo
    srdensenet export-onnx --output x4.onnx

A subcommand's module is imported only when it runs, so ``srdensenet --help`` loads no PyTorch.
"""

from __future__ import annotations

import importlib
import sys

from ..system_memory import enable_huge_pages

# subcommand -> (module under srdensenet.cli, the clone's script, one line of help)
COMMANDS = {
    "upscale": ("upscale", "inference.py", "upscale photos (the released x4 weights unless --weights)"),
    "validate": ("validate", "validate.py", "score a model or bicubic on benchmark sets (PSNR / SSIM on Y)"),
    "train": ("train", "train.py", "train a model from a preset and overrides"),
    "prepare-data": ("prepare_data", "prepare_dataset.py", "build a preset's data, sub-images or LMDBs"),
    "export-onnx": ("export_onnx", "export_onnx.py", "export weights to ONNX, checked against PyTorch"),
}


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
