"""Self-describing, safe checkpoints.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads, so loading an untrusted file
cannot run code. It carries the model's constructor arguments ("arch") and a format version, so
``load_model(path)`` needs no other flags. Resume state (optimiser, scheduler, scaler, RNG states) is stored
as tensors, numbers and lists only. Files are written to a temporary file beside the target and renamed, so a
crash or a full disk never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model import SRDenseNet

FORMAT = "srdensenet-checkpoint"
FORMAT_VERSION = 1
# Wrappers that prefix parameter names: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A weights file that cannot be used, with the path and the reason in the message."""


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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint gets the permissions of any new file
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(f"{path}: could not write checkpoint ({error.strerror or error}); "
                                  "the previous file, if any, is untouched") from error
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, ema_model: nn.Module | None = None,
                    half: bool = False, **state: Any) -> None:
    """Write model weights (and EMA weights, and any resume state given as keywords) atomically.

    ``half=True`` stores weights as fp16 (released models); they load into fp32 models unchanged in shape.
    Typical resume keywords: optimizer, scheduler, scaler (their state_dicts), epoch, step, best_psnr,
    config (a plain dict), rng (capture_rng_state()).
    """
    plain = unwrap_model(model)
    if not isinstance(plain, SRDenseNet):
        raise TypeError(f"expected an SRDenseNet, got {type(plain).__name__}")

    def weights(m: nn.Module) -> dict[str, torch.Tensor]:
        sd = strip_prefixes(unwrap_model(m).state_dict())
        return {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
                for k, v in sd.items()}

    checkpoint = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": dict(plain.arch),
                  "model": weights(plain), "torch_version": str(torch.__version__)}
    if ema_model is not None:
        checkpoint["ema"] = weights(ema_model)
    checkpoint.update(state)
    atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint with weights_only=True; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive: truncated, corrupt, another "
                              f"format, or saved by PyTorch < 1.6)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error) and "Unsupported operand" not in str(error):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt?)") from None
        raise CheckpointError(f"{path}: refused to load: the file holds Python objects beyond tensors and plain "
                              f"data (weights_only=True) and may run code. Only load files you trust, and "
                              f"convert them first. Detail: {str(error).splitlines()[0]}") from None
    except Exception as error:  # torch raises many types for damaged files (EOFError, KeyError, RuntimeError...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        hint = (" It looks like a bare state dict: if it comes from the reference port, convert it with "
                "scripts/convert_port_weights.py." if isinstance(checkpoint, dict) else "")
        raise CheckpointError(f"{path}: not an SRDenseNet checkpoint of this project.{hint}")
    if checkpoint.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format_version']} is newer than this code "
                              f"understands ({FORMAT_VERSION}); update the repository")
    for key in ("arch", "model"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any] | str | os.PathLike, *, prefer_ema: bool = True,
                          source: str = "checkpoint") -> SRDenseNet:
    """Build the checkpoint's model (its own constructor arguments) in fp32, on the CPU, in eval mode.

    EMA weights are used when present and prefer_ema is true: they are the better model for inference.
    """
    if not isinstance(checkpoint, dict):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint)
    try:
        model = SRDenseNet(**checkpoint["arch"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: invalid architecture {checkpoint['arch']}: {error}") from None
    weights = checkpoint["ema"] if prefer_ema and checkpoint.get("ema") else checkpoint["model"]
    load_weights(model, weights, strict=True, source=source)
    return model.float().eval()


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
