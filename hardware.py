"""Devices, CPU features and numeric precision, shared by training, validation and inference.

The precision table below is the one place that names the precisions and says what "auto" means on each device, for
training and for inference.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch


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
    """True when bf16 convolutions run much faster than fp32 on this CPU: it has AMX (amx_bf16).

    Without AMX bf16 does not pay: oneDNN emulates it on AVX2-only CPUs, and with AVX512-BF16 alone it runs slower
    than fp32 (docs/inference.md, "Precisions"). Decided, in order, by ``SRDENSENET_FAST_BF16`` (1 / 0: choose the
    CPU class by hand, e.g. to run the other class's path on one machine), by ``ONEDNN_MAX_CPU_ISA`` capped below
    AMX, and by the CPU flags.
    """
    override = os.environ.get(FAST_BF16_ENV)
    if override is not None:
        value = override.strip().lower()
        if value not in _TRUE + _FALSE:
            raise ValueError(f"{FAST_BF16_ENV}={override!r}: expected 1 (bf16 is fast here) or 0 (it is not)")
        return value in _TRUE
    return "amx_bf16" in cpu_flags() and _onednn_isa_allows_amx() and torch.backends.mkldnn.is_available()


# --------------------------------------------------------------------------------------------------------------------
# Precision: the one table
# --------------------------------------------------------------------------------------------------------------------


class Precision(NamedTuple):
    dtype: torch.dtype  # what convolutions compute in
    training: bool  # offered for training (autocast in dtype)
    inference: str  # what inference runs under this name (runners.py)


# Every precision by name. "fp32-cl" is inference only: the fast path in fp32 (channels_last); "fp32" there is the
# eager reference.
PRECISIONS = {
    "fp32": Precision(torch.float32, training=True, inference="fp32 (reference)"),
    "fp32-cl": Precision(torch.float32, training=False, inference="fast path fp32"),
    "bf16": Precision(torch.bfloat16, training=True, inference="fast path bf16"),
    "fp16": Precision(torch.float16, training=True, inference="fast path fp16"),
}
TRAINING_PRECISIONS = ("auto", *(name for name, p in PRECISIONS.items() if p.training))
INFERENCE_PRECISIONS = ("auto", *PRECISIONS)


class Auto(NamedTuple):
    """What "auto" precision resolves to on a device: a training precision and an inference precision."""

    training: str
    inference: str


def cuda_auto() -> Auto:
    # Tensor cores either way: training takes bf16's range (no loss scaling) where the GPU has it, inference fp16's
    # 3 more mantissa bits at the same speed.
    return Auto(training="bf16" if torch.cuda.is_bf16_supported() else "fp16", inference="fp16")


def cpu_auto() -> Auto:
    # bf16 only where it is fast (AMX); else fp32, which inference runs on the fast path (channels_last).
    return Auto(training="bf16", inference="bf16") if cpu_bf16_is_fast() else Auto(training="fp32", inference="fp32-cl")


# device type -> rule giving "auto" for (training, inference)
AUTO_PRECISION: dict[str, Callable[[], Auto]] = {
    "cuda": cuda_auto,  # (bf16, or fp16 without bf16 support; fp16)
    "cpu": cpu_auto,  # (bf16; bf16) with AMX, else (fp32; fp32-cl)
}
AUTO_FALLBACK = Auto(training="fp32", inference="fp32-cl")  # any other device type


def auto_precision(device: torch.device) -> Auto:
    """What "auto" means on ``device`` (AUTO_PRECISION)."""
    rule = AUTO_PRECISION.get(device.type)
    return rule() if rule is not None else AUTO_FALLBACK


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


# --------------------------------------------------------------------------------------------------------------------
# Memory available now (the budget automatic tiling fits its estimate into)
# --------------------------------------------------------------------------------------------------------------------

# The budget is this fraction of the memory available: room for other processes, for the allocator's slack and for
# the estimate's own error (inference.estimate_memory is calibrated to exceed every measured peak, not by much).
BUDGET_FRACTION = 0.8
# glibc reserves 64 MiB of address space per malloc arena (one per busy thread) and 8 MiB per thread stack: counted
# by RLIMIT_AS although never resident. Measured with 2 threads: VmPeak grew 80-136 MiB more than the peak RSS.
ARENA_BYTES = 64 * 2**20
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as ~2**63; anything this large is no limit


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """What automatic tiling may use: ``budget`` bytes, from ``available`` bytes reported by ``source`` (None:
    nothing could be read, no limit known)."""

    budget: int | None
    available: int | None
    source: str

    def describe(self) -> str:
        if self.budget is None:
            return "no memory limit could be read"
        if self.source == "max_memory":
            return f"the budget is {format_bytes(self.budget)} (--max-memory)"
        return (f"the budget is {format_bytes(self.budget)}, {BUDGET_FRACTION:.0%} of the "
                f"{format_bytes(self.available)} available ({self.source})")


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


def format_bytes(size: float) -> str:
    """Bytes in the binary units parse_memory_size reads: '4.0 GiB', '512 MiB'."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}" if unit == "GiB" else f"{size / factor:.0f} {unit}"
    return f"{size:.0f} B"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            words = line.split()  # "MemAvailable:  24169928 kB", "inactive_file 4096"
            if len(words) >= 2 and words[0] == name and words[1].isdigit():
                return int(words[1])
    except OSError:
        pass
    return 0


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable: what the kernel can give without swapping (free memory plus reclaimable page cache)."""
    return _stat_field(meminfo, "MemAvailable:") * 1024 or None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and cgroup v1 memory-controller path (None where absent)."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The room left under this process's cgroup memory limit (v2 memory.max at every level up to the root, or v1
    memory.limit_in_bytes), counting reclaimable page cache (inactive_file) as free, as the kernel does before OOM."""
    v2, v1 = _cgroup_paths(proc_cgroup)
    room = []
    if v1 is not None:
        folder = root / "memory" / v1.lstrip("/")
        folder = folder if folder.is_dir() else root / "memory"  # a cgroup namespace shows its own root
        limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
        if limit is not None and usage is not None and limit < _UNLIMITED:
            room.append(limit - usage + _stat_field(folder / "memory.stat", "total_inactive_file"))
    if v2 is not None:
        folder = root / v2.lstrip("/")
        while True:
            limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            if limit is not None and usage is not None:  # "max" (no limit) is not a number
                room.append(limit - usage + _stat_field(folder / "memory.stat", "inactive_file"))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return max(0, min(room)) if room else None


def _status_bytes(name: str) -> int:
    return _stat_field(Path("/proc/self/status"), f"{name}:") * 1024  # "VmSize:   952360 kB"


def rlimit_available() -> tuple[int, str] | None:
    """Room left under RLIMIT_AS (``ulimit -v``, against the address space VmSize, less one malloc arena per thread)
    or RLIMIT_DATA (``ulimit -d``, against VmData), whichever is smaller; None when neither is set."""
    import resource

    room = []
    arenas = ARENA_BYTES * (torch.get_num_threads() + 1)
    for limit_name, usage_name, label in (("RLIMIT_AS", "VmSize", "RLIMIT_AS, ulimit -v"),
                                          ("RLIMIT_DATA", "VmData", "RLIMIT_DATA, ulimit -d")):
        soft = resource.getrlimit(getattr(resource, limit_name))[0]
        if soft != resource.RLIM_INFINITY and soft >= 0:
            room.append((max(0, soft - _status_bytes(usage_name) - arenas), label))
    return min(room) if room else None


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes this process can still allocate on ``device`` now, where that number comes from); (None, ...) when
    nothing can be read. CUDA: free device memory plus what PyTorch's caching allocator holds unused. CPU: the
    smallest of MemAvailable, the cgroup limit's room and the rlimits' room."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, "free CUDA memory"
    candidates = []
    meminfo = meminfo_available()
    if meminfo is not None:
        candidates.append((meminfo, "MemAvailable"))
    cgroup = cgroup_available()
    if cgroup is not None:
        candidates.append((cgroup, "cgroup memory limit"))
    rlimit = rlimit_available()
    if rlimit is not None:
        candidates.append(rlimit)
    return min(candidates) if candidates else (None, "unknown")


def memory_budget(device: torch.device, max_memory: int | None = None) -> MemoryBudget:
    """BUDGET_FRACTION of ``available_memory(device)``, or ``max_memory`` bytes exactly when given."""
    if max_memory is not None:
        if max_memory <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
        return MemoryBudget(int(max_memory), int(max_memory), "max_memory")
    available, source = available_memory(device)
    if available is None:
        return MemoryBudget(None, None, source)
    return MemoryBudget(int(available * BUDGET_FRACTION), available, source)


# ---- returning freed heap memory (glibc) -----------------------------------------------------------------------------

# Free heap bytes above which release_free_heap gives pages back. glibc keeps freed blocks under its mmap threshold
# (up to 32 MiB) in the heap; with activations of ever-changing sizes the heap's free part grows by fragments until it
# plateaus, which a long inference process reads as growth. Below this the next image reuses them.
FREE_HEAP_LIMIT = 64 * 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None:
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
                libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        return None
    return libc


def free_heap_bytes() -> int | None:
    """Bytes glibc holds free in its heaps (mallinfo2's fordblks), or None where that cannot be read."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


def release_free_heap(limit: int | None = None) -> bool:
    """Give glibc's free heap pages back to the system (malloc_trim) when more than ``limit`` bytes are free; returns
    whether it did (default limit: FREE_HEAP_LIMIT). Called after each image by inference, so a long run's memory
    stays flat."""
    free = free_heap_bytes()
    if free is None or free <= (FREE_HEAP_LIMIT if limit is None else limit):
        return False
    _glibc().malloc_trim(0)
    return True
