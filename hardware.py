"""Device and numeric-precision choices shared by training, validation and inference.

"auto" precision means: bf16 autocast on CPUs with native bf16 instructions (AVX512-BF16 / AMX: oneDNN then runs
bf16 convolutions 2.5-5x faster than fp32, GUIDE §4), bf16 on CUDA GPUs that support it, else fp16 on CUDA,
else fp32. Weights always stay fp32; autocast only lowers the precision of convolutions and matmuls.
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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 arithmetic natively (otherwise bf16 is emulated and slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for 'auto' / 'fp32' / 'bf16' / 'fp16' on this device (errors name the option)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
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

    cuDNN convolutions default to TF32 on Ampere and later GPUs: that is not fp32 (GUIDE §1 step 8). Measured on an
    H100 with the x4 model: TF32 moved 5% of the quantised output pixels (max 2.4e-3) against the CPU, exact fp32
    0.01%. Uses the fp32_precision API of torch >= 2.9 when present (mixing it with the legacy flags is an error
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
