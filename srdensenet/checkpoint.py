"""Self-describing, safe checkpoints and weights files.

Two containers, chosen by the file name when writing and by the content when reading:

* ``.pth`` (training checkpoints): a plain dict that ``torch.load(path, weights_only=True)`` reads, so loading an
  untrusted file cannot run code. Resume state (optimiser, scheduler, scaler, RNG states) is stored as tensors,
  numbers and lists only.
* ``.safetensors`` (released weights, hub folders): one set of weights -- the EMA weights when the model had them --
  with the constructor arguments ("arch"), the format version, a SHA-256 of the tensors and any other information
  as JSON strings in the header metadata. Optimiser and RNG state cannot go in; training checkpoints stay ``.pth``.

Either way the file carries the model's constructor arguments and a format version, so ``load_model(path)`` needs no
other flags; ``load_checkpoint`` also reads a folder written by ``scripts/export_hub.py`` (``model.safetensors`` +
``config.json``). Files are written with ``fileio.atomic_write``, so a crash or a full disk never leaves a
half-written checkpoint in place of a good one.

Nothing is built from a file before it passes: its SHA-256 (``weights_sha256`` in a safetensors header, a ``.pth``'s
``contents_sha256`` over every tensor and value; a file without one loads with a one-line note), its tensors
(floating point, finite) and its constructor arguments (limits.py: types, bounds, the parameter count); a pickle that
asks for code is refused by name (weights_checks.py). Each refusal is one CheckpointError line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .fileio import atomic_write, write_bytes_atomic
from .limits import MAX_JSON_BYTES, ArchError, JsonLimitError, check_arch, parse_json
from .model import SRDenseNet
from .weights_checks import (
    CONTENTS_KEY,
    check_weights,
    contents_digest,
    note_unverified,
    pickle_verdict,
    strip_ansi,
)

FORMAT = "srdensenet-checkpoint"
FORMAT_VERSION = 1
# Wrappers that prefix parameter names: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_SUFFIX = ".safetensors"
# A hub folder (scripts/export_hub.py): the names model hubs look for.
HUB_WEIGHTS, HUB_CONFIG = "model.safetensors", "config.json"
# What a release file keeps of the training checkpoint it was exported from (no optimiser or RNG state).
EXPORT_KEEP = ("epoch", "step", "best_psnr", "valid_scores", "config", "world_size")
# Training state that only a .pth checkpoint holds.
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "ema_updates")


class CheckpointError(ValueError):
    """A weights file that cannot be used, with the path and the reason in the message; ``path``: the file or folder
    load_checkpoint was asked for (None when not raised by it)."""

    path: Path | None = None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove 'module.' / '_orig_mod.' prefixes (in any nesting) from every key."""
    clean = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        clean[key] = value
    return clean


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch RNG states as tensors / plain lists (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors as stored (names, dtypes, shapes, bytes): safetensors itself has no checksum, so a
    flipped byte in the data would otherwise load silently."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _metadata_text(value: Any) -> str:
    """A header value: strings as they are (readable in hub viewers) unless they would read back as JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _metadata_value(path: Path, key: str, text: str) -> Any:
    """A header value as written by _metadata_text: JSON when it reads as JSON, else the string itself."""
    try:
        return parse_json(text)
    except JsonLimitError as error:
        raise CheckpointError(f"{path}: metadata {key!r}: {error}") from None
    except ValueError:
        return text


def _save_safetensors(path: Path, weights: dict[str, torch.Tensor], arch: dict, info: dict[str, Any]) -> None:
    metadata = {"format": "pt", "checkpoint_format": FORMAT, "format_version": str(FORMAT_VERSION),
                "arch": json.dumps(arch), "weights_sha256": weights_digest(weights)}
    for key, value in info.items():
        try:
            if key in RESUME_KEYS:  # a fresh optimiser's state is JSON-able, but resuming from it would be wrong
                raise TypeError(key)
            metadata[key] = _metadata_text(value)
        except TypeError:  # tensors, optimiser state dicts, RNG states...
            raise CheckpointError(f"{path}: {key!r} cannot go into a {SAFETENSORS_SUFFIX} weights file, which holds "
                                  f"one set of weights and JSON metadata; training checkpoints with optimiser / RNG "
                                  f"state stay .pth") from None
    data = safetensors.torch.save(weights, metadata=metadata)
    write_bytes_atomic(path, data)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, ema_model: nn.Module | None = None,
                    half: bool = False, **state: Any) -> None:
    """Write model weights (and EMA weights, and any resume state given as keywords) atomically.

    ``half=True`` stores weights as fp16 (released models); they load into fp32 models unchanged in shape.
    Typical resume keywords: optimizer, scheduler, scaler (their state_dicts), epoch, step, best_psnr,
    config (a plain dict), rng (capture_rng_state()).

    A path ending in ``.safetensors`` gets one set of weights, the EMA weights when ``ema_model`` is given
    (``used_ema`` in the metadata), and keywords that JSON can hold; anything else there is a CheckpointError.
    A failed write is a fileio.OutputError and leaves any previous file as it was.
    """
    plain = unwrap_model(model)
    if not isinstance(plain, SRDenseNet):
        raise TypeError(f"expected an SRDenseNet, got {type(plain).__name__}")

    def weights(m: nn.Module) -> dict[str, torch.Tensor]:
        sd = strip_prefixes(unwrap_model(m).state_dict())
        return {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
                for k, v in sd.items()}

    if Path(path).suffix == SAFETENSORS_SUFFIX:
        info = {"torch_version": str(torch.__version__), **({"used_ema": True} if ema_model is not None else {}),
                **state}
        _save_safetensors(Path(path), weights(ema_model if ema_model is not None else plain), dict(plain.arch), info)
        return
    checkpoint = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": dict(plain.arch),
                  "model": weights(plain), "torch_version": str(torch.__version__)}
    if ema_model is not None:
        checkpoint["ema"] = weights(ema_model)
    checkpoint.update(state)
    checkpoint[CONTENTS_KEY] = contents_digest(checkpoint)  # verified by load_checkpoint
    atomic_write(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint: a .pth (weights_only=True), a .safetensors file, or a hub folder.

    Every failure is a CheckpointError naming the file (its ``path`` is ``path``). A safetensors file or folder
    gives the same dict as a .pth holding one set of weights: format, format_version, arch, model, and the header's
    other metadata. The file's SHA-256, its tensors and its arch are checked first (the module docstring).
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _load_folder(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such weights file")
        if path.suffix == SAFETENSORS_SUFFIX or _looks_like_safetensors(path):
            weights, metadata = _read_safetensors(path)
            return _checkpoint_from_metadata(path, weights, metadata)
        if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
            raise CheckpointError(f"{path}: not a PyTorch checkpoint or safetensors file (not a zip archive: "
                                  f"truncated, corrupt, another format, or saved by PyTorch < 1.6)")
        return _load_pth(path)
    except CheckpointError as error:
        error.path = path  # what the caller asked for (training names another checkpoint of the run)
        raise


def _load_pth(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True, then the checks of the module docstring; every failure a CheckpointError
    naming the file."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the verdict below says what matters
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own wording (and advice) changes between versions
        verdict = pickle_verdict(path, strip_ansi(str(error)))
        raise CheckpointError(f"{path}: {verdict or 'not a readable PyTorch checkpoint (corrupt?)'}") from None
    except Exception as error:  # torch raises many types for damaged files (EOFError, KeyError, RuntimeError...)
        detail = strip_ansi(str(error)).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{detail[:200]}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        hint = (" It looks like a bare state dict: if it comes from the reference port, convert it with "
                "scripts/convert_port_weights.py." if isinstance(checkpoint, dict) else "")
        raise CheckpointError(f"{path}: not an SRDenseNet checkpoint of this project.{hint}")
    version = checkpoint.get("format_version", 0)
    if type(version) is not int:
        raise CheckpointError(f"{path}: unreadable format_version {version!r:.40}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this code understands "
                              f"({FORMAT_VERSION}); update the repository")
    for key in ("arch", "model"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    recorded = checkpoint.get(CONTENTS_KEY)
    try:
        actual = contents_digest(checkpoint)  # also refuses nesting no checkpoint of ours has
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if recorded is not None and recorded != actual:
        raise CheckpointError(f"{path}: damaged: its contents do not match the SHA-256 recorded when it was saved")
    _check_contents(path, checkpoint)
    if recorded is None:
        note_unverified(path, "saved without a SHA-256 of its contents (written before checkpoints carried one)")
    return checkpoint


def _check_contents(path: Path, checkpoint: dict[str, Any]) -> None:
    """The arch and the weights, before any model is built."""
    try:
        check_arch(checkpoint["arch"])
    except ArchError as error:
        raise CheckpointError(f"{path}: {error}") from None
    for entry in ("model", "ema"):
        if entry in checkpoint and (entry == "model" or checkpoint[entry]):
            problem = check_weights(checkpoint[entry], entry)
            if problem:
                raise CheckpointError(f"{path}: {problem}")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with the 8-byte little-endian length of a JSON header that follows."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # SafetensorError for a bad header or a file shorter than its header says
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    expected = metadata.get("weights_sha256")
    if expected is not None and weights_digest(weights) != expected:
        raise CheckpointError(f"{path}: the tensors do not match the SHA-256 in the file's header (corrupt?)")
    return weights, metadata


def _checkpoint_from_metadata(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str],
                              arch: dict | None = None) -> dict[str, Any]:
    """The .pth-style dict of a safetensors file, checked; ``arch`` (a hub folder's config.json, already checked)
    stands in for missing metadata."""
    ours = metadata.get("checkpoint_format") == FORMAT
    if not ours and arch is None:
        raise CheckpointError(f"{path}: not an SRDenseNet weights file of this project (its header has no "
                              f"checkpoint_format {FORMAT!r} metadata, so it cannot say which model it holds)")
    try:
        version = int(metadata.get("format_version", "0")) if ours else FORMAT_VERSION
    except ValueError:
        raise CheckpointError(f"{path}: unreadable format_version {metadata.get('format_version')!r}") from None
    info = {k: _metadata_value(path, k, v) for k, v in metadata.items()
            if k not in ("format", "checkpoint_format", "format_version", "weights_sha256")} if ours else {}
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this code understands "
                              f"({FORMAT_VERSION}); update the repository")
    own_arch = info.pop("arch", None)
    checkpoint = {**info, "format": FORMAT, "format_version": version,
                  "arch": own_arch if own_arch is not None else arch, "model": weights}
    _check_contents(path, checkpoint)
    if arch is not None and own_arch is not None and own_arch != arch:
        raise CheckpointError(f"{path}: its header says {own_arch} but {HUB_CONFIG} beside it says {arch}")
    if "weights_sha256" not in metadata:
        note_unverified(path, "holds no SHA-256 of its tensors (weights_sha256 in its header)")
    return checkpoint


def _load_folder(folder: Path) -> dict[str, Any]:
    """A hub folder: model.safetensors, with config.json (the constructor arguments) beside it."""
    weights_path, config_path = folder / HUB_WEIGHTS, folder / HUB_CONFIG
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: a folder of weights must hold {HUB_WEIGHTS} (scripts/export_hub.py "
                              f"writes one), and this one does not")
    arch = None
    if config_path.is_file():
        try:
            if config_path.stat().st_size > MAX_JSON_BYTES:  # refused before it is read
                raise JsonLimitError(f"{config_path.stat().st_size:,} bytes, more than the {MAX_JSON_BYTES:,} "
                                     f"allowed")
            arch = parse_json(config_path.read_bytes())
        except JsonLimitError as error:
            raise CheckpointError(f"{config_path}: {error}") from None
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{config_path}: not readable JSON ({error})") from None
        try:
            check_arch(arch)
        except ArchError as error:
            raise CheckpointError(f"{config_path}: {error}") from None
    weights, metadata = _read_safetensors(weights_path)
    return _checkpoint_from_metadata(weights_path, weights, metadata, arch)


def preferred_weights(checkpoint: dict[str, Any], prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights inference should use: EMA when present and prefer_ema is true, else the raw model's."""
    return checkpoint["ema"] if prefer_ema and checkpoint.get("ema") else checkpoint["model"]


def model_from_checkpoint(checkpoint: dict[str, Any] | str | os.PathLike, *, prefer_ema: bool = True,
                          source: str = "checkpoint") -> SRDenseNet:
    """Build the checkpoint's model (its own constructor arguments) in fp32, on the CPU, in eval mode.

    ``checkpoint``: a dict from load_checkpoint, or a path that it reads (.pth, .safetensors or a hub folder).
    EMA weights are used when present and prefer_ema is true: they are the better model for inference.
    """
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint)
    try:
        model = SRDenseNet(**check_arch(checkpoint["arch"]))  # checked before anything is allocated
    except (TypeError, ValueError) as error:  # ArchError names the field
        raise CheckpointError(f"{source}: {error}") from None
    load_weights(model, preferred_weights(checkpoint, prefer_ema), strict=True, source=source)
    return model.float().eval()


def export_weights(checkpoint: dict[str, Any], output: str | os.PathLike, *, source: str | os.PathLike,
                   half: bool = True) -> SRDenseNet:
    """Write a checkpoint's preferred weights (EMA when present) as a release file without optimiser state.

    Keeps EXPORT_KEEP and records where the weights came from; re-exporting a release (e.g. .pth -> .safetensors)
    keeps its original ``exported_from`` and adds ``converted_from``. Returns the fp32 model that was written.
    """
    model = model_from_checkpoint(checkpoint, prefer_ema=True, source=str(source))
    origin = ({"exported_from": checkpoint["exported_from"], "converted_from": str(source)}
              if "exported_from" in checkpoint else {"exported_from": str(source)})
    extra = {k: checkpoint[k] for k in EXPORT_KEEP if k in checkpoint}
    used_ema = bool(checkpoint.get("ema")) or bool(checkpoint.get("used_ema", False))
    save_checkpoint(output, model, half=half, used_ema=used_ema, **origin, **extra)
    return model


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], *, strict: bool = True,
                 source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Copy weights into model; returns (missing, unexpected) keys. Shape mismatches are errors unless not strict,
    in which case mismatching tensors are skipped and reported as missing."""
    weights = strip_prefixes(weights)
    own = unwrap_model(model).state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if strict and mismatched:
        k = mismatched[0]
        raise CheckpointError(f"{source}: tensor {k} has shape {tuple(weights[k].shape)} but the model expects "
                              f"{tuple(own[k].shape)} (checkpoint of another variant, layout or scale?)")
    usable = {k: v for k, v in weights.items() if k not in mismatched}
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in usable if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{source}: weights do not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]} (checkpoint of another variant or layout?)")
    unwrap_model(model).load_state_dict(usable, strict=False)
    return missing, unexpected
