"""Option types and advice shared by the commands that run the model (upscale, validate): --tile, --max-memory, and
what to try when an image does not fit in memory. The library's errors carry the facts; the words about flags are here.
"""

from __future__ import annotations

import argparse
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


def memory_argument(text: str) -> int:
    """--max-memory: a size such as 4GB, 512MB or 1.5G (argparse type)."""
    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def memory_hint(error) -> str:
    """What to try after a ``memory.InsufficientMemoryError``, as command-line options."""
    smaller = max(8, (error.tile or max(error.size)) // 2)
    budget = "--max-memory SIZE (if the budget is too cautious)" if error.cause is None else "a lower --max-memory"
    on_cuda = ", --device cpu" if error.budget.device == "cuda" else ""
    return f"try --tile {smaller} (less memory, slower), {budget}{on_cuda} or a smaller image"
