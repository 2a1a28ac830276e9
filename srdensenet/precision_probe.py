"""Whether bf16 pays on this CPU, measured: the rule behind "auto" precision on a CPU (hardware.cpu_auto).

A short probe (well under a second) times bf16 against fp32 on convolutions shaped like the model's, once per machine:
the answer is cached in the user's cache directory (``cache_file``), keyed by everything that changes it (the CPU
model and flags, the thread count, the torch and oneDNN versions, ``ONEDNN_MAX_CPU_ISA``). Where oneDNN can only
emulate bf16 nothing is timed: the answer is fp32. ``SRDENSENET_FAST_BF16=1`` / ``=0`` decides by hand, without a
probe. docs/inference.md ("Precisions") says how to read, re-run or override it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from .config import FALSE_WORDS, TRUE_WORDS
from .fileio import WriteError, write_json_atomic

# The user's choice for this machine (1: bf16 is fast here, 0: it is not); no probe runs.
FAST_BF16_ENV = "SRDENSENET_FAST_BF16"
CACHE_DIR_ENV = "SRDENSENET_CACHE_DIR"  # where the probe's cache lives (default: $XDG_CACHE_HOME/srdensenet)
CACHE_NAME = "bf16_probe.json"
BF16_CACHE_ABOUT = "bf16 probe: fp32 time / bf16 time per machine key"
Answer = TypeVar("Answer")  # a probe's decision (Bf16Probe here, layout_probe.TrainingLayout)
# bf16 only when it is clearly faster: measured ratios of one machine scatter by a few percent, and a choice that
# flips between runs would make runs on one machine differ.
BF16_SPEEDUP_NEEDED = 1.10
# CPU flags with which oneDNN computes bf16 natively (dot products or conversions); without any, it emulates bf16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
# ONEDNN_MAX_CPU_ISA caps below which oneDNN emulates bf16 whatever the CPU has.
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
# The probe's layers, (in maps, out maps, LR side, transposed): a dense-block layer (growth 16 over 128 maps) and an
# upsampling deconvolution (256 -> 256, stride 2), the two kinds of layer that hold nearly all of the model's FLOPs.
PROBE_LAYERS = ((128, 16, 96, False), (256, 256, 24, True))
PROBE_REPEATS = 3  # best of, after one warm-up call


class Bf16Probe(NamedTuple):
    """What "auto" uses on this CPU, and why."""

    decision: str  # "bf16" or "fp32"
    ratio: float | None  # fp32 time / bf16 time on the probe's layers; None where not timed
    source: str  # "measured", "cached", "SRDENSENET_FAST_BF16" or "emulated"
    reason: str = ""  # why, in words (what runs print)

    @property
    def fast(self) -> bool:
        return self.decision == "bf16"

    def record(self) -> dict[str, object]:
        """The decision as run records (meta.json, results JSON) keep it."""
        return {"decision": self.decision, "fp32_over_bf16": self.ratio, "source": self.source, "reason": self.reason}


def decide(ratio: float, source: str) -> Bf16Probe:
    """The decision for a measured fp32/bf16 time ratio (BF16_SPEEDUP_NEEDED)."""
    fast = ratio >= BF16_SPEEDUP_NEEDED
    compared = "at least" if fast else "below"
    return Bf16Probe("bf16" if fast else "fp32", round(ratio, 3), source,
                     f"{source}: bf16 {ratio:.2f}x as fast as fp32, {compared} {BF16_SPEEDUP_NEEDED:.2f}x")


# --------------------------------------------------------------------------------------------------------------------
# What the CPU and this torch build offer
# --------------------------------------------------------------------------------------------------------------------


def cpuinfo_field(name: str) -> str | None:
    """The first value of a /proc/cpuinfo field ("model name", "flags"); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return frozenset((cpuinfo_field("flags") or "").split())


def onednn_version() -> str:
    """The oneDNN (MKL-DNN) version this torch was built with, as torch's build configuration names it."""
    found = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\w.]+)", torch.__config__.show())
    return found.group(1) if found else "none"


def onednn_isa_cap() -> str:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


def bf16_emulated() -> str:
    """Why bf16 would be emulated here ("" where it is native): a CPU without bf16 instructions, oneDNN capped below
    them, or a torch without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return "bf16 emulated (this torch has no oneDNN)"
    if not cpu_flags() & set(NATIVE_BF16_FLAGS):
        return "bf16 emulated (no native bf16 instructions)"
    if onednn_isa_cap() in ISA_CAPS_WITHOUT_BF16:
        return f"bf16 emulated (ONEDNN_MAX_CPU_ISA={onednn_isa_cap()})"
    return ""


# --------------------------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------------------------


def time_layers(layers: tuple[tuple[int, int, int, bool], ...] = PROBE_LAYERS, repeats: int = PROBE_REPEATS,
                ) -> dict[torch.dtype, float]:
    """Seconds per dtype (fp32, bf16) to run ``layers`` once: each layer's best of ``repeats`` after a warm-up call,
    fp32 and bf16 interleaved so that a change in load hits both. channels_last, no autograd, own random numbers."""
    generator = torch.Generator().manual_seed(0)
    total = {torch.float32: 0.0, torch.bfloat16: 0.0}
    with torch.no_grad():
        for maps_in, maps_out, side, transposed in layers:
            x = torch.randn(1, maps_in, side, side, generator=generator).to(memory_format=torch.channels_last)
            w = torch.randn(*((maps_in, maps_out) if transposed else (maps_out, maps_in)), 3, 3, generator=generator)
            run = ((lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)) if transposed
                   else (lambda x, w: F.conv2d(x, w, padding=1)))
            inputs = {dtype: (x.to(dtype), (w / 30).to(dtype)) for dtype in total}
            best = {dtype: math.inf for dtype in total}
            for attempt in range(repeats + 1):
                for dtype, args in inputs.items():
                    start = time.perf_counter()
                    run(*args)
                    if attempt:  # the first call is the warm-up (oneDNN builds its primitive)
                        best[dtype] = min(best[dtype], time.perf_counter() - start)
            for dtype in total:
                total[dtype] += best[dtype]
    return total


def measure() -> Bf16Probe:
    """Time the probe's layers in fp32 and bf16 (``time_layers``) and decide."""
    seconds = time_layers()
    return decide(seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9), "measured")


# --------------------------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------------------------


def cache_file(name: str = CACHE_NAME) -> Path:
    """$SRDENSENET_CACHE_DIR/bf16_probe.json, else under $XDG_CACHE_HOME/srdensenet, else ~/.cache/srdensenet
    (``name``: another probe's file there, layout_probe.py's)."""
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srdensenet"
    return Path(folder) / name


def probe_key() -> dict[str, object]:
    """Everything that changes the answer; a cache entry holds for this key only."""
    flags = " ".join(sorted(cpu_flags()))
    return {"cpu": cpuinfo_field("model name") or "unknown", "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "threads": torch.get_num_threads(), "torch": torch.__version__, "onednn": onednn_version(),
            "onednn_max_cpu_isa": onednn_isa_cap()}


def key_id(key: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_cache(path: Path) -> dict[str, dict]:
    """The cache's entries; an unreadable or malformed file reads as empty (it is measured again and rewritten)."""
    try:
        entries = json.loads(path.read_text()).get("entries")
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def cached_ratio(entry: object, name: str = "fp32_over_bf16") -> float | None:
    """The entry's ratio ``name`` where it is a positive finite number, else None (measured again)."""
    ratio = entry.get(name) if isinstance(entry, dict) else None
    valid = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and ratio > 0
    return float(ratio) if valid else None


def remembered(path: Path, key: dict[str, object], ratio_name: str, about: str, cached: Callable[[float], Answer],
               measure: Callable[[], tuple[Answer, dict[str, object]]]) -> Answer:
    """A probe's answer for ``key``: ``cached(ratio)`` where ``path`` holds a valid ratio ``ratio_name`` for it, else
    ``measure()``'s answer, whose record (the ratio and the decision) is cached with the key and the time."""
    entries = read_cache(path)
    ratio = cached_ratio(entries.get(key_id(key)), ratio_name)
    if ratio is not None:
        return cached(ratio)
    answer, record = measure()
    entries[key_id(key)] = {"key": key, **record, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_cache(path, entries, about)
    return answer


def write_cache(path: Path, entries: dict[str, dict], probe: str) -> None:
    """Write the cache; where it cannot be written, say so once (the decision still holds for this process).
    ``probe``: what the file holds, for a reader."""
    try:
        write_json_atomic(path, {"about": f"SRDenseNet's {probe}; delete this file to measure again",
                                 "entries": entries})
    except WriteError as error:
        kept = f"the {probe.split(':')[0]}'s answer holds for this process only"
        print(f"warning: {error.keeping(kept)}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------------------------------


def env_choice(name: str, meaning: str) -> bool | None:
    """The user's yes or no for this machine in the environment variable ``name`` (1/0, true/false, yes/no, on/off);
    None where it is not set. ValueError naming it for another value; ``meaning`` says what 1 and 0 mean."""
    override = os.environ.get(name)
    if override is None:
        return None
    value = override.strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"{name}={override!r}: expected {meaning}")
    return value in TRUE_WORDS


def bf16_probe() -> Bf16Probe:
    """What "auto" uses on this CPU: SRDENSENET_FAST_BF16 when set (ValueError for a value that is not 1/0), else
    the probe's answer for this process (``probed``)."""
    fast = env_choice(FAST_BF16_ENV, "1 (bf16 is fast here) or 0 (it is not)")
    if fast is None:
        return probed()
    return Bf16Probe("bf16" if fast else "fp32", None, FAST_BF16_ENV, f"{FAST_BF16_ENV}={os.environ[FAST_BF16_ENV]}")


@functools.cache
def probed() -> Bf16Probe:
    """The probe's answer, at most once per process: fp32 where bf16 is emulated (not timed), else the cached
    measurement for this machine's key, else a new measurement (cached)."""
    emulated = bf16_emulated()
    if emulated:
        return Bf16Probe("fp32", None, "emulated", emulated)

    def measured() -> tuple[Bf16Probe, dict[str, object]]:
        probe = measure()
        return probe, {"fp32_over_bf16": probe.ratio, "decision": probe.decision}

    return remembered(cache_file(), probe_key(), "fp32_over_bf16", BF16_CACHE_ABOUT,
                      lambda ratio: decide(ratio, "cached"), measured)
