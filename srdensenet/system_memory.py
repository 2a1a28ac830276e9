"""The system's memory: what this process may use now, giving freed heap back, and huge pages for large tensors.

* ``memory_budget``: BUDGET_FRACTION (80%) of the memory available now -- MemAvailable, the cgroup limit's room,
  RLIMIT_AS / RLIMIT_DATA less the address space in use, or free CUDA memory -- or exactly ``max_memory`` bytes.
* ``release_free_heap``: gives glibc's free heap pages back, so a long run's memory stays flat.
* ``enable_huge_pages``: PyTorch's transparent huge pages for large CPU tensors, asked for before the first tensor.

Nothing here knows the model; memory.py plans inference within the budget. Importing this module changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is 1. Otherwise every fresh 4 KB page
# of an activation is a page fault: ~600,000 per 256x256 x4 image, a sixth of its time on a 2-core VM
# (docs/inference.md, "Huge pages"). PyTorch reads it once, at the process's first tensor allocation.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> None:
    """Turn PyTorch's huge-page allocation on for this process and its children, unless the user set
    THP_MEM_ALLOC_ENABLE (0 keeps it off). It takes effect only before the process's first tensor, so the commands
    call it first thing; a program using the library calls it at its start (``srdensenet.enable_huge_pages()``)."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")

# --------------------------------------------------------------------------------------------------------------------
# Memory available now (the budget automatic tiling fits its estimate into)
# --------------------------------------------------------------------------------------------------------------------

# The fraction of the memory available that "auto" may plan for: room for other processes and the estimate's error.
BUDGET_FRACTION = 0.8
# Address space glibc reserves per malloc arena (one per busy thread): counted by RLIMIT_AS, never resident.
ARENA_BYTES = 64 * 2**20
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as ~2**63; anything this large is no limit


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """What automatic tiling may use on a device (``device``: its type, "cpu" or "cuda"): ``budget`` bytes, from
    ``available`` bytes reported by ``source`` (None: nothing could be read, no limit known)."""

    budget: int | None
    available: int | None
    source: str
    device: str = "cpu"

    def describe(self) -> str:
        if self.budget is None:
            return "no memory limit could be read"
        if self.source == "max_memory":
            return f"the budget is {format_bytes(self.budget)} (max_memory)"
        return (f"the budget is {format_bytes(self.budget)}, {BUDGET_FRACTION:.0%} of the "
                f"{format_bytes(self.available)} available ({self.source})")


def format_bytes(size: float) -> str:
    """Bytes in the binary units config.parse_memory_size reads: '4.0 GiB', '512 MiB'."""
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


def rlimit_available(status: Path = Path("/proc/self/status")) -> tuple[int, str] | None:
    """Room left under RLIMIT_AS (``ulimit -v``, against the address space VmSize, less one malloc arena per thread)
    or RLIMIT_DATA (``ulimit -d``, against VmData), whichever is smaller; None when neither is set."""
    import resource

    import torch  # here, as below: importing this module must not load PyTorch (the commands' --help)

    room = []
    arenas = ARENA_BYTES * (torch.get_num_threads() + 1)
    for limit_name, usage_name, label in (("RLIMIT_AS", "VmSize", "RLIMIT_AS, ulimit -v"),
                                          ("RLIMIT_DATA", "VmData", "RLIMIT_DATA, ulimit -d")):
        soft = resource.getrlimit(getattr(resource, limit_name))[0]
        if soft != resource.RLIM_INFINITY and soft >= 0:
            used = _stat_field(status, f"{usage_name}:") * 1024  # "VmSize:   952360 kB"
            room.append((max(0, soft - used - arenas), label))
    return min(room) if room else None


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes this process can still allocate on ``device`` now, where that number comes from); (None, ...) when
    nothing can be read. CUDA: free device memory plus what PyTorch's caching allocator holds unused. CPU: the
    smallest of MemAvailable, the cgroup limit's room and the rlimits' room."""
    if device.type == "cuda":
        import torch

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
        return MemoryBudget(int(max_memory), int(max_memory), "max_memory", device.type)
    available, source = available_memory(device)
    if available is None:
        return MemoryBudget(None, None, source, device.type)
    return MemoryBudget(int(available * BUDGET_FRACTION), available, source, device.type)


# --------------------------------------------------------------------------------------------------------------------
# Returning freed heap memory (glibc)
# --------------------------------------------------------------------------------------------------------------------

# Free heap bytes above which release_free_heap gives pages back (below it the next image reuses them).
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
    whether it did (default limit: FREE_HEAP_LIMIT).

    glibc keeps freed blocks under its mmap threshold (up to 32 MiB) in the heap; with activations of ever-changing
    sizes its free part grows by fragments, which a long inference process would read as growth. Inference calls this
    after each image and between tiles.
    """
    free = free_heap_bytes()
    if free is None or free <= (FREE_HEAP_LIMIT if limit is None else limit):
        return False
    _glibc().malloc_trim(0)
    return True
