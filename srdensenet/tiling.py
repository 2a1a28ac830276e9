"""Tiling: the receptive field, tiles and upsampler windows, the tiled driver, and the self-ensemble.

An LR image is cut into tiles of at most ``tile`` x ``tile`` pixels (``spans``). The trunk of a runner (runners.py)
runs on each tile plus a margin of ``receptive_field(model)`` pixels, so the stitched output equals untiled inference
up to float rounding; the upsampler, whose 256-map tensors at 2x/4x resolution are the model's largest, runs on equal
windows of about ``upsampler_window`` pixels with its own small margin, tiled or not (``windows``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .model import SRDenseNet
from .runners import shape_bucket


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
# Tiles and windows
# --------------------------------------------------------------------------------------------------------------------


def check_tile(tile: int | str | None) -> None:
    """ValueError unless ``tile`` is "auto", None / 0 (untiled) or a positive number of LR pixels."""
    if tile is None or tile == "auto":
        return
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 0:
        raise ValueError(f"tile must be 'auto', 0/None (untiled) or a positive number of LR pixels, got {tile!r}")


def spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Split [0, length) into ceil(length / tile) near-equal spans of at most ``tile``."""
    n = math.ceil(length / tile)
    bounds = [round(i * length / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def upsampler_window(model: SRDenseNet) -> int:
    """LR size of the windows the upsampler runs on: 256 / 160 / 128 / 64 at x2 / x3 / x4 / x8, ~512 HR pixels: each
    of its 256-map tensors stays under ~270 MB at every scale, and the margins windows recompute cost a few % of the
    upsampler's time instead of a fifth (docs/inference.md, "Tiling")."""
    return max(32, 512 // model.upscale_factor // 16 * 16)


def _clip(a: int, b: int, margin: int, length: int) -> tuple[int, int]:
    return max(0, a - margin), min(length, b + margin)


def _window_length(extent: int, size: int, margin: int, bucketed: bool) -> tuple[int, int]:
    """(window length, padded length) for a line of ``extent`` pixels and windows of at most ~``size``.

    A line that fits is one window, padded to its shape_bucket when ``bucketed``. A longer one is cut into equal
    windows, rounded up to a multiple of 8 when ``bucketed``: at most size / 8 lengths, so still a fixed set.
    """
    if extent <= size:
        return extent, shape_bucket(extent) if bucketed else extent
    count = math.ceil((extent - 2 * margin) / (size - 2 * margin))
    window = -(-(extent - 2 * margin) // count) + 2 * margin
    window = min(extent, -(-window // 8) * 8) if bucketed else window
    return window, window


def windows(core: tuple[int, int], valid: tuple[int, int], length: int, size: int, margin: int,
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


def tile_extents(model: SRDenseNet, length: int, tile: int | None, bucketed: bool) -> tuple[int, int]:
    """(largest trunk input, largest padded upsampler window) along a side of ``length`` over the tiles of ``tile``
    (None: untiled), as forward_tile cuts them."""
    t_margin, u_margin, window = trunk_radius(model), upsampler_radius(model), upsampler_window(model)
    trunk = upsampler = 0
    for y0, y1 in spans(length, tile or length):
        a, b = _clip(y0, y1, t_margin + u_margin, length)
        trunk = max(trunk, shape_bucket(b - a) if bucketed else b - a)
        a, b = _clip(y0, y1, u_margin, length)
        upsampler = max(upsampler, _window_length(b - a, window, u_margin, bucketed)[1])
    return trunk, upsampler


def forward_tile(runner, x: torch.Tensor, core: tuple[int, int, int, int], out: torch.Tensor, model: SRDenseNet,
                 fallback=None) -> None:
    """Write the output for the LR region core = (y0, y1, x0, x1) of x into out.

    The trunk runs once on the core plus receptive_field(model) pixels of context; the upsampler then runs on equal
    windows of about upsampler_window pixels, keeping the outputs at least upsampler_radius pixels inside (windows).
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
    rows, padded_h = windows((y0, y1), _clip(y0, y1, u_margin, h), h, window, u_margin, runner.bucketed)
    cols, padded_w = windows((x0, x1), _clip(x0, x1, u_margin, w), w, window, u_margin, runner.bucketed)
    for uy0, uy1, ky0, ky1 in rows:
        for ux0, ux1, kx0, kx1 in cols:
            piece = runner.upsampler(features[..., uy0 - ty0:uy1 - ty0, ux0 - tx0:ux1 - tx0], (padded_h, padded_w))
            oy, ox = (ky0 - uy0) * scale, (kx0 - ux0) * scale
            piece = piece[..., oy:oy + (ky1 - ky0) * scale, ox:ox + (kx1 - kx0) * scale]
            if fallback is not None and not bool(torch.isfinite(piece).all()):
                if not _warned_nonfinite:
                    warnings.warn("reduced-precision inference produced non-finite values; recomputing in fp32",
                                  stacklevel=5)
                    _warned_nonfinite = True
                forward_tile(fallback, x, (ky0, ky1, kx0, kx1), out, model)
                continue
            out[..., ky0 * scale:ky1 * scale, kx0 * scale:kx1 * scale] = piece


_warned_nonfinite = False


def run_tiled(runner, x: torch.Tensor, model: SRDenseNet, tile: int | None, fallback=None,
              between_tiles: Callable[[], object] | None = None) -> torch.Tensor:
    """(N, 1, H, W) float32 -> (N, 1, sH, sW) float32 on the runner's device, in LR tiles of at most tile x tile
    (None: one tile), each through forward_tile. ``between_tiles`` is called after each tile when there are several
    (predict_y returns the freed heap there, or a tile's fragments would pile up)."""
    scale = model.upscale_factor
    n, _, h, w = x.shape
    device = getattr(runner, "device", torch.device("cpu"))
    out = torch.empty(n, 1, h * scale, w * scale, dtype=torch.float32, device=device)
    if tile is None:
        cores = [(0, h, 0, w)]
    else:
        cores = [(y0, y1, x0, x1) for y0, y1 in spans(h, tile) for x0, x1 in spans(w, tile)]
    for core in cores:
        forward_tile(runner, x, core, out, model, fallback)
        if len(cores) > 1 and between_tiles is not None:
            between_tiles()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Self-ensemble
# --------------------------------------------------------------------------------------------------------------------


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

