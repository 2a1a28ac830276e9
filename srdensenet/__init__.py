"""SRDenseNet: Image Super-Resolution Using Dense Skip Connections (Tong et al., ICCV 2017) in PyTorch.

    import srdensenet
    model = srdensenet.load_model()                       # the released x4 weights, eval mode
    sr = srdensenet.upscale(model, rgb_uint8)             # HxWx3 uint8 -> 4Hx4Wx3 uint8 (also grey, alpha, 16-bit)
    srdensenet.upscale_file(model, Path("in.jpg"), Path("out.png"))   # upright, colour profile and EXIF/XMP kept

A program that upscales many images calls ``srdensenet.enable_huge_pages()`` first, before any tensor exists (as the
commands do): PyTorch then backs large CPU tensors with huge pages, which saves a sixth of the time on some machines.

The names below are the public API; they load on first use, so ``import srdensenet`` (and a command's --help) does
not import PyTorch. Everything else lives in the package's modules, one concern each (README, "Layout").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "1.0.0"

# public name -> the module that defines it
_EXPORTS = {
    "SRDenseNet": "model",
    "load_model": "inference",
    "upscale": "inference",
    "predict_y": "inference",
    "upscale_file": "inference",
    "estimate_memory": "inference",
    "Config": "config",
    "PRESETS": "config",
    "default_weights": "released",
    "enable_huge_pages": "system_memory",
    "CheckpointError": "checkpoint",
    "InsufficientMemoryError": "memory",
}

__all__ = ["SRDenseNet", "load_model", "upscale", "predict_y", "upscale_file", "estimate_memory", "Config", "PRESETS",
           "default_weights", "enable_huge_pages", "CheckpointError", "InsufficientMemoryError", "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'srdensenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and editors see; never run
    from .checkpoint import CheckpointError
    from .config import PRESETS, Config
    from .inference import estimate_memory, load_model, predict_y, upscale, upscale_file
    from .memory import InsufficientMemoryError
    from .model import SRDenseNet
    from .released import default_weights
    from .system_memory import enable_huge_pages
