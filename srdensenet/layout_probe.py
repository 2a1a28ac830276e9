"""Whether channels_last trains faster than NCHW here, measured: the rule behind ``--channels-last auto``.

Which memory format trains faster on a CPU depends on the CPU, the model and the precision (channels_last trained
1.37x as fast on a Xeon and 0.81-0.84x as fast on an AMD EPYC Zen 3, docs/performance.md). So "auto" times one forward
and backward pass of the run's own model, at its training patch and precision, with a small batch (PROBE_BATCH), in
both formats, and trains in NCHW, PyTorch's own, unless channels_last is clearly faster
(CHANNELS_LAST_SPEEDUP_NEEDED). The answer is cached beside the bf16 probe's (precision_probe.cache_file), keyed by the
machine (precision_probe.probe_key) and by what else changes it: the model, the patch, the batch and the precision.
Off the CPU "auto" is channels_last, not measured. ``SRDENSENET_FAST_CHANNELS_LAST=1`` / ``=0`` decides by hand.
Inference chooses its own format (runners.py). docs/training.md ("Speed options") says how to read or override it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import precision_probe
from .config import Config, model_arch
from .hardware import autocast, precision_name
from .model import SRDenseNet

# The user's choice for this machine (1: channels_last trains faster here, 0: NCHW does); no probe runs.
FAST_CHANNELS_LAST_ENV = "SRDENSENET_FAST_CHANNELS_LAST"
CACHE_NAME = "layout_probe.json"
# channels_last only when clearly faster, as bf16 (precision_probe.BF16_SPEEDUP_NEEDED): ratios of one machine scatter
# by a few percent, and a choice that flips between runs would make them differ.
CHANNELS_LAST_SPEEDUP_NEEDED = 1.10
# Patches per timed pass (the run's per-process batch where smaller): a pass of the paper model took roughly 0.3 s on
# a 2-core VM, so the probe's 8 passes stay a few seconds. The full step's ratio (batch 32) may differ somewhat:
# benchmarks/bench_train.py prints both.
PROBE_BATCH = 2
PROBE_REPEATS = 3  # best of, after one warm-up pass
AUTO_SOURCES = ("measured", "cached", FAST_CHANNELS_LAST_ENV, "rule")  # how "auto" decided (else: chosen by hand)


class TrainingLayout(NamedTuple):
    """The memory format a training start uses, and why."""

    channels_last: bool
    ratio: float | None  # NCHW time / channels_last time on the probe's pass; None where not timed
    source: str  # AUTO_SOURCES, or "typed" (on the command line), "run" (a resume's saved run), "config"
    reason: str = ""  # why, in words (what the run's first line shows)

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"

    @property
    def auto(self) -> bool:
        return self.source in AUTO_SOURCES

    def words(self) -> str:
        """For the run's first line: "NCHW (auto: measured: ...)", "channels_last (--channels-last)"."""
        return f"{self.name} ({'auto: ' if self.auto else ''}{self.reason})"

    def record(self) -> dict[str, object]:
        """The decision as run records (meta.json) keep it."""
        return {"channels_last": self.channels_last, "nchw_over_channels_last": self.ratio, "source": self.source,
                "reason": self.reason}


def decide(ratio: float, source: str) -> TrainingLayout:
    """The decision for a measured NCHW / channels_last time ratio (CHANNELS_LAST_SPEEDUP_NEEDED)."""
    fast = ratio >= CHANNELS_LAST_SPEEDUP_NEEDED
    compared = "at least" if fast else "below"
    reason = f"{source}: channels_last {ratio:.2f}x as fast as NCHW, {compared} {CHANNELS_LAST_SPEEDUP_NEEDED:.2f}x"
    return TrainingLayout(fast, round(ratio, 3), source, reason)


def time_training_pass(arch: dict[str, object], lr_side: int, dtype: torch.dtype, batch: int = PROBE_BATCH,
                       repeats: int = PROBE_REPEATS) -> dict[bool, float]:
    """Seconds per layout (False: NCHW, True: channels_last) of one forward and backward pass (MSE, as a training
    step) of the model ``arch`` on ``batch`` random LR patches of side ``lr_side``, under autocast in ``dtype`` on the
    CPU: each layout's best of ``repeats`` after a warm-up pass, the two interleaved so that a change in load hits
    both."""
    cpu, scale = torch.device("cpu"), int(arch["upscale_factor"])
    with torch.random.fork_rng(devices=[]):  # the run's seeded initial weights must not depend on the probe
        torch.manual_seed(0)
        nchw = SRDenseNet(**arch)
        lr = torch.rand(batch, 1, lr_side, lr_side)
        hr = torch.rand(batch, 1, lr_side * scale, lr_side * scale)
    models = {False: nchw, True: copy.deepcopy(nchw).to(memory_format=torch.channels_last)}
    best = {layout: math.inf for layout in models}
    for attempt in range(repeats + 1):
        for layout, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with autocast(cpu, dtype):
                sr = model(lr)
            F.mse_loss(sr.float(), hr).backward()
            if attempt:  # the first pass is the warm-up (oneDNN builds its primitives)
                best[layout] = min(best[layout], time.perf_counter() - start)
    return best


def probe_key(arch: dict[str, object], lr_side: int, batch: int, dtype: torch.dtype) -> dict[str, object]:
    """The bf16 probe's machine key and what else changes this answer; a cache entry holds for this key only."""
    return {**precision_probe.probe_key(), "arch": arch, "lr_patch": lr_side, "batch": batch,
            "precision": precision_name(dtype)}


def probed(arch: dict[str, object], lr_side: int, batch: int, dtype: torch.dtype) -> TrainingLayout:
    """The cached answer for this key, else a new measurement (``time_training_pass``, cached)."""
    def measured() -> tuple[TrainingLayout, dict[str, object]]:
        seconds = time_training_pass(arch, lr_side, dtype, batch)
        layout = decide(seconds[False] / max(seconds[True], 1e-9), "measured")
        return layout, {"nchw_over_channels_last": layout.ratio, "channels_last": layout.channels_last}

    about = "layout probe: NCHW time / channels_last time per machine, model, patch, batch and precision"
    return precision_probe.remembered(precision_probe.cache_file(CACHE_NAME), probe_key(arch, lr_side, batch, dtype),
                                      "nchw_over_channels_last", about, lambda ratio: decide(ratio, "cached"),
                                      measured)


def auto_layout(device: torch.device, arch: dict[str, object], hr_patch: int, batch: int, dtype: torch.dtype,
                ) -> TrainingLayout:
    """What "auto" trains in: SRDENSENET_FAST_CHANNELS_LAST when set (ValueError for a value that is not 1/0), else
    channels_last off the CPU, else the probe's answer for this model, patch, batch (at most PROBE_BATCH) and dtype."""
    fast = precision_probe.env_choice(FAST_CHANNELS_LAST_ENV, "1 (channels_last trains faster here) or 0 (NCHW does)")
    if fast is not None:
        return TrainingLayout(fast, None, FAST_CHANNELS_LAST_ENV,
                              f"{FAST_CHANNELS_LAST_ENV}={os.environ[FAST_CHANNELS_LAST_ENV]}")
    if device.type != "cpu":  # tensor cores read NHWC; what train.py always did there (not measured)
        return TrainingLayout(True, None, "rule", f"channels_last on {device.type}, not measured")
    lr_side = hr_patch // int(arch["upscale_factor"])
    return probed(arch, lr_side, max(1, min(batch, PROBE_BATCH)), dtype)


def training_layout(config: Config, typed: frozenset[str] | None, device: torch.device, dtype: torch.dtype,
                    world_size: int = 1) -> TrainingLayout:
    """The memory format a training start uses, and why: "auto"'s (``auto_layout``, at the per-process batch),
    --channels-last as typed, the run's own on a resume (read from its saved configuration, no probe), or the
    configuration's (a preset, the Python API: ``typed`` None)."""
    value = config.channels_last
    if value is None:
        return auto_layout(device, model_arch(config), config.hr_patch_size, config.batch_size // world_size, dtype)
    if typed is not None and "channels_last" in typed:
        return TrainingLayout(value, None, "typed", "--channels-last" if value else "--no-channels-last")
    if typed is not None and config.resume:
        return TrainingLayout(value, None, "run", "the run's memory format")
    return TrainingLayout(value, None, "config", "configured")
