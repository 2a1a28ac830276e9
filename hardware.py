"""Device and numeric-precision choices shared by training, validation and inference.

"auto" precision means: bf16 autocast on CPUs where bf16 is fast (AMX, ``cpu_bf16_is_fast``), bf16 on CUDA GPUs
that support it, else fp16 on CUDA, else fp32. Weights always stay fp32; autocast only lowers the precision of
convolutions and matmuls.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the CUDA device of this process (LOCAL_RANK under torchrun) when present, else the CPU."""
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


# Choose the CPU class by hand (README, "CPU classes"): 1 = bf16 is fast here (use it for "auto"), 0 = it is not.
FAST_BF16_ENV = "SRDENSENET_FAST_BF16"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where that cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _onednn_isa_allows_amx() -> bool:
    # ONEDNN_MAX_CPU_ISA caps oneDNN's instruction set (e.g. AVX2, AVX512_CORE_BF16): below an *_AMX* level it does
    # not use the tile units even where the CPU has them.
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return isa in ("", "ALL", "DEFAULT") or "AMX" in isa


def cpu_bf16_is_fast() -> bool:
    """True when bf16 convolutions run much faster than fp32 on this CPU, so "auto" picks bf16 autocast.

    That takes AMX (amx_bf16: Intel Xeon Sapphire Rapids and later), where bf16 matmuls run ~5x fp32 (1.3 against
    0.25-0.29 TFLOP/s on 2 cores, benchmarks/bench_inference.py). Without AMX it does not pay, measured with the x4
    paper model on 2 cores: on an Intel Xeon exposing AVX512-BF16 but not AMX, bf16 inference ran at 0.89x and a bf16
    training step at 0.88x the fp32 channels_last speed (bf16 matmul peak 170 GFLOP/s, fp32 330); on an AVX2-only
    AMD EPYC, oneDNN emulates bf16 (~45x slower than fp32). Decided, in order, by ``SRDENSENET_FAST_BF16``
    (1 / 0: choose the CPU class by hand, e.g. to run or time the other class's path on one machine), by
    ``ONEDNN_MAX_CPU_ISA`` capped below AMX, and by the CPU flags.
    """
    override = os.environ.get(FAST_BF16_ENV)
    if override is not None:
        value = override.strip().lower()
        if value not in _TRUE + _FALSE:
            raise ValueError(f"{FAST_BF16_ENV}={override!r}: expected 1 (bf16 is fast here) or 0 (it is not)")
        return value in _TRUE
    return "amx_bf16" in cpu_flags() and _onednn_isa_allows_amx() and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for 'auto' / 'fp32' / 'bf16' / 'fp16' on this device (errors name the option)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_bf16_is_fast() else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (on CPU use bf16 or fp32)")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for dtype; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


@contextlib.contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Turn off TF32 on CUDA while computing in fp32 (scoring, the fp32 inference path), then restore the caller's
    setting.

    cuDNN convolutions default to TF32 on Ampere and later GPUs: that is not fp32 (docs/protocol.md, step 8).
    Measured on an H100 with the x4 model: TF32 moved 5% of the quantised output pixels (max 2.4e-3) against the
    CPU, exact fp32 0.01%. Uses the fp32_precision API of torch >= 2.9 when present (mixing it with the legacy flags
    is an error there), else the legacy allow_tf32 flags.
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
