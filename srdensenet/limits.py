"""What a file may ask for before anything is built or parsed: the model's sizes and the JSON it carries.

A weights file, a hub ``config.json`` or a run's configuration names the SRDenseNet constructor arguments; read
unchecked, ``growth_rate=0`` divides by zero, ``num_blocks=-3`` asks for a negative dimension and
``bottleneck_features=1e6`` for terabytes. ``check_arch`` refuses such values before a layer exists:

* ``upscale_factor`` one of 2, 3, 4, 8; ``variant`` and ``layout`` one of choices.py's names;
* every size an int (not a bool, not a float) from 1 to its bound in ARCH_BOUNDS, which lie far above the paper's
  (num_blocks 8 -> 64, layers_per_block 8 -> 64, growth_rate 16 -> 256, num_features 128 -> 1024,
  bottleneck_features 256 -> 2048);
* the whole model at most MAX_PARAMETERS (100 million, about 38 times the paper's x4 SRDenseNet_All, 400 MB in fp32),
  counted from the arguments, since sizes each within bounds can still multiply into billions;
* no field the constructor does not know.

``parse_json`` refuses JSON longer than MAX_JSON_BYTES (1 MiB) or nested deeper than MAX_JSON_DEPTH (32) before
``json.loads`` sees it (which would recurse until RecursionError). Loads without PyTorch (config.py uses it).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .choices import LAYOUTS, SCALES, VARIANTS

ARCH_BOUNDS = {"num_blocks": 64, "layers_per_block": 64, "growth_rate": 256, "num_features": 1024,
               "bottleneck_features": 2048}
ARCH_FIELDS = ("upscale_factor", "variant", "layout", *ARCH_BOUNDS)
MAX_PARAMETERS = 100_000_000
MAX_JSON_BYTES = 2**20
MAX_JSON_DEPTH = 32
# The constructor's defaults (model.py): a file may leave a field out, and is then counted with these.
PAPER_SIZES = {"upscale_factor": 4, "variant": "all", "layout": "paper", "num_blocks": 8, "layers_per_block": 8,
               "growth_rate": 16, "num_features": 128, "bottleneck_features": 256}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]")


class ArchError(ValueError):
    """Constructor arguments that cannot make a sensible model; ``field`` names the one at fault ("" for the
    parameter count)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class JsonLimitError(ValueError):
    """JSON too large or too deeply nested to parse."""


def _describe(value: object) -> str:
    kind = {bool: "a boolean", str: "a string", float: "a float"}.get(type(value))
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{shown} ({kind})" if kind else shown


def check_arch(arch: object) -> dict[str, Any]:
    """``arch`` itself when it is a dict of sensible SRDenseNet constructor arguments; else ArchError naming the
    field (its message reads "arch field 'growth_rate' must be an integer from 1 to 256, got 0")."""
    if not isinstance(arch, dict):
        raise ArchError("", f"arch must be a dict of constructor arguments, got {type(arch).__name__}")
    for name in arch:
        if name not in ARCH_FIELDS:
            raise ArchError(str(name), f"arch field {name!r} is unknown (the fields: {', '.join(ARCH_FIELDS)})")
    choices = {"upscale_factor": SCALES, "variant": VARIANTS, "layout": LAYOUTS}
    for name, allowed in choices.items():
        value = arch.get(name, PAPER_SIZES[name])
        if type(value) is not type(allowed[0]) or value not in allowed:
            listed = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
            raise ArchError(name, f"arch field {name!r} must be {listed}, got {_describe(value)}")
    for name, bound in ARCH_BOUNDS.items():
        value = arch.get(name, PAPER_SIZES[name])
        if type(value) is not int or not 1 <= value <= bound:
            raise ArchError(name, f"arch field {name!r} must be an integer from 1 to {bound}, got {_describe(value)}")
    count = parameter_count(arch)
    if count > MAX_PARAMETERS:
        raise ArchError("", f"arch sizes make a model of {count:,} parameters, above the limit of {MAX_PARAMETERS:,} "
                            f"(the paper's x4 model has {parameter_count(PAPER_SIZES):,})")
    return arch


def parameter_count(arch: dict[str, Any]) -> int:
    """The parameters SRDenseNet(**arch) would have, counted without building it (model.py's layers)."""
    a = {**PAPER_SIZES, **arch}
    features, growth, layers, width = a["num_features"], a["growth_rate"], a["layers_per_block"], \
        a["bottleneck_features"]
    block_out = layers * growth
    if a["variant"] == "all":
        inputs = [features + i * block_out for i in range(a["num_blocks"])]
        reconstruction_in = features + a["num_blocks"] * block_out
    else:
        inputs = [features] + [block_out] * (a["num_blocks"] - 1)
        reconstruction_in = block_out + (features if a["variant"] == "hl" else 0)
    count = 10 * features  # the low-level 3x3 conv from one channel, and its biases
    for channels in inputs:
        count += sum((channels if j == 0 else growth * j) * growth * 9 + growth for j in range(layers))
    count += reconstruction_in * width + width
    strides = [3] if a["upscale_factor"] == 3 else [2] * {2: 1, 4: 2, 8: 3}[a["upscale_factor"]]
    kernel = 2 if a["layout"] == "port" else 3  # the port's x2 deconvolutions are 2x2
    count += sum(width * width * (kernel if s == 2 else 3) ** 2 + width for s in strides)
    return count + width * 9 + 1


def parse_json(text: str | bytes) -> Any:
    """json.loads, after refusing text above MAX_JSON_BYTES or nested deeper than MAX_JSON_DEPTH (JsonLimitError).
    Malformed JSON is json's own ValueError."""
    if len(text) > MAX_JSON_BYTES:
        raise JsonLimitError(f"{len(text):,} bytes of JSON, more than the {MAX_JSON_BYTES:,} allowed")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = deepest = 0
    for bracket in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):  # brackets outside strings, in order
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise JsonLimitError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return json.loads(text)
