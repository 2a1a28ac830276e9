"""Super-resolve images with a trained SRDenseNet: a Python API and a command-line tool.

    python inference.py --weights weights/srdensenet_x4_all_paper.safetensors -i photo.jpg folder/ -o results/
    python inference.py --weights W -i in.png -o out.png --tile 128 --self-ensemble
    torchrun --nproc_per_node 4 inference.py --weights W -i frames/ -o out/     # images split across 4 processes
    python inference.py --weights W -i big.jpg -o out/ --max-memory 4GB      # tiles chosen to fit 4 GiB

Colour (docs/protocol.md, step 7): the model upscales the Y channel (MATLAB rgb2ycbcr, fed as Y/255); Cb/Cr are
upscaled with MATLAB bicubic ``imresize`` and the result is converted back to RGB. Grayscale stays grayscale, alpha
is upscaled bicubically, 16-bit images stay 16-bit. Outputs are written atomically (``imgproc.write_image``).

Python API::

    model = load_model("weights/srdensenet_x4_all_paper.safetensors")  # eval mode, model.upscale_factor known
    sr = upscale(model, rgb_uint8)           # same dtype/channels, scale x the size
    y_hr = predict_y(model, y_lr, tile=128)  # Y in [0, 1] -> Y in [0, 1] (float32, not clamped)
    estimate_memory(model, (3000, 4000), channels=3)          # bytes upscale would need, untiled

Precision / speed (``precision=``; ``backend=``):

* ``"fp32"``: the reference, eager PyTorch in fp32 NCHW (the same operations as ``model.forward``; on CUDA with TF32
  disabled, which cuDNN otherwise uses for fp32 convolutions).
* ``"auto"``: the fastest path that keeps fp32 quality. CUDA: fp16. A CPU where bf16 is fast (AMX;
  ``hardware.cpu_bf16_is_fast``, ``SRDENSENET_FAST_BF16=1`` or ``=0`` decides by hand): bf16. Any other CPU:
  ``"fp32-cl"``. On an AVX2-only CPU bf16 is emulated by oneDNN (~27-45x slower than fp32); on AVX512-BF16 without
  AMX it is native but slower than fp32. A reduced-precision result that is not finite is recomputed in fp32 (with a
  warning).
* ``"fp32-cl"``, ``"bf16"``, ``"fp16"`` (CUDA only): the fast path (``fast_inference.FastRunner``; its docstring
  says what it does to the graph and why) in that dtype: weights prepared once, channels_last, the dense
  connections pushed through weight slices instead of concatenated, sums in fp32. The first and last convolutions
  (1% of the FLOPs) stay fp32 in every dtype, so the input Y and the output image are not rounded to 8 significant
  bits. ``"fp32-cl"`` equals ``"fp32"`` up to float rounding (~1e-6) on every CPU; ``benchmarks/
  precision_quality.py`` gives bf16's cost in PSNR on real photos with the released weights.
* ``backend="onnxruntime"``: ONNX Runtime, fp32, CPU (same results as fp32 to ~1e-6); needs onnx + onnxruntime.

Tiling (``tile=N``): the LR image is cut into tiles of at most NxN pixels; each tile is run with a margin equal to the
model's receptive field (``receptive_field``: 67 LR pixels for the paper model), so on the fp32 paths the stitched
output equals untiled inference up to float rounding (on bf16, up to bf16 rounding: kernels may differ by shape). The
trunk (the convolutions at LR resolution) runs on the tile plus that margin; the upsampler (deconvolutions +
reconstruction, receptive field ~2 LR pixels) runs on equal windows over the tile (``upsampler_window``) with its own
small margin -- always, even untiled, since its 256-map tensors at 2x/4x resolution are the model's largest.
Measured peaks: README, "Automatic tiling and memory".

Automatic tiling (``tile="auto"``, the default everywhere): ``plan_memory`` runs untiled when ``estimate_memory``
fits the budget, else with the largest tile that does (at least MIN_AUTO_TILE = 32 LR pixels). The estimate is built
from the architecture (feature widths, growth, blocks, bottleneck, the upsampler's windows and strides), the dtype
sizes of the precision path and the shape buckets, plus allowances for glibc's heap fragments and the first call,
calibrated against measured peaks so it does not underestimate them (1.4-2.4x above them at 128-512 LR px on the
paper model; ``benchmarks/bench_inference.py --memory`` prints both). The budget (``hardware.memory_budget``) is 80%
of the memory available now -- MemAvailable, the cgroup limit's room, RLIMIT_AS (``ulimit -v``) / RLIMIT_DATA less
the address space in use, or free CUDA memory -- or exactly ``max_memory`` bytes. An image that fits no tile, or whose
allocation fails anyway (PyTorch's allocator, CUDA out of memory, numpy's MemoryError), raises
``InsufficientMemoryError`` with the estimate, the budget and what to try; the CLI prints it as one line and goes on
with the next image. The colour conversion runs in strips of HR rows (``STRIP_PIXELS``), bit-identical to the whole
image, so a large output costs its own size plus a strip rather than ~100 bytes per HR pixel of float64 planes.

Shape buckets: the fast path runs each trunk input at a padded size (``shape_bucket``: multiples of 16 up to 512,
then 16 sizes per octave), and the upsampler on equal windows of a multiple of 8 pixels (at most ~``upsampler_window``)
or, for a line shorter than that, the line's shape bucket; it zeroes every activation outside the real region, which
is exactly the zero padding an unpadded run sees (outputs agree to float rounding, ~1e-6). oneDNN keeps memory for
every input shape it has run, so without buckets a process upscaling photos of many sizes grew without bound; with
them it meets a small, fixed set of shapes (``benchmarks/soak_inference.py``). The ``"fp32"`` reference path and ONNX
Runtime run unpadded.

Self-ensemble (``self_ensemble=True``): the mean, in fp32, of the outputs for the 8 flips/transposes of the input.

Caching: ``predict_y`` / ``upscale`` accept any ``SRDenseNet`` and keep a prepared copy of it (the weights in the
memory format, dtype and backend of the chosen path), weakly keyed by the model, so the user's model is never
modified. The copy is rebuilt whenever a parameter or buffer of the model is replaced, moved to another device or
dtype, or modified in place by a PyTorch operation (optimiser steps, ``load_state_dict``, in-place ops under
``torch.no_grad()``): all of these bump the tensor's version counter, which the cache checks (a model built under
``torch.inference_mode()`` has none: a fingerprint of its values stands in). Writes through
``tensor.data`` bypass version counters; call ``clear_prepared(model)`` after them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

import fast_inference
import hardware
import imgproc
import sharding
from checkpoint import CheckpointError, model_from_checkpoint
from config import add_bool_option
from fast_inference import FastRunner, shape_bucket
from fileio import OutputError, ensure_output_dir, exit_quietly_on_broken_pipe
from hardware import resolve_device
from model import SRDenseNet

__all__ = ["PRECISIONS", "BACKENDS", "load_model", "upscale", "predict_y", "receptive_field", "upsampler_radius",
           "trunk_radius", "resolve_plan", "resolve_device", "clear_prepared", "estimate_memory", "plan_memory",
           "MemoryPlan", "InsufficientMemoryError", "main"]

PRECISIONS = hardware.INFERENCE_PRECISIONS
BACKENDS = ("auto", "torch", "onnxruntime")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
LOSSLESS_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")


# --------------------------------------------------------------------------------------------------------------------
# Loading and hardware
# --------------------------------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> SRDenseNet:
    """The checkpoint's model (EMA weights when present) in eval mode on ``device`` (None/"auto": CUDA if available).

    ``path``: a training checkpoint (.pth), a release file (.safetensors or an older .pth), or a folder written by
    ``scripts/export_hub.py`` (model.safetensors + config.json). Raises ``checkpoint.CheckpointError`` naming the
    file for a missing, unsafe or damaged checkpoint.
    """
    model = model_from_checkpoint(path)
    return model.to(resolve_device(device)).eval()


def _onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_plan(precision: str, device: torch.device, backend: str = "auto") -> tuple[str, str]:
    """(backend, precision) actually used for a requested precision and backend on a device: "auto" is resolved by
    hardware.AUTO_PRECISION; ONNX Runtime runs fp32 on the CPU only. ValueError names what cannot run."""
    hardware.check_precision(precision, device, PRECISIONS)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("backend onnxruntime runs on the CPU only here; use --device cpu or backend torch")
        if precision not in ("auto", "fp32", "fp32-cl"):
            raise ValueError(f"backend onnxruntime runs fp32 only, got precision {precision!r}")
        if not _onnxruntime_available():
            raise ValueError("backend onnxruntime needs the onnx and onnxruntime packages (pip install -r "
                             "requirements-dev.txt)")
        return "onnxruntime", "fp32"
    return "torch", hardware.auto_precision(device).inference if precision == "auto" else precision


# --------------------------------------------------------------------------------------------------------------------
# The receptive field (the model itself splits into SRDenseNet.trunk and .upsample_features)
# --------------------------------------------------------------------------------------------------------------------


def trunk_radius(model: SRDenseNet) -> int:
    """LR pixels a trunk feature depends on in each direction: one per 3x3 convolution on the deepest path.

    The deepest path is the low-level conv then every layer of every block (each layer sees the previous layer of its
    block, each block the previous block, in every variant): 1 + num_blocks * layers_per_block. The bottleneck is 1x1.
    """
    return 1 + model.arch["num_blocks"] * model.arch["layers_per_block"]


def _deconv_reach(deconv: nn.ConvTranspose2d) -> int:
    """Input pixels beyond floor(o / stride) that output pixel o of a transposed convolution reads (max over o)."""
    k, s, p = deconv.kernel_size[0], deconv.stride[0], deconv.padding[0]
    reach = 0
    for o in range(s, 3 * s):  # every phase, away from the border
        lo, hi = math.ceil((o + p - k + 1) / s), (o + p) // s  # inputs i with 0 <= o + p - s*i <= k - 1
        reach = max(reach, hi - o // s, o // s - lo)
    return reach


def upsampler_radius(model: SRDenseNet) -> int:
    """LR pixels the upsampler's output depends on around its own position, rounded up.

    A 3x3 stride-2 deconvolution (padding 1) reads 1 input pixel beyond its position (1 LR pixel for the first, 1/2
    for the second at 2x, ...); the 2x2 and the stride-3 ones read none; the final 3x3 conv reads 1 HR pixel
    (1/scale LR pixel). Paper x4: 1 + 1/2 + 1/4 -> 2.
    """
    radius, resolution = 0.0, 1
    for deconv in model.upsample:
        radius += _deconv_reach(deconv) / resolution
        resolution *= deconv.stride[0]
    radius += (model.reconstruction.kernel_size[0] // 2) / resolution
    return math.ceil(radius - 1e-9)


def receptive_field(model: SRDenseNet) -> int:
    """Radius, in LR pixels, of the input region an output pixel depends on: trunk_radius + upsampler_radius.

    Paper model (8 blocks x 8 layers) at x4: 65 + 2 = 67 LR pixels. Tiles overlap by this margin, so tiled output
    equals untiled output up to float rounding.
    """
    return trunk_radius(model) + upsampler_radius(model)


# --------------------------------------------------------------------------------------------------------------------
# Prepared models (cached) and runners
# --------------------------------------------------------------------------------------------------------------------


class _ReferenceRunner:
    """precision="fp32": eager PyTorch in fp32 NCHW on the model's device, exactly model.forward's operations, every
    input at its own size (a private fp32 copy, so a caller's later .half() or training does not touch it)."""

    bucketed = False
    reduced = False

    def __init__(self, model: SRDenseNet) -> None:
        self.device = next(model.parameters()).device
        with torch.no_grad():
            self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        with fast_inference.exact_fp32(self.device):
            return self.model.trunk(x.to(self.device, torch.float32).contiguous())

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        with fast_inference.exact_fp32(self.device):  # ``padded`` is for the bucketed fast path only
            return self.model.upsample_features(features)


class _OrtRunner:
    """ONNX Runtime (CPU, fp32) on the trunk and the upsampler, exported separately so tiling works the same way."""

    reduced = False
    bucketed = False  # runs every input at its own size

    def __init__(self, model: SRDenseNet) -> None:
        import onnxruntime as ort

        from export_onnx import onnx_bytes

        cpu = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: it would steal the cores from numpy/torch work in the same process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        example = torch.rand(1, 1, 16, 16)
        trunk, up = _ModelPart(cpu, "trunk"), _ModelPart(cpu, "upsample_features")
        with torch.no_grad():
            example_features = trunk(example)
        providers = ["CPUExecutionProvider"]
        self.trunk_session = ort.InferenceSession(onnx_bytes(trunk, example), options, providers=providers)
        self.up_session = ort.InferenceSession(onnx_bytes(up, example_features), options, providers=providers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.trunk_session.run(None, {"input": array})[0])

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        array = np.ascontiguousarray(features.numpy())  # ``padded`` is for bucketed runners only
        return torch.from_numpy(self.up_session.run(None, {"input": array})[0])


class _ModelPart(nn.Module):
    """One half of the model (SRDenseNet.trunk or .upsample_features) as a module, for the ONNX exporter."""

    def __init__(self, model: SRDenseNet, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _version(t: torch.Tensor) -> int | tuple[float, float]:
    """The tensor's in-place version counter; a model built under torch.inference_mode() has inference tensors,
    which keep none, so for them a fingerprint of the values (float64 sum and sum of squares) stands in."""
    if not t.is_inference():
        return t._version
    with torch.no_grad():
        values = t.detach().double()
        return float(values.sum()), float(values.square().sum())


def _state_signature(model: nn.Module) -> list[tuple]:
    # weakref identity (a replaced tensor never matches, even if its id or address is reused), in-place version,
    # storage address, dtype and device of every parameter and buffer.
    return [(weakref.ref(t), _version(t), t.data_ptr(), t.dtype, t.device)
            for t in itertools.chain(model.parameters(), model.buffers())]


def _signature_matches(model: nn.Module, signature: list[tuple]) -> bool:
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    return len(tensors) == len(signature) and all(
        ref() is t and (version, ptr, dtype, device) == (_version(t), t.data_ptr(), t.dtype, t.device)
        for t, (ref, version, ptr, dtype, device) in zip(tensors, signature))


def clear_prepared(model: nn.Module | None = None) -> None:
    """Forget the prepared copies of ``model`` (all models when None), e.g. after writing weights through .data."""
    if model is None:
        _PREPARED.clear()
    else:
        _PREPARED.pop(model, None)


def _runner(model: SRDenseNet, backend: str, precision: str):
    entries = _PREPARED.setdefault(model, {})
    key = (backend, precision)
    cached = entries.get(key)
    if cached is not None and _signature_matches(model, cached[0]):
        return cached[1]
    if backend == "onnxruntime":
        runner = _OrtRunner(model)
    else:
        runner = _ReferenceRunner(model) if precision == "fp32" else FastRunner(model, precision)
    entries[key] = (_state_signature(model), runner)
    return runner


# --------------------------------------------------------------------------------------------------------------------
# Y-channel prediction: tiling, self-ensemble, precision
# --------------------------------------------------------------------------------------------------------------------


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Split [0, length) into ceil(length / tile) near-equal spans of at most ``tile``."""
    n = math.ceil(length / tile)
    bounds = [round(i * length / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def upsampler_window(model: SRDenseNet) -> int:
    """LR size of the windows the upsampler runs on: 128 / 80 / 64 / 32 at x2 / x3 / x4 / x8 (shape buckets).

    The upsampler's tensors are the largest of the model (256 maps at 2x, 4x... the LR size; ONNX Runtime's
    transposed convolution also builds a 9x larger column buffer): run whole on a 512x512 LR image at x4 they need
    tens of GB. Windows of ~256 HR pixels keep each to ~70 MB at every scale (the x4 soak run's peak RSS fell from
    847 to 601 MiB going from 384 to 256); their margins (upsampler_radius, 2 LR pixels at x4) cost ~6%.
    """
    return max(32, 256 // model.upscale_factor // 16 * 16)


def _clip(a: int, b: int, margin: int, length: int) -> tuple[int, int]:
    return max(0, a - margin), min(length, b + margin)


def _window_length(extent: int, size: int, margin: int, bucketed: bool) -> tuple[int, int]:
    """(window length, padded length) for a line of ``extent`` pixels and windows of at most ~``size``.

    A line that fits is one window, padded to its shape_bucket when ``bucketed``. A longer one is cut into equal
    windows, rounded up to a multiple of 8 when ``bucketed``: at most size / 8 lengths, so still a fixed set. A
    16-pixel step keeps the x4 soak run lower (+8% against +16%, docs/errors.md) but takes 1.5x the time at 100x150
    LR, as these windows are short.
    """
    if extent <= size:
        return extent, shape_bucket(extent) if bucketed else extent
    count = math.ceil((extent - 2 * margin) / (size - 2 * margin))
    window = -(-(extent - 2 * margin) // count) + 2 * margin
    window = min(extent, -(-window // 8) * 8) if bucketed else window
    return window, window


def _windows(core: tuple[int, int], valid: tuple[int, int], length: int, size: int, margin: int,
             bucketed: bool) -> tuple[list[tuple[int, int, int, int]], int]:
    """Cover the span core = [c0, c1) of a line of ``length`` pixels with windows of one length (_window_length).

    Returns the windows and their padded length. Each window (w0, w1, k0, k1) lies in valid = [v0, v1) (core +-
    margin, cut at 0 and length) and keeps the outputs [k0, k1): those at least ``margin`` pixels from its edges, or
    closer to an edge that is the line's own end (where the model pads with zeros anyway). Windows are shifted inward
    at the ends rather than cut, so a line needs one shape only.
    """
    (c0, c1), (v0, v1) = core, valid
    if size <= 2 * margin:
        raise ValueError(f"upsampler window {size} must exceed twice its margin {margin}")
    window, padded = _window_length(v1 - v0, size, margin, bucketed)
    pieces, k0 = [], c0
    while k0 < c1:
        w0 = max(v0, min(k0 - margin, v1 - window))
        w1 = w0 + window
        k1 = min(c1, w1 if w1 == length else w1 - margin)
        pieces.append((w0, w1, k0, k1))
        k0 = k1
    return pieces, padded


def _forward_tile(runner, x: torch.Tensor, core: tuple[int, int, int, int], out: torch.Tensor, model: SRDenseNet,
                  fallback=None) -> None:
    """Write the output for the LR region core = (y0, y1, x0, x1) of x into out.

    The trunk runs once on the core plus receptive_field(model) pixels of context; the upsampler then runs on equal
    windows of about upsampler_window pixels, keeping the outputs at least upsampler_radius pixels inside (_windows).
    Context is cut at the image border, where the model pads with zeros anyway, so every output pixel sees exactly
    what it sees in untiled inference. ``fallback``: an fp32 runner that recomputes a piece whose reduced-precision
    result is not finite.
    """
    global _warned_nonfinite
    scale, t_margin, u_margin, window = (model.upscale_factor, trunk_radius(model), upsampler_radius(model),
                                         upsampler_window(model))
    y0, y1, x0, x1 = core
    h, w = x.shape[-2:]
    ty0, ty1 = _clip(y0, y1, u_margin + t_margin, h)
    tx0, tx1 = _clip(x0, x1, u_margin + t_margin, w)
    features = runner.trunk(x[..., ty0:ty1, tx0:tx1])
    rows, padded_h = _windows((y0, y1), _clip(y0, y1, u_margin, h), h, window, u_margin, runner.bucketed)
    cols, padded_w = _windows((x0, x1), _clip(x0, x1, u_margin, w), w, window, u_margin, runner.bucketed)
    for uy0, uy1, ky0, ky1 in rows:
        for ux0, ux1, kx0, kx1 in cols:
            piece = runner.upsampler(features[..., uy0 - ty0:uy1 - ty0, ux0 - tx0:ux1 - tx0], (padded_h, padded_w))
            oy, ox = (ky0 - uy0) * scale, (kx0 - ux0) * scale
            piece = piece[..., oy:oy + (ky1 - ky0) * scale, ox:ox + (kx1 - kx0) * scale]
            if fallback is not None and not bool(torch.isfinite(piece).all()):
                if not _warned_nonfinite:
                    warnings.warn("reduced-precision inference produced non-finite values; recomputing in fp32",
                                  stacklevel=4)
                    _warned_nonfinite = True
                _forward_tile(fallback, x, (ky0, ky1, kx0, kx1), out, model)
                continue
            out[..., ky0 * scale:ky1 * scale, kx0 * scale:kx1 * scale] = piece


_warned_nonfinite = False


def _predict(model: SRDenseNet, x: torch.Tensor, backend: str, precision: str, tile: int | None) -> torch.Tensor:
    """(N, 1, H, W) float32 -> (N, 1, sH, sW) float32 on the runner's device; LR tiles of at most tile x tile."""
    runner = _runner(model, backend, precision)
    fallback = _runner(model, "torch", "fp32-cl") if runner.reduced else None
    scale = model.upscale_factor
    n, _, h, w = x.shape
    device = getattr(runner, "device", torch.device("cpu"))
    out = torch.empty(n, 1, h * scale, w * scale, dtype=torch.float32, device=device)
    if tile is None:
        cores = [(0, h, 0, w)]
    else:
        cores = [(y0, y1, x0, x1) for y0, y1 in _spans(h, tile) for x0, x1 in _spans(w, tile)]
    for core in cores:
        _forward_tile(runner, x, core, out, model, fallback)
        if len(cores) > 1:  # a tile's freed activations would otherwise pile up as heap fragments, tile after tile
            hardware.release_free_heap()
    return out


# The 8 symmetries of the square as (transpose, flip H, flip W); each is undone in reverse order.
SYMMETRIES = list(itertools.product((False, True), repeat=3))


def _transform(x: torch.Tensor, sym: tuple[bool, bool, bool], inverse: bool = False) -> torch.Tensor:
    transpose, flip_h, flip_w = sym
    steps = [(transpose, lambda t: t.transpose(-2, -1)), (flip_h, lambda t: t.flip(-2)),
             (flip_w, lambda t: t.flip(-1))]
    for on, op in (steps if inverse else steps[::-1]):
        if on:
            x = op(x)
    return x


def ensemble_mean(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean of ``run`` over the 8 flips/transposes of x (..., H, W), each mapped back, accumulated in fp32
    (EDSR's x8 self-ensemble)."""
    total = None
    for sym in SYMMETRIES:
        piece = _transform(run(_transform(x, sym)), sym, inverse=True).float()
        total = piece.clone() if total is None else total.add_(piece)
    return total / len(SYMMETRIES)


def _check_tile(tile: int | str | None) -> None:
    if tile is None or tile == "auto":
        return
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 0:
        raise ValueError(f"tile must be 'auto', 0/None (untiled) or a positive number of LR pixels, got {tile!r}")


def predict_y(model: SRDenseNet, y: torch.Tensor | np.ndarray, *, precision: str = "auto",
              tile: int | str | None = "auto", self_ensemble: bool = False, backend: str = "auto",
              max_memory: int | None = None) -> torch.Tensor | np.ndarray:
    """Super-resolve a Y channel in [0, 1] (the model's input convention) -> float32 Y in [0, 1], not clamped.

    ``y``: a tensor (N, 1, H, W) or (H, W), or a numpy array (H, W) or (N, 1, H, W). The result has the same type
    and layout at ``model.upscale_factor`` times the size; a tensor result is on the input tensor's device. The
    computation runs on the model's device. ``tile``: "auto" (the default: untiled when the estimated peak fits the
    memory budget, else the largest tile that does; ``plan_memory``), None or 0 (untiled), or an LR tile size.
    ``max_memory``: the budget in bytes for "auto" (default: hardware.memory_budget). ``self_ensemble``: mean of the
    8 flips/transposes, in fp32. ``precision`` / ``backend``: see the module docstring ("fp32" = the reference).
    Raises InsufficientMemoryError when no tile fits the budget or an allocation fails.
    """
    if not isinstance(model, SRDenseNet):
        raise TypeError(f"expected an SRDenseNet, got {type(model).__name__}")
    _check_tile(tile)
    device = next(model.parameters()).device
    backend, precision = resolve_plan(precision, device, backend)
    is_numpy = isinstance(y, np.ndarray)
    x = torch.from_numpy(np.asarray(y, dtype=np.float32)) if is_numpy else y
    if not bool(torch.isfinite(x).all()):
        raise ValueError("predict_y: the input contains NaN or infinite values")
    if x.dim() not in (2, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"predict_y: expected (H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    plan = plan_memory(model, (x.shape[0] if x.dim() == 4 else 1, *x.shape[-2:]), tile=tile, max_memory=max_memory,
                       precision=precision, backend=backend, self_ensemble=self_ensemble)
    out_device = x.device
    with _reporting_out_of_memory(plan), torch.inference_mode():
        x4 = x.reshape(1, 1, *x.shape) if x.dim() == 2 else x
        x4 = x4.to(device=device, dtype=torch.float32)
        if self_ensemble:
            result = ensemble_mean(lambda t: _predict(model, t, backend, precision, plan.tile), x4)
        else:
            result = _predict(model, x4, backend, precision, plan.tile)
        result = result.reshape(result.shape[-2:]) if x.dim() == 2 else result
        result = result.cpu().numpy() if is_numpy else result.to(out_device).clone()  # .clone(): a normal tensor
    # The activations are freed now; glibc would keep their fragments and a long run would read them as growth.
    hardware.release_free_heap()
    return result


# --------------------------------------------------------------------------------------------------------------------
# Memory: the estimate, the plan (automatic tiling) and out-of-memory reports
# --------------------------------------------------------------------------------------------------------------------

# The smallest tile "auto" tries: below it a tile is mostly margin (the paper model's trunk runs on (32 + 134)^2 LR
# pixels for 32^2 of output, ~25x the untiled work).
MIN_AUTO_TILE = 32
# Calibration (measured peaks: ru_maxrss over the RSS after loading the model; benchmarks/bench_inference.py --memory
# and tests/test_inference.py compare them with the estimate). glibc serves blocks of up to 32 MiB (its largest
# mmap threshold) from its heap and keeps them resident when they are freed. Beyond the tensors alive at the peak, the
# x4 paper model's RSS rose by the sum of the upsampler windows' heap-sized maps plus 0.7x (one untiled pass) to 1.7x
# (tiled: fragments pile up from tile to tile) the sum of the trunk's (the dense layers' outputs and concatenations);
# HEAP_FACTOR times the trunk's sum and once the windows' are counted. LIVE_SLACK covers oneDNN's scratch space and
# alignment on top of the live tensors (measured peaks left 0-10%). The fast path's trunk has fewer, repeated tensor
# sizes and returns freed heap between tiles (hardware.release_free_heap): FAST_HEAP_FACTOR, set so its estimate stays
# 1.4-2.4x above the measured peaks.
HEAP_BLOCK_LIMIT = 32 * 2**20
HEAP_FACTOR = 2.5
FAST_HEAP_FACTOR = 1.7
LIVE_SLACK = 1.1
# ONNX Runtime's arena grows in powers of two and keeps the graph's buffers: 1.9x PyTorch's RSS per pixel, measured;
# its address space (RLIMIT_AS) grows 2.2x more than its RSS.
ORT_FACTOR, ORT_ADDRESS_FACTOR = 2.0, 2.5
# The first call's own cost, whatever the image: the prepared copy aside, thread stacks, oneDNN's JIT kernels (per
# convolution) and library code paged in; measured 33-45 MiB with the paper model (69 convolutions), 8 MiB with a tiny
# one (8).
FIRST_CALL_BYTES, FIRST_CALL_PER_CONV = 16 * 2**20, 2**19
# Per LR pixel while the model runs inside upscale: the LR YCbCr planes (float64) and the Y input (float32); per HR
# pixel of a strip of the colour conversion (float64 Y, Cb/Cr, YCbCr, RGB and two temporaries, ~120 measured).
_LR_COLOUR_BYTES = 56
_STRIP_BYTES_PER_PIXEL = 160


class InsufficientMemoryError(MemoryError):
    """An image that does not fit the memory at hand: the estimate exceeds the budget even for the smallest automatic
    tile, or an allocation failed (``cause``, the allocator's message). ``needed``: the estimate in bytes for
    ``tile`` (None: untiled); ``budget``: a hardware.MemoryBudget; ``size``: the LR (height, width)."""

    def __init__(self, needed: int, budget: hardware.MemoryBudget, tile: int | None, size: tuple[int, int],
                 cause: str | None = None) -> None:
        self.needed, self.budget, self.tile, self.size, self.cause = needed, budget, tile, size, cause
        tiles = f"tiles of {tile} LR px" if tile else "untiled"
        if cause is None:
            smallest = f"even in {tiles}, the smallest automatic tile" if tile else tiles
            text = f"needs about {hardware.format_bytes(needed)} {smallest}; {budget.describe()}"
        else:
            where = f"in {tiles}" if tile else tiles
            text = (f"ran out of memory {where} ({cause}); estimated {hardware.format_bytes(needed)}, "
                    f"{budget.describe()}")
        super().__init__(text)

    def hint(self, device: torch.device | None = None) -> str:
        """What to try, as command-line options."""
        smaller = max(8, (self.tile or max(self.size)) // 2)
        budget = "--max-memory SIZE (if the budget is too cautious)" if self.cause is None else "a lower --max-memory"
        on_cuda = ", --device cpu" if device is not None and device.type == "cuda" else ""
        return f"try --tile {smaller} (less memory, slower), {budget}{on_cuda} or a smaller image"


class MemoryPlan(NamedTuple):
    """The tile a call runs with (None: untiled), its estimated peak in bytes and the budget it was fitted to."""

    tile: int | None
    needed: int
    budget: hardware.MemoryBudget
    size: tuple[int, int]


def _reference_trunk_bytes(arch: dict) -> tuple[int, int, list[int]]:
    """(peak bytes alive per trunk input pixel, bytes per pixel of the trunk's output, the bytes per pixel of each
    distinct tensor of one pass) of the fp32 reference, from model.trunk's order of operations: the growing feature
    stack is concatenated anew for each block ("all"). The distinct tensors are those glibc can leave fragments of: a
    block's internal ones (listed once: every block reuses the sizes) and the low-level and bottleneck outputs; the
    growing feature stack is alive at the peak, so counted in it."""
    f, g, layers, k = arch["num_features"], arch["growth_rate"], arch["layers_per_block"], arch["bottleneck_features"]
    block_out = layers * g
    peaks, c_in = [2 * f * 4], f  # the low-level conv's output and its ReLU
    tensors = [f * 4, f * 4, 2 * k * 4] + [t for j in range(layers) for t in (g * 4, g * 4, (j + 1) * g * 4)]
    for i in range(arch["num_blocks"]):
        held = f if i else 0  # `low` stays referenced while the blocks run (block 0 reads it as its input)
        peaks.append((held + c_in) * 4 + (3 * block_out + 2 * g) * 4)  # inside the block
        if arch["variant"] == "all":
            peaks.append((held + c_in) * 4 + block_out * 4 + (c_in + block_out) * 4)  # torch.cat([out, features])
            c_in += block_out
        else:
            c_in = block_out
    if arch["variant"] == "hl":
        peaks.append(f * 4 + block_out * 4 + (block_out + f) * 4)
        c_in = block_out + f
    peaks.append((f + c_in) * 4 + 2 * k * 4)  # the bottleneck and its ReLU
    return max(peaks), k * 4, tensors


def _fast_trunk_bytes(arch: dict, size: int) -> tuple[int, int, list[int]]:
    """The same for fast_inference.FastRunner.trunk with activations of ``size`` bytes. Each source (low-level
    features, block outputs) is pushed once and freed, so what stays alive is the fp32 sums: the first-layer
    accumulators of the blocks to come and the bottleneck's; beside them one block's layer outputs and
    concatenations, and the transient push outputs (3x3 to later blocks, 1x1 to the bottleneck)."""
    f, g, layers, k = arch["num_features"], arch["growth_rate"], arch["layers_per_block"], arch["bottleneck_features"]
    blocks, block_out, all_blocks = arch["num_blocks"], layers * g, arch["variant"] == "all"
    bottleneck = k * 4 if arch["variant"] != "h" else 0  # the fp32 sum, started by the low-level features
    first = g * blocks if all_blocks else g  # the first layers' pushes from the low-level features
    peaks = [f * 4 + f * size + first * (size + 4) + k * size + bottleneck]
    for i in range(blocks):
        pending = (g * (blocks - i) if all_blocks else g) * 4
        push = (g * (blocks - i - 1) if all_blocks else g) * size
        # inside the block: its layer outputs, their concatenation and a new output; then the block's output
        # beside its push (3x3) or its bottleneck share (1x1), one after the other
        peaks.append(pending + bottleneck + max(2 * block_out + g, block_out + max(push, k * size) // size) * size)
    tensors = [f * 4, f * size, first * size, k * size, k * 4] + [
        t for j in range(layers) for t in (g * size, (j + 1) * g * size)]
    return max(peaks), k * size, tensors


def _window_bytes(model: SRDenseNet, fast_size: int | None, onnxruntime: bool) -> list[int]:
    """Bytes per (padded) LR pixel of each tensor of one upsampler window, all alive at its peak: the input copies,
    each deconvolution's output (ReLU in place on the fast path) at its resolution, then the output piece; on the fast
    path (activations of ``fast_size`` bytes; None: the fp32 reference or ONNX Runtime) the reconstruction's taps (k*k
    fp32 values per HR pixel, and their zero-padded copy) too."""
    k, area, fast = model.arch["bottleneck_features"], 1, fast_size is not None
    size = fast_size or 4
    tensors = [k * size] if fast else [k * 4, k * 4]  # the padded input (and the reference's contiguous copy)
    for deconv in model.upsample:
        if onnxruntime:  # its ConvTranspose builds a column buffer of kernel^2 x channels per input pixel
            tensors.append(k * deconv.kernel_size[0] ** 2 * area * 4)
        area *= deconv.stride[0] ** 2
        tensors += [k * area * size] if fast else [k * area * 4, k * area * 4]
    scale2, taps = model.upscale_factor**2, model.reconstruction.kernel_size[0] ** 2
    return tensors + ([2 * taps * scale2 * 4] if fast else []) + [scale2 * 4, scale2 * 4]


def _tile_extents(length: int, tile: int | None, t_margin: int, u_margin: int, window: int,
                  bucketed: bool) -> tuple[int, int]:
    """(largest trunk input, largest padded upsampler window) along one side over the tiles of ``tile``."""
    trunk = upsampler = 0
    for y0, y1 in _spans(length, tile or length):
        a, b = _clip(y0, y1, t_margin + u_margin, length)
        trunk = max(trunk, shape_bucket(b - a) if bucketed else b - a)
        a, b = _clip(y0, y1, u_margin, length)
        upsampler = max(upsampler, _window_length(b - a, window, u_margin, bucketed)[1])
    return trunk, upsampler


def _heap_resident(tensors: list[int], pixels: int) -> int:
    return sum(t * pixels for t in tensors if t * pixels <= HEAP_BLOCK_LIMIT)


def _model_bytes(model: SRDenseNet, size: tuple[int, int, int], tile: int | None, backend: str, precision: str,
                 self_ensemble: bool) -> int:
    """Peak extra bytes of one predict_y call on the model's device (resolved backend and precision)."""
    n, h, w = size
    ort = backend == "onnxruntime"
    bucketed = not ort and precision != "fp32"
    fast_size = hardware.PRECISIONS[precision].dtype.itemsize if bucketed else None  # bytes per activation
    t_margin, u_margin, window = trunk_radius(model), upsampler_radius(model), upsampler_window(model)
    trunk_h, window_h = _tile_extents(h, tile, t_margin, u_margin, window, bucketed)
    trunk_w, window_w = _tile_extents(w, tile, t_margin, u_margin, window, bucketed)
    if bucketed:
        trunk_peak, features, trunk_tensors = _fast_trunk_bytes(model.arch, fast_size)
    else:
        trunk_peak, features, trunk_tensors = _reference_trunk_bytes(model.arch)
    window_tensors = _window_bytes(model, fast_size, ort)
    trunk_pixels, window_pixels = n * trunk_h * trunk_w, n * window_h * window_w
    live = max(trunk_pixels * (trunk_peak + 8), trunk_pixels * features + window_pixels * sum(window_tensors))
    heap_factor = FAST_HEAP_FACTOR if bucketed else HEAP_FACTOR
    heap = heap_factor * _heap_resident(trunk_tensors, trunk_pixels) + _heap_resident(window_tensors, window_pixels)
    tile_peak = (LIVE_SLACK * live + heap) * (ORT_FACTOR if ort else 1)
    hr = n * h * w * model.upscale_factor**2 * 4
    params = sum(p.numel() for p in model.parameters()) * 4 * (8 if ort else 3)  # copies; ONNX export and sessions
    return int(tile_peak + hr * (4 if self_ensemble else 2) + n * h * w * 4 * 3 + params + _first_call_bytes(model))


def _first_call_bytes(model: SRDenseNet) -> int:
    convolutions = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())
    return FIRST_CALL_BYTES + FIRST_CALL_PER_CONV * convolutions


def _image_bytes(h: int, w: int, scale: int, channels: int, itemsize: int) -> tuple[int, int]:
    """(bytes upscale holds while the model runs, peak bytes after it: the colour conversion or writing the file)
    for an LR image of h x w with ``channels`` channels of ``itemsize`` bytes."""
    lr, hr = h * w, h * w * scale**2
    strip = min(hr, STRIP_PIXELS + w * scale) * _STRIP_BYTES_PER_PIXEL
    colour = hr * (4 + channels * itemsize) + lr * _LR_COLOUR_BYTES + strip
    # imgproc.write_image: the image, a BGR copy, OpenCV's growing encode buffer (~2x the file) and its bytes copy.
    writing = hr * channels * itemsize * 5
    return lr * _LR_COLOUR_BYTES, max(colour, writing)


def estimate_memory(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], *, tile: int | None = None,
                    precision: str = "auto", backend: str = "auto", self_ensemble: bool = False, channels: int = 0,
                    itemsize: int = 1) -> int:
    """Estimated peak memory, in bytes on top of the loaded model, of ``predict_y`` on an LR Y of ``size`` ((H, W)
    or (N, H, W)) with ``tile`` (None: untiled), or with ``channels`` > 0 of ``upscale`` (and writing the result)
    on an image of that many channels of ``itemsize`` bytes. On a CUDA model: the device's share only.

    Built from the architecture (feature widths, growth, blocks, bottleneck, the upsampler's windows and strides),
    the precision's dtype sizes and the shape buckets, times HEAP_SLACK, plus the outputs, the prepared copies and
    FIRST_CALL_BYTES; calibrated so it exceeds every measured peak (benchmarks/bench_inference.py --memory prints
    both; tests/test_inference.py checks it in subprocesses).
    """
    device = next(model.parameters()).device
    backend, precision = resolve_plan(precision, device, backend)
    n, h, w = size if len(size) == 3 else (1, *size)
    needed = _model_bytes(model, (n, h, w), tile or None, backend, precision, self_ensemble)
    if channels and device.type == "cpu":
        during, after = _image_bytes(h, w, model.upscale_factor, channels, itemsize)
        needed = max(needed + during, after + _first_call_bytes(model))
    return needed


def _candidate_tiles(h: int, w: int) -> list[int | None]:
    """Untiled, then every tile size that changes the tiling (ceil(side / k) for k tiles a side), largest first."""
    sizes = {-(-side // k) for side in (h, w) for k in range(1, side // MIN_AUTO_TILE + 1)}
    return [None, *sorted((t for t in sizes if MIN_AUTO_TILE <= t < max(h, w)), reverse=True)]


def plan_memory(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], *, tile: int | str | None = "auto",
                max_memory: int | None = None, precision: str = "auto", backend: str = "auto",
                self_ensemble: bool = False, channels: int = 0, itemsize: int = 1) -> MemoryPlan:
    """The tile to run an LR image of ``size`` with: an explicit ``tile`` (0/None: untiled) as given; "auto":
    untiled when ``estimate_memory`` fits the budget (``max_memory`` bytes, else hardware.memory_budget: 80% of
    the memory available now), else the largest tile that fits. Raises InsufficientMemoryError when even
    MIN_AUTO_TILE does not. With no readable limit, "auto" runs untiled."""
    _check_tile(tile)
    device = next(model.parameters()).device
    budget = hardware.memory_budget(device, max_memory)
    options = dict(precision=precision, backend=backend, self_ensemble=self_ensemble, channels=channels,
                   itemsize=itemsize)
    lr_size = tuple(size[-2:])
    if tile != "auto":
        return MemoryPlan(tile or None, estimate_memory(model, size, tile=tile or None, **options), budget, lr_size)
    if device.type == "cuda" and channels:
        _check_host_memory(model, lr_size, channels, itemsize)
    # Under ulimit -v / -d ONNX Runtime's arena reserves more address space than it makes resident.
    address = ORT_ADDRESS_FACTOR if budget.source.startswith("RLIMIT") and resolve_plan(
        precision, device, backend)[0] == "onnxruntime" else 1
    needed = 0
    for candidate in _candidate_tiles(*lr_size):
        needed = int(estimate_memory(model, size, tile=candidate, **options) * address)
        if budget.budget is None or needed <= budget.budget:
            return MemoryPlan(candidate, needed, budget, lr_size)
    raise InsufficientMemoryError(needed, budget, candidate, lr_size)


def _check_host_memory(model: SRDenseNet, size: tuple[int, int], channels: int, itemsize: int) -> None:
    """A CUDA run still converts colours and writes the file in RAM: that part must fit the host's budget."""
    during, after = _image_bytes(*size, model.upscale_factor, channels, itemsize)
    host = hardware.memory_budget(torch.device("cpu"))
    needed = max(during + size[0] * size[1] * model.upscale_factor**2 * 4, after) + _first_call_bytes(model)
    if host.budget is not None and needed > host.budget:
        raise InsufficientMemoryError(needed, host, None, size)


# What PyTorch and numpy say when an allocation fails (CPU allocator, CUDA caching allocator, oneDNN).
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory", "Cannot allocate memory",
                        "could not allocate")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _reporting_out_of_memory(plan: MemoryPlan):
    """Turn a failed allocation into an InsufficientMemoryError with the plan's numbers (an inner call's error is
    restated with this call's plan). Raised after the except block, so the failed call's frames, which hold its
    tensors, are released before the caller sees the error."""
    cause = None
    try:
        yield
        return
    except InsufficientMemoryError as error:
        if error.cause is None:
            raise
        cause = error.cause
    except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not isinstance(error, MemoryError) and not any(text in str(error) for text in _ALLOCATION_FAILURES):
            raise
        cause = _first_line(error)
    raise InsufficientMemoryError(plan.needed, plan.budget, plan.tile, plan.size, cause)


# --------------------------------------------------------------------------------------------------------------------
# Whole images
# --------------------------------------------------------------------------------------------------------------------


def _quantize(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return imgproc.quantize_uint8(x)
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("upscale: the model produced NaN or infinite values")
    peak = float(np.iinfo(dtype).max)
    return np.floor(np.clip(x, 0.0, 1.0) * peak + 0.5).astype(dtype)


def upscale(model: SRDenseNet, image: np.ndarray, *, precision: str = "auto", tile: int | str | None = "auto",
            self_ensemble: bool = False, backend: str = "auto", max_memory: int | None = None) -> np.ndarray:
    """Super-resolve an image: HxWx3 RGB, HxWx4 RGBA, HxW or HxWx1 grayscale, uint8 or uint16.

    Returns the same dtype and channels at ``model.upscale_factor`` times the size. Colour: SR Y + MATLAB-bicubic
    Cb/Cr, converted back to RGB (docs/protocol.md, step 7); alpha: MATLAB bicubic. Grayscale g is treated as the
    RGB image (g, g, g), as the evaluation protocol does (Y = 16 + 219 g). Options as in ``predict_y``; ``"auto"``
    tiling also counts the memory of the colour conversion (``estimate_memory``). Raises InsufficientMemoryError.
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"upscale: expected a uint8 or uint16 image, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        return upscale(model, img[:, :, 0], precision=precision, tile=tile, self_ensemble=self_ensemble,
                       backend=backend, max_memory=max_memory)[:, :, None]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"upscale: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    if min(img.shape[:2]) < 1:
        raise ValueError(f"upscale: empty image of shape {img.shape}")
    plan = plan_memory(model, img.shape[:2], tile=tile, max_memory=max_memory, precision=precision, backend=backend,
                       self_ensemble=self_ensemble, channels=img.shape[2] if img.ndim == 3 else 1,
                       itemsize=img.itemsize)
    options = dict(precision=precision, tile=plan.tile or 0, self_ensemble=self_ensemble, backend=backend)
    with _reporting_out_of_memory(plan):
        out = _upscale_gray(model, img, options) if img.ndim == 2 else _upscale_colour(model, img, options)
    hardware.release_free_heap()  # the colour strips' fragments (predict_y released the model's)
    return out


# HR pixels per strip of the colour conversion (float64, ~100 bytes a pixel at its peak: ~50 MB a strip), so a
# 12-megapixel photo at x4 needs its output and a strip rather than ~19 GB of float64 planes.
STRIP_PIXELS = 2**19


def _strips(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, STRIP_PIXELS // max(1, width))
    return [(r0, min(height, r0 + step)) for r0 in range(0, height, step)]


def _upscale_gray(model: SRDenseNet, img: np.ndarray, options: dict) -> np.ndarray:
    y = 16.0 + 219.0 * imgproc.to_float01(img)  # rgb2ycbcr of (g, g, g): the Y coefficients sum to 219
    sr_y = predict_y(model, (y / 255.0).astype(np.float32), **options)
    del y
    out = np.empty(sr_y.shape, img.dtype)
    for r0, r1 in _strips(*sr_y.shape):
        out[r0:r1] = _quantize((sr_y[r0:r1].astype(np.float64) * 255.0 - 16.0) / 219.0, img.dtype)
    return out


def _upscale_colour(model: SRDenseNet, img: np.ndarray, options: dict) -> np.ndarray:
    # Strip by strip, each the same per-pixel arithmetic as on the whole image (imresize(rows=) and the row-wise
    # colour matrices give the same bits), so the result equals the whole-image formula (evaluation.colour_sr).
    scale = float(model.upscale_factor)
    ycc = imgproc.rgb_to_ycbcr(img[:, :, :3])
    cbcr = np.ascontiguousarray(ycc[:, :, 1:])
    sr_y = predict_y(model, (ycc[:, :, 0] / 255.0).astype(np.float32), **options)
    del ycc
    out = np.empty(sr_y.shape + (img.shape[2],), img.dtype)
    for rows in _strips(*sr_y.shape):
        strip_y = sr_y[rows[0]:rows[1]].astype(np.float64)[:, :, None] * 255.0
        ycc_hr = np.concatenate([strip_y, imgproc.imresize(cbcr, scale=scale, rows=rows)], axis=2)
        out[rows[0]:rows[1], :, :3] = _quantize(imgproc.ycbcr_to_rgb(ycc_hr), img.dtype)
        if img.shape[2] == 4:
            out[rows[0]:rows[1], :, 3] = imgproc.imresize(img[:, :, 3], scale=scale, rows=rows)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


class UsageError(ValueError):
    """A command line that cannot be carried out (reported without a traceback, exit code 2)."""


def _output_name(src: Path) -> str:
    # Lossy or exotic formats become PNG: an SR result should not be re-compressed.
    return src.name if src.suffix.lower() in LOSSLESS_EXTENSIONS else src.stem + ".png"


def _images_under(folder: Path, skip: Path | None) -> list[Path]:
    """Images anywhere under folder, sorted; hidden files and folders, and the folder ``skip`` (an output folder
    inside the input), are never read."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        found.extend(here / f for f in sorted(files)
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return found


def collect_jobs(inputs: list[str], output: str) -> tuple[list[tuple[Path, Path]], bool]:
    """(source, destination) pairs for the CLI, and whether any input was a folder.

    Folders are searched recursively and their tree is mirrored under the output folder (``in/a/b.jpg`` ->
    ``out/a/b.png``); a single input file may be given an output file name.
    """
    out = Path(output)
    skip = out.resolve()
    jobs: list[tuple[Path, Path]] = []
    any_folder = False
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            any_folder = True
            found = _images_under(path, skip)
            if not found:
                raise UsageError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}), also in its "
                                 f"sub-folders")
            jobs.extend((src, out / src.relative_to(path).parent / _output_name(src)) for src in found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if len(files) == 1 and not any_folder and out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        jobs = [(files[0], out)]
    else:
        if out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
            raise UsageError(f"-o {out}: several inputs need an output folder, not an image file name")
        jobs.extend((src, out / _output_name(src)) for src in files)
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        key = dst.resolve()
        if key == src.resolve():
            raise UsageError(f"{src}: the output would overwrite the input; choose another -o")
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    return jobs, any_folder


def upscale_file(model: SRDenseNet, src: Path, dst: Path, **options) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                              int | None]:
    """Read, upscale and atomically write one image; grayscale files (R = G = B) are written as grayscale.
    Returns the input and output shapes and the tile it ran with (None: untiled). Options as in ``upscale``."""
    rgb, alpha = imgproc.read_image_with_alpha(src)
    gray = bool((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all())
    image = rgb[:, :, 0] if gray else rgb
    if alpha is not None:
        image = np.concatenate([np.repeat(image[:, :, None], 3, axis=2) if gray else image, alpha[:, :, None]], axis=2)
    del rgb, alpha
    plan = plan_memory(model, image.shape[:2], tile=options.pop("tile", "auto"),
                       max_memory=options.pop("max_memory", None), channels=image.shape[2] if image.ndim == 3 else 1,
                       itemsize=image.itemsize, **options)
    out = upscale(model, image, tile=plan.tile or 0, **options)
    dst.parent.mkdir(parents=True, exist_ok=True)
    imgproc.write_image(dst, out)
    return image.shape, out.shape, plan.tile


def tile_argument(text: str) -> int | str:
    """--tile: 'auto', 0 (untiled) or a tile size in LR pixels (argparse type)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        tile = int(text)
    except ValueError:
        tile = -1
    if tile < 0:
        raise argparse.ArgumentTypeError(f"expected auto, 0 (untiled) or a tile size in LR pixels, got {text!r}")
    return tile


def memory_argument(text: str) -> int:
    """--max-memory: a size such as 4GB, 512MB or 1.5G (argparse type)."""
    try:
        return hardware.parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint written by train.py, release .safetensors or hub "
                        "folder (EMA weights preferred)")
    parser.add_argument("-i", "--input", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created), or an image file name when there is a single input file")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fastest path within fp32 quality (bf16 on CPUs with AMX, else fp32-cl; "
                             "fp16 on CUDA); fp32: the eager reference; fp32-cl, bf16, fp16 (CUDA): the fast path "
                             "in that dtype")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto/torch: PyTorch; onnxruntime: ONNX Runtime fp32 on the CPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--tile", type=tile_argument, default="auto",
                        help="LR tile size in pixels; auto: untiled when the estimated peak fits the memory budget, "
                             "else the largest tile that does; 0: whole image. Output unchanged either way")
    parser.add_argument("--max-memory", type=memory_argument, metavar="SIZE",
                        help="memory budget for --tile auto, e.g. 4GB, 512MB, 1.5G (binary units; default: 80%% of "
                             "the memory available now: RAM, cgroup limit, ulimit -v, or free GPU memory)")
    add_bool_option(parser, "--self-ensemble", "average the 8 flips/transposes (8x slower)", default=False)
    add_bool_option(parser, "--force", "replace outputs that already exist (default: skip them and say so)",
                    default=False)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads per process (default: PyTorch's; under torchrun on a CPU, the node's cores "
                             "divided between its processes)")
    return parser


def _tiles_text(tile: int | str | None, max_memory: int | None, device: torch.device) -> str:
    if tile != "auto":
        return f"tiles of {tile} LR px" if tile else "untiled"
    return f"tiles auto: {hardware.memory_budget(device, max_memory).describe()}"


def upscale_jobs(model: SRDenseNet, jobs: list[tuple[Path, Path]], force: bool, show_progress: bool,
                 **options) -> tuple[int, int, int]:
    """Upscale (source, destination) pairs, one line per image; returns (written, skipped, failed).

    An existing destination is skipped unless ``force`` (an earlier run's result, or this run's before it was
    killed: rerunning continues where it stopped). A bad image, or one that does not fit in memory, is reported by
    name in one line and the others still run.
    """
    from tqdm import tqdm

    device = next(model.parameters()).device
    failures, skipped, written = 0, 0, 0
    for src, dst in tqdm(jobs, unit="image", disable=not show_progress, file=sys.stderr):
        if dst.exists() and not force:
            tqdm.write(f"{src}: {dst} exists, skipped (--force replaces it)", file=sys.stderr)
            skipped += 1
            continue
        try:
            shape_in, shape_out, tile = upscale_file(model, src, dst, **options)
        except InsufficientMemoryError as error:
            h, w = error.size
            tqdm.write(f"error: {src} ({w}x{h} px): {error}; {error.hint(device)}", file=sys.stderr)
            failures += 1
        except (imgproc.ImageReadError, imgproc.ImageWriteError) as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failures += 1
        except (ValueError, TypeError, MemoryError) as error:
            tqdm.write(f"error: {src}: {error}", file=sys.stderr)
            failures += 1
        else:
            written += 1
            tiles = f"tiles of {tile} LR px" if tile else "untiled"
            tqdm.write(f"{src} -> {dst} ({shape_in[1]}x{shape_in[0]} -> {shape_out[1]}x{shape_out[0]}, {tiles})")
    return written, skipped, failures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cv2

    # A corrupt file is reported below, once, with its name: OpenCV's own log lines would only add noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    speaks = sharding.rank_from_env() == 0  # under torchrun, the other processes would repeat the same errors

    usage = None
    if args.max_memory is not None and args.tile != "auto":
        usage = f"--max-memory sets the budget of --tile auto; it does nothing with --tile {args.tile}"
    elif args.threads is not None and args.threads < 1:
        usage = f"--threads must be >= 1, got {args.threads}"
    try:
        if usage:
            raise UsageError(usage)
        jobs, any_folder = collect_jobs(args.input, args.output)
        device = resolve_device(args.device)
        backend, precision = resolve_plan(args.precision, device, args.backend)
    except ValueError as error:  # UsageError and bad device/precision/backend combinations
        if speaks:
            print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        for folder in sorted({dst.parent for _, dst in jobs}):  # check outputs before any work is done
            ensure_output_dir(folder, "-o/--output")
        model = load_model(args.weights, device)
    except (CheckpointError, OutputError) as error:
        if speaks:
            print(f"error: {error}", file=sys.stderr)
        return 1
    rank, world = sharding.init(device, args.threads)
    try:
        path = hardware.PRECISIONS[precision].inference
        if rank == 0:
            print(f"x{model.upscale_factor} model on {device}, {backend} {path}, "
                  f"{_tiles_text(args.tile, args.max_memory, device)}{', self-ensemble' if args.self_ensemble else ''}"
                  f"{f', {world} processes' if world > 1 else ''}", file=sys.stderr)
        options = dict(precision=args.precision, backend=args.backend, tile=args.tile, max_memory=args.max_memory,
                       self_ensemble=args.self_ensemble)
        mine = sharding.shard(jobs, rank, world)
        counts = upscale_jobs(model, mine, args.force, rank == 0 and (any_folder or len(jobs) > 1), **options)
        written, skipped, failures = (sum(c) for c in zip(*sharding.gather(counts, world)))
    finally:
        sharding.finish()
    if rank == 0 and len(jobs) > 1:  # a single image's own line says it all
        print(f"{written} written, {skipped} skipped (already there), {failures} failed, of {len(jobs)} images"
              f"{f' ({world} processes)' if world > 1 else ''}", file=sys.stderr)
        if failures:
            print(f"error: {failures} of {len(jobs)} images failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
