"""What a weights file must pass before a model is built from it: its contents' SHA-256, its tensors' types and
values, and, for a pickle torch refused, the code it asked for.

* A ``.pth`` checkpoint records CONTENTS_KEY, a SHA-256 of every tensor and value in it (contents_digest), as a
  ``.safetensors`` file records ``weights_sha256``: torch's zip reader checks nothing, so a flipped byte in a tensor
  would otherwise resume a run from garbage. Files written before either carried one load with a one-line note
  (note_unverified).
* Weights must be floating-point tensors (float16, bfloat16, float32, float64) holding finite values (check_weights):
  a NaN would otherwise surface later as "the model output contains NaN", blamed on the image.
* A pickle that asks for a global torch's ``weights_only`` loader does not allow would run code: pickle_verdict
  reads the archive's ``data.pkl`` with pickletools (nothing is executed) and names that global, rather than
  relying on the wording of torch's message, which changes between versions.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import os
import pickletools
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

CONTENTS_KEY = "contents_sha256"
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_NESTING = 64  # our checkpoints nest 5 deep (optimizer/state/0/exp_avg); deeper is not one of ours
MAX_PICKLE_BYTES = 256 * 2**20  # data.pkl holds the structure only (tensors are separate records): ours are KiBs
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_noted: set[str] = set()


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (torch puts some in its messages)."""
    return _ANSI.sub("", text)


def _leaves(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every tensor and plain value, dict entries in the order of their keys' repr."""
    if depth > MAX_NESTING:
        raise ValueError(f"its {where.split('/')[1]} entry is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            yield from _leaves(value[key], f"{where}/{key!r}", depth + 1)
    elif isinstance(value, (list, tuple)):
        yield where, f"{type(value).__name__}[{len(value)}]"  # a list and a tuple of the same items differ
        for index, item in enumerate(value):
            yield from _leaves(item, f"{where}/{index}", depth + 1)
    else:
        yield where, value


def contents_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's entries (all but CONTENTS_KEY): every tensor's path, dtype, shape and bytes, and
    every other value's path, type and repr. Deterministic for the same contents, wherever its tensors are.
    ValueError for nesting deeper than MAX_NESTING."""
    digest = hashlib.sha256()
    for where, leaf in _leaves({k: v for k, v in checkpoint.items() if k != CONTENTS_KEY}, ""):
        if isinstance(leaf, torch.Tensor):
            tensor = leaf.detach().cpu().contiguous()
            digest.update(f"{where}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        else:
            digest.update(f"{where}|{type(leaf).__name__}|{leaf!r}|".encode())
    return digest.hexdigest()


def check_weights(weights: object, entry: str) -> str:
    """"" when ``weights`` is a dict of floating-point tensors with finite values; else what is wrong with them,
    naming ``entry`` ("model", "ema") and the tensor."""
    if not isinstance(weights, Mapping) or not weights:
        return f"its {entry!r} entry is not a dict of tensors"
    for name, tensor in weights.items():
        if not isinstance(name, str):
            return f"its {entry!r} entry has the key {name!r}, not a tensor name"
        if not isinstance(tensor, torch.Tensor):
            return f"{entry} entry {name!r} is a {type(tensor).__name__}, not a tensor"
        if tensor.dtype not in WEIGHT_DTYPES:
            return (f"tensor {name} ({entry}) is {str(tensor.dtype).removeprefix('torch.')}; weights must be "
                    f"float16, bfloat16, float32 or float64")
        if tensor.layout != torch.strided or tensor.device.type != "cpu":
            return f"tensor {name} ({entry}) is not a plain tensor of stored values ({tensor.layout}, {tensor.device})"
        if not bool(torch.isfinite(tensor).all()):
            return f"tensor {name} ({entry}) holds NaN or infinite values; no usable model can be built from it"
    return ""


def note_unverified(path: Path, what: str) -> None:
    """Say once per file and process (rank 0 only under torchrun) that a file has no digest to check it by."""
    key = str(path.resolve())
    if key in _noted or int(os.environ.get("RANK", 0)) != 0:
        return
    _noted.add(key)
    print(f"note: {path}: {what}, so it could not be checked for damage", file=sys.stderr, flush=True)


def pickle_verdict(path: Path, torch_message: str) -> str:
    """Why torch's weights_only loader refused ``path``: "refused: loading it would run code ..." when its pickle
    asks for a global torch does not allow (or uses an operation torch does not run); "" when it does neither
    (a damaged file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            if archive.getinfo(name).file_size > MAX_PICKLE_BYTES:
                return ""
            data = archive.read(name)
    except (OSError, StopIteration, zipfile.BadZipFile, RuntimeError, ValueError):
        return ""
    found = _first_blocked_global(data)
    if found:
        shown = f"{found} (os.{found.split('.', 1)[1]})" if found.split(".")[0] in ("posix", "nt") else found
        return f"refused: loading it would run code (it asks for the global {shown}); nothing in it was executed"
    operand = re.search(r"Unsupported operand (\d+)", torch_message)
    if operand:
        code = pickletools.code2op.get(chr(int(operand.group(1))))
        if code is not None:
            return (f"refused: its pickle uses the operation {code.name}, which plain data never needs; nothing in "
                    f"it was executed")
    return ""


def _allowed_globals() -> set[str]:
    """The globals torch's weights_only loader accepts (its own and any the user added)."""
    try:
        from torch import _weights_only_unpickler as unpickler

        return set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):  # a torch without these: tensors' own globals and plain containers
        return set()


def _python3_name(module: str = "", name: str = "") -> str:
    """module.name as Python 3 imports it: protocol 2 pickles (torch.save's) write some names the Python 2 way
    (__builtin__.eval, commands.Popen), and the unpickler maps them back."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _first_blocked_global(data: bytes) -> str:
    """The first global the pickle asks for that torch does not allow ("" if none), read without running it."""
    allowed = _allowed_globals()
    strings: list[str] = []  # every string pushed, in order (STACK_GLOBAL takes the last two)
    memo: dict[int, str | None] = {}  # the memoised strings (a global's module is often memoised and fetched again)
    top: str | None = None  # the string on top of the stack, if the last push was one
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                index = len(memo) if name == "MEMOIZE" else int(arg)
                memo[index] = top
                continue
            top = str(arg) if name in _STRING_OPS else memo.get(int(arg)) if name.endswith("GET") else None
            if top is not None:
                strings.append(top)
            if name in _GLOBAL_OPS:
                full = _python3_name(*(strings[-2:] if name == "STACK_GLOBAL" else str(arg).split(" ", 1)))
                known = full in allowed if allowed else full.startswith(("torch.", "collections.OrderedDict"))
                if not known:
                    return full
    except ValueError:  # a damaged pickle: what was read before the damage has been looked at
        pass
    return ""
