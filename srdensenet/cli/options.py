"""Option types and advice shared by the commands that run the model (upscale, validate): --tile, --max-memory, and
what to try when an image does not fit in memory. The library's errors carry the facts; the words about flags are here.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory_size(text: str) -> int:
    """'4GB', '512MB', '1.5G', '2GiB', '800000K', '1073741824' -> bytes. Units are binary (1 GB = 2**30 bytes, as
    ``docker -m`` and the JVM read them); a bad value raises ValueError saying what is expected."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+) *([kmgt]?)(i?b)?", str(text).strip(), re.IGNORECASE)
    if match is None or (match.group(2) == "" and (match.group(3) or "").lower() == "ib"):
        raise ValueError(f"expected a size such as 4GB, 512MB or 1.5G, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"expected a positive size such as 4GB, 512MB or 1.5G, got {text!r}")
    return size


def tile_argument(text: str) -> int | str:
    """--tile: 'auto', 0 (untiled) or a tile size in LR pixels (argparse type)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        tile = int(text)
    except ValueError:
        tile = -1
    if tile < 0:
        raise argparse.ArgumentTypeError(f"expected auto, 0 (untiled) or a tile size in LR pixels, got {text!r}")
    return tile


def pixel_count(text: str) -> int:
    """--max-pixels: a whole number of pixels, at least 1 (argparse type)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels such as 100000000, got {text!r}")
    return count


def memory_argument(text: str) -> int:
    """--max-memory: a size such as 4GB, 512MB or 1.5G (argparse type)."""
    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --max-memory of every command, defined here once: what memory.estimate_memory counts (memory.py's docstring).
MAX_MEMORY_HELP = ("what running the model on one image may add to the process's memory, on top of PyTorch and "
                   "the loaded model (~250 MB with the released x4 model on a CPU): its activations, working copies "
                   "of the weights, the image and its colour conversion. --tile auto fits its tiles to it. E.g. 4GB, "
                   "512MB, 1.5G (binary units); default: 80%% of the memory available when the image starts (RAM, "
                   "cgroup limit, ulimit -v, or free GPU memory)")
TILE_HELP = ("LR tile size in pixels; auto (default): untiled when the estimated memory fits --max-memory, else the "
             "largest tile that fits and is worth its time (one that makes the run k times the work must cut the "
             "memory k times); 0: whole image. Tiles overlap by the model's receptive field, so the output is the "
             "same; below twice that field (134 px for the paper model) they mostly recompute their margins")


def size_option(size: int) -> str:
    """Bytes as a --max-memory value, rounded up: '580MB', '2.7GB'."""
    if size < 2**30:
        return f"{math.ceil(size / (10 * 2**20)) * 10}MB"
    return f"{math.ceil(size / (2**30 / 10)) / 10:.1f}GB"


def memory_hint(error) -> str:
    """What to try after a ``memory.InsufficientMemoryError``, as command-line options: a budget that would be met
    when the estimate is over it, a smaller tile worth its time when an allocation failed anyway. No tile below
    those worth their time is proposed (memory.plan_memory)."""
    on_cuda = ", --device cpu" if error.budget.device == "cuda" else ""
    if error.cause is None:
        if error.smaller is not None:
            sizes = (f"{size_option(error.smaller[1])} (tiles of {error.smaller[0]}) or {size_option(error.needed)} "
                     f"(untiled)")
        else:
            sizes = size_option(error.needed)
        return f"try --max-memory {sizes} if that much memory is free{on_cuda}, or a smaller image"
    if error.smaller is not None:
        return f"try --tile {error.smaller[0]} (less memory, slower){on_cuda} or a smaller image"
    return f"free some memory{on_cuda} or try a smaller image"


def missing_package(what: str, packages: tuple[str, ...]) -> str | None:
    """The message for ``what`` when an optional package it needs is not installed (None when all are): the
    smallest install that brings them (pyproject.toml's extras hold the same: srdensenet[onnx], [photos])."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{what} needs the optional package{'s' if len(missing) > 1 else ''} {' and '.join(missing)}: "
            f"pip install {' '.join(packages)}")
