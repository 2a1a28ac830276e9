"""Devices and numeric precision, shared by training, validation and inference.

The precision table below is the one place that names the precisions and says what "auto" means on each device, for
training and for inference; on a CPU it follows a measurement (precision_probe.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from . import precision_probe
from .choices import TRAINING_PRECISIONS


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """None / 'auto' -> the CUDA device of this process (LOCAL_RANK under torchrun) when present, else the CPU.
    ValueError names a device that is not one or is not available."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def cpu_bf16_is_fast() -> bool:
    """True when "auto" picks bf16 on this CPU: SRDENSENET_FAST_BF16 when set, else the measured probe
    (precision_probe.bf16_probe; fp32 where bf16 is emulated)."""
    return precision_probe.bf16_probe().fast


# --------------------------------------------------------------------------------------------------------------------
# Precision: the one table
# --------------------------------------------------------------------------------------------------------------------


class Precision(NamedTuple):
    dtype: torch.dtype  # what convolutions compute in (training: autocast in dtype)
    inference: str  # what inference runs under this name (runners.py)


# Every precision by name (choices.py names them, and which are offered for training). "fp32-cl" is inference only:
# the fast path in fp32 (channels_last); "fp32" there is the eager reference.
PRECISIONS = {
    "fp32": Precision(torch.float32, inference="fp32 (reference)"),
    "fp32-cl": Precision(torch.float32, inference="fast path fp32"),
    "bf16": Precision(torch.bfloat16, inference="fast path bf16"),
    "fp16": Precision(torch.float16, inference="fast path fp16"),
}


class Auto(NamedTuple):
    """What "auto" precision resolves to on a device: a training precision and an inference precision."""

    training: str
    inference: str


def cuda_auto() -> Auto:
    # Tensor cores either way: training takes bf16's range (no loss scaling) where the GPU has it, inference fp16's
    # 3 more mantissa bits at the same speed.
    return Auto(training="bf16" if torch.cuda.is_bf16_supported() else "fp16", inference="fp16")


def cpu_auto() -> Auto:
    # bf16 only where the probe measured it clearly faster; else fp32, which inference runs on the fast path
    # (channels_last).
    return Auto(training="bf16", inference="bf16") if cpu_bf16_is_fast() else Auto(training="fp32", inference="fp32-cl")


# device type -> rule giving "auto" for (training, inference)
AUTO_PRECISION: dict[str, Callable[[], Auto]] = {
    "cuda": cuda_auto,  # (bf16, or fp16 without bf16 support; fp16)
    "cpu": cpu_auto,  # (bf16; bf16) where bf16 measured >= 1.10x fp32's speed, else (fp32; fp32-cl)
}
AUTO_FALLBACK = Auto(training="fp32", inference="fp32-cl")  # any other device type


def auto_precision(device: torch.device) -> Auto:
    """What "auto" means on ``device`` (AUTO_PRECISION)."""
    rule = AUTO_PRECISION.get(device.type)
    return rule() if rule is not None else AUTO_FALLBACK


def auto_probe(device: torch.device) -> precision_probe.Bf16Probe | None:
    """The measured decision behind "auto" on ``device`` (None where "auto" is a fixed rule: CUDA, other devices),
    for runs to show and record."""
    return precision_probe.bf16_probe() if device.type == "cpu" else None


def check_precision(precision: str, device: torch.device, names: tuple[str, ...]) -> None:
    """ValueError naming the option for a precision not in ``names``, or fp16 off CUDA."""
    if precision not in names:
        raise ValueError(f"precision must be one of {', '.join(names)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (on a CPU use bf16 or fp32)")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The training compute dtype for a TRAINING_PRECISIONS name on this device ("auto": AUTO_PRECISION)."""
    check_precision(precision, device, TRAINING_PRECISIONS)
    if precision == "auto":
        precision = auto_precision(device).training
    return PRECISIONS[precision].dtype


def precision_name(dtype: torch.dtype) -> str:
    """The training precision of a dtype: 'fp32', 'bf16' or 'fp16'."""
    return next(name for name in TRAINING_PRECISIONS[1:] if PRECISIONS[name].dtype == dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for dtype; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Turn off TF32 on CUDA while computing in fp32 (scoring, the fp32 inference path), then restore the caller's
    setting.

    cuDNN runs fp32 convolutions in TF32 on Ampere and later GPUs by default, which is not fp32 (docs/protocol.md,
    step 8). Uses the fp32_precision API of torch >= 2.9 when present (mixing it with the legacy flags is an error
    there), else the legacy allow_tf32 flags.
    """
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved
