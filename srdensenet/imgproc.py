"""Image operations for super-resolution: MATLAB-exact bicubic resize, YCbCr, crops and the evaluation protocol.

Everything that decides a reported PSNR lives here, so it follows docs/protocol.md to the letter:

* ``imresize`` reproduces MATLAB's ``imresize(..., 'bicubic')`` (Keys cubic, a = -0.5; antialiasing when
  shrinking; symmetric borders; separable, smaller scale factor first). OpenCV's and PIL's bicubic differ in kernel,
  antialiasing and borders and shift PSNR by 0.1-3 dB, so they are never used for LR generation or the baseline.
* ``rgb_to_ycbcr`` is MATLAB's ``rgb2ycbcr`` on doubles (Y in [16, 235], not rounded).
* ``make_lr`` / ``bicubic_upscale`` / ``y_channel`` are the protocol steps built from those two.

Conventions used throughout:

* Images are numpy arrays, HxW (one channel) or HxWxC, channels in **RGB** order (as ``image_files`` reads and
  writes them).
* Integer images are uint8 (0..255) or uint16 (0..65535); float images hold values in [0, 1] (``to_float01``),
  except YCbCr, which is in MATLAB's [0, 255] scale (Y in [16, 235]) as floats.
* Tensors are NCHW float.

Why hand-written rather than ``bicubic-pytorch`` or ``resize-right``: MATLAB's algorithm is ~40 lines (the weights
and indices in ``_contributions``), and owning them lets the numpy path (a gather per tap, summed in MATLAB's order)
and the torch path (the same weights as a dense matrix, one matmul per dimension) share one cached computation, so
they agree by construction. ``resize-right`` differs from MATLAB by default in its boundary handling, and neither is
worth a dependency for 40 lines; the tests check this code against an independent, loop-based reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "imresize",
    "imresize_torch",
    "rgb_to_ycbcr",
    "bgr_to_ycbcr",
    "ycbcr_to_rgb",
    "quantize_uint8",
    "to_float01",
    "image_to_tensor",
    "tensor_to_image",
    "mod_crop",
    "paired_random_crop",
    "paired_augment",
    "random_symmetry",
    "y_channel_torch",
    "make_lr",
    "bicubic_upscale",
    "y_channel",
]


# --------------------------------------------------------------------------------------------------------------------
# MATLAB bicubic imresize
# --------------------------------------------------------------------------------------------------------------------

_CUBIC_WIDTH = 4.0  # support of the Keys kernel, in input pixels (2 on each side)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5, the kernel MATLAB's ``imresize`` calls 'bicubic'."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    # Written exactly as MATLAB's cubic() so the float64 results match bit for bit where possible.
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=256)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions()``: for each output pixel, the weights (out_len, P) and 0-based input indices
    (out_len, P) of the input pixels it is made of, along one dimension.

    Cached because training calls it with the same few sizes millions of times. The arrays are read-only: shared.
    """
    kernel_width = _CUBIC_WIDTH
    if scale < 1:
        # Antialiasing: shrinking by `scale` stretches the kernel by 1/scale (and scales its height by `scale`),
        # so it low-pass filters at the new Nyquist frequency instead of aliasing.
        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * d)

        kernel_width = kernel_width / scale
    else:
        kernel = _cubic

    # Output pixel x (1-based) maps to input coordinate u (1-based): pixel centres of both grids line up.
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2  # MATLAB takes 2 spare taps; their weights are 0 and dropped below
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input indices, may be out of range
    weights = kernel(u[:, None] - idx)
    # Normalise before mirroring, as MATLAB does, so every output pixel's weights sum to exactly 1.
    weights = weights / weights.sum(axis=1, keepdims=True)

    # MATLAB's symmetric padding: index sequence 1..n, n..1 repeated, i.e. mirror with the edge pixel duplicated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]

    # Drop tap columns that are zero for every output pixel, as MATLAB does (saves work, changes no sum).
    keep = np.any(weights != 0, axis=0)
    weights, indices = np.ascontiguousarray(weights[:, keep]), np.ascontiguousarray(indices[:, keep])
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


@functools.lru_cache(maxsize=256)
def _resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The same operator as a dense (out_len, in_len) float64 matrix, ``output = M @ input``, for the torch path:
    on a GPU (and for batches on a CPU) one matmul beats a gather per tap. Read-only: it is shared."""
    weights, indices = _contributions(in_len, out_len, scale)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)  # add.at: mirrored taps may land on the same input pixel
    matrix.setflags(write=False)
    return matrix


def _resize_along(image: np.ndarray, dim: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One 1-D pass of an HxWxC float64 array along ``dim`` (0 or 1).

    Loops over the P taps (at most 18 for x1/4), each a vectorised gather + multiply-add over the whole image,
    adding them in MATLAB's order so the float64 sums round as ``imresizemex``'s do (this matters for uint8, where
    a sum landing on .5 decides the rounding). The work grows with P, not with the input length as a dense matmul's
    does; measured on a loaded 2-core CPU the two are within ~2x of each other either way, so exactness decides.
    """
    shape = list(image.shape)
    shape[dim] = weights.shape[0]
    weight_shape = (-1, 1, 1) if dim == 0 else (1, -1, 1)
    out = np.empty(shape)
    term = np.empty(shape)  # reused: no allocation per tap
    for k in range(weights.shape[1]):
        np.take(image, indices[:, k], axis=dim, out=term)
        term *= weights[:, k].reshape(weight_shape)
        if k == 0:
            out, term = term, out
        else:
            out += term
    return out


def _plan(in_hw: tuple[int, int], scale: float | None, output_shape: tuple[int, int] | None):
    """Per-dimension (scale, out_len) and the order MATLAB resizes the two dimensions in."""
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale or output_shape")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        # MATLAB rounds the output size up; for the integer factors we use, ceil(n * (1/s)) == n / s exactly.
        out_hw = (int(math.ceil(in_hw[0] * scale)), int(math.ceil(in_hw[1] * scale)))
    else:
        out_hw = (int(output_shape[0]), int(output_shape[1]))
        if min(out_hw) < 1:
            raise ValueError(f"imresize: output_shape must be positive, got {output_shape}")
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    # MATLAB resizes the dimension with the smallest scale factor first (it shrinks before it enlarges, which is
    # cheaper); the sort is stable, so with equal factors rows (dimension 1, height) go first.
    order = sorted((0, 1), key=lambda d: scales[d])
    return scales, out_hw, order


def _rows_of(image: np.ndarray, taps: tuple[np.ndarray, np.ndarray], rows: tuple[int, int],
             out_len: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The input rows that output rows [r0, r1) read, and those rows' taps re-indexed into them."""
    r0, r1 = rows
    if not 0 <= r0 < r1 <= out_len:
        raise ValueError(f"imresize: rows must satisfy 0 <= r0 < r1 <= {out_len}, got {rows}")
    weights, indices = taps[0][r0:r1], taps[1][r0:r1]
    needed = np.unique(indices)
    return image[needed], (weights, np.searchsorted(needed, indices))


def imresize(image: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             rows: tuple[int, int] | None = None) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` (or ``imresize(image, output_shape, 'bicubic')``).

    ``image`` is HxW or HxWxC. Float input of any precision is computed and returned as float64 (MATLAB on doubles).
    uint8/uint16 input is computed in float64 on the raw integer values and, like MATLAB, rounded (half away from
    zero) and saturated back to the input type after *each* of the two 1-D passes, because MATLAB's ``imresizemex``
    returns the class of its input and the second pass reads the rounded first pass.

    ``rows=(r0, r1)``: only output rows r0..r1-1, equal bit for bit to ``imresize(...)[r0:r1]`` (every output value
    is the same sum of the same taps), so a large result can be made in strips without holding all of it.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: expected HxW or HxWxC, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"imresize: empty image of shape {image.shape}")
    integer_max = None
    if image.dtype in (np.uint8, np.uint16):
        integer_max = float(np.iinfo(image.dtype).max)
    elif not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"imresize: expected a float, uint8 or uint16 image, got {image.dtype}")

    scales, out_hw, order = _plan(image.shape[:2], scale, output_shape)
    row_taps = _contributions(image.shape[0], out_hw[0], scales[0])
    if rows is not None:
        image, row_taps = _rows_of(image, row_taps, rows, out_hw[0])
    out = image.astype(np.float64)
    if out.ndim == 2:
        out = out[:, :, None]
    for dim in order:
        weights, indices = row_taps if dim == 0 else _contributions(out.shape[1], out_hw[1], scales[1])
        out = _resize_along(out, dim, weights, indices)
        if integer_max is not None:
            out = np.clip(np.floor(out + 0.5), 0.0, integer_max)  # round half up == MATLAB's round for x >= -0.5
    if image.ndim == 2:
        out = out[:, :, 0]
    if integer_max is not None:
        return out.astype(image.dtype)
    return out


@functools.lru_cache(maxsize=64)
def _resize_matrix_torch(in_len: int, out_len: int, scale: float, device: torch.device) -> torch.Tensor:
    # The numpy path's weights as a float64 tensor, moved to the device once per (size, device).
    return torch.from_numpy(np.array(_resize_matrix(in_len, out_len, scale))).to(device)


def imresize_torch(x: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB bicubic ``imresize`` by ``scale`` of a float tensor (..., H, W), typically NCHW, on any device.

    Two matmuls with cached dense weight matrices (rows first for equal scales, as MATLAB), computed in float64 and
    returned in x's dtype, with autocast disabled. Why: under bf16 autocast, TF32 (common in CUDA training scripts)
    or ``set_float32_matmul_precision("medium")`` a float32 matmul silently loses precision -- up to ~1/255 on LR
    pixels -- and LR generation must not depend on those global switches. The cost is negligible (patch-sized
    matrices). No rounding: quantise afterwards if the protocol needs uint8. Differentiable.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"imresize_torch: expected a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"imresize_torch: expected (..., H, W), got shape {tuple(x.shape)}")
    scales, out_hw, order = _plan((x.shape[-2], x.shape[-1]), scale, None)
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = x.to(torch.float64)
        for dim in order:
            matrix = _resize_matrix_torch(out.shape[-2 + dim], out_hw[dim], scales[dim], out.device)
            if dim == 0:
                out = torch.matmul(matrix, out)  # (oh, H) @ (..., H, W) -> (..., oh, W)
            else:
                out = torch.matmul(out, matrix.t())  # (..., H, W) @ (W, ow) -> (..., H, ow)
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Colour: MATLAB rgb2ycbcr / ycbcr2rgb (ITU-R BT.601, "studio swing")
# --------------------------------------------------------------------------------------------------------------------

# YCbCr = offset + M @ RGB, RGB in [0, 1], YCbCr in [0, 255] scale. These are MATLAB's coefficients
# (65.481, not the 64.738 typo that several SR repos copy). Row sums: Y 219 (so white -> 235), Cb/Cr 0.
_YCBCR_MATRIX = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])
_YCBCR_INVERSE = np.linalg.inv(_YCBCR_MATRIX)  # exact inverse, so ycbcr_to_rgb(rgb_to_ycbcr(x)) == x to ~1e-15


def _as_float_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected an HxWx3 image, got shape {img.shape}")
    return to_float01(img)


def rgb_to_ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` on doubles. RGB HxWx3 float in [0, 1] (uint8/uint16 are scaled to [0, 1] first).

    Returns float64 YCbCr HxWx3 on MATLAB's [0, 255] scale (Y in [16, 235], Cb/Cr in [16, 240]), or Y alone (HxW)
    with ``y_only``. Not rounded: rounding Y to integers (as ``rgb2ycbcr`` on uint8 does) moves PSNR by ~0.04 dB.
    """
    rgb = _as_float_rgb(img, "rgb_to_ycbcr")
    if y_only:
        m = _YCBCR_MATRIX[0]
        # Explicit sum in MATLAB's order rather than a dot product: keeps the rounding of Y deterministic.
        return _YCBCR_OFFSET[0] + (m[0] * rgb[..., 0] + m[1] * rgb[..., 1] + m[2] * rgb[..., 2])
    return rgb @ _YCBCR_MATRIX.T + _YCBCR_OFFSET


def y_channel_torch(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb_to_ycbcr(..., y_only=True)`` for float tensors (N, 3, H, W) in [0, 1] -> Y (N, 1, H, W) on the [0, 255]
    scale, same coefficients and summation order (bit-identical in float64). Used to make training inputs on the
    training device."""
    m = _YCBCR_MATRIX[0]
    return _YCBCR_OFFSET[0] + (m[0] * rgb[:, 0:1] + m[1] * rgb[:, 1:2] + m[2] * rgb[:, 2:3])


def bgr_to_ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """``rgb_to_ycbcr`` for images in OpenCV's BGR channel order."""
    return rgb_to_ycbcr(np.asarray(img)[..., ::-1], y_only=y_only)


def ycbcr_to_rgb(img: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycbcr``: YCbCr HxWx3 float on the [0, 255] scale -> RGB float64 in [0, 1], not clipped.

    Not clipped because an SR Y with bicubic Cb/Cr can leave the RGB gamut; callers clip/quantise for display.
    """
    ycc = np.asarray(img, dtype=np.float64)
    if ycc.ndim != 3 or ycc.shape[2] != 3:
        raise ValueError(f"ycbcr_to_rgb: expected an HxWx3 image, got shape {ycc.shape}")
    return (ycc - _YCBCR_OFFSET) @ _YCBCR_INVERSE.T


def quantize_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8: ``clip(floor(255*x + 0.5), 0, 255)``, i.e. MATLAB's ``im2uint8``.

    ``np.round`` rounds half to even (2.5 -> 2); MATLAB rounds half away from zero (2.5 -> 3). After clipping to
    [0, 1] every value is >= 0, where half-away-from-zero equals ``floor(v + 0.5)``. Computed in float64.
    Raises ValueError on NaN/inf: a diverged model must not score as black pixels.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("quantize_uint8: image contains NaN or infinite values")
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_float01(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 image -> float64 in [0, 1]. Float input is assumed to be in [0, 1] already (copied as float64)."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float64)
    raise TypeError(f"to_float01: expected uint8, uint16 or float, got {img.dtype}")


# --------------------------------------------------------------------------------------------------------------------
# numpy <-> torch
# --------------------------------------------------------------------------------------------------------------------


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """Float image HxW or HxWxC -> float32 tensor 1xCxHxW (HxW gives C = 1). Integer images: use to_float01 first."""
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"image_to_tensor: expected a float image (see to_float01), got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"image_to_tensor: expected HxW or HxWxC, got shape {img.shape}")
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw).unsqueeze(0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """Tensor 1xCxHxW or CxHxW -> float32 numpy HxWxC, or HxW when C = 1. Values are not clipped."""
    t = t.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor_to_image: expected a batch of one, got shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"tensor_to_image: expected 1xCxHxW or CxHxW, got shape {tuple(t.shape)}")
    img = t.to(device="cpu", dtype=torch.float32).permute(1, 2, 0).numpy()
    return img[:, :, 0].copy() if img.shape[2] == 1 else np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------------------------------------
# Crops and augmentation
# --------------------------------------------------------------------------------------------------------------------


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of ``scale`` (docs/protocol.md, step 1).

    Returns a view."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def paired_random_crop(
    lr: np.ndarray, hr: np.ndarray, lr_patch_size: int, scale: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut an ``lr_patch_size`` LR patch and the HR patch ``scale`` times larger covering the same area."""
    lh, lw = lr.shape[:2]
    hh, hw = hr.shape[:2]
    if (hh, hw) != (lh * scale, lw * scale):
        raise ValueError(f"paired_random_crop: HR {hr.shape[:2]} is not {scale}x LR {lr.shape[:2]}")
    if lh < lr_patch_size or lw < lr_patch_size:
        raise ValueError(f"paired_random_crop: LR {lr.shape[:2]} is smaller than the patch size {lr_patch_size}")
    top = int(rng.integers(0, lh - lr_patch_size + 1))
    left = int(rng.integers(0, lw - lr_patch_size + 1))
    hp = lr_patch_size * scale
    lr_patch = lr[top : top + lr_patch_size, left : left + lr_patch_size]
    hr_patch = hr[top * scale : top * scale + hp, left * scale : left * scale + hp]
    return lr_patch, hr_patch


def random_symmetry(rng: np.random.Generator, hflip: bool = True, rot90: bool = True
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """Draw one random flip / transpose and return it as a function to apply to any number of images.

    With both options every one of the 8 symmetries of the square is equally likely: horizontal flip, vertical flip
    and transpose, each with probability 1/2 (vertical flip and transpose make up the rotations, hence ``rot90``).
    The function returns contiguous copies, ready for ``torch.from_numpy``.
    """
    do_h = hflip and rng.random() < 0.5
    do_v = rot90 and rng.random() < 0.5
    do_t = rot90 and rng.random() < 0.5

    def apply(img: np.ndarray) -> np.ndarray:
        if do_h:
            img = img[:, ::-1]
        if do_v:
            img = img[::-1]
        if do_t:
            img = img.swapaxes(0, 1)
        return np.ascontiguousarray(img)

    return apply


def paired_augment(
    lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator, hflip: bool = True, rot90: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the same random flips / transpose (``random_symmetry``) to both images (HxW or HxWxC)."""
    apply = random_symmetry(rng, hflip, rot90)
    return apply(lr), apply(hr)


# --------------------------------------------------------------------------------------------------------------------
# The evaluation protocol (docs/protocol.md)
# --------------------------------------------------------------------------------------------------------------------


def _check_uint8_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise TypeError(f"{name}: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    return img


def make_lr(hr_rgb_uint8: np.ndarray, scale: int) -> np.ndarray:
    """Protocol step 2: LR = quantise(MATLAB imresize(HR as doubles in [0, 1], 1/scale)) as uint8 RGB.

    The caller mod-crops HR first (``mod_crop``) and scores against that same cropped HR; an HR whose size is not a
    multiple of ``scale`` raises instead of being cropped here, so the two can never silently disagree.
    """
    hr = _check_uint8_rgb(hr_rgb_uint8, "make_lr")
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"make_lr: HR size {h}x{w} is not a multiple of {scale}; mod_crop it first")
    lr = imresize(to_float01(hr), scale=1.0 / scale)
    assert lr.shape[:2] == (h // scale, w // scale)
    return quantize_uint8(lr)


def bicubic_upscale(lr_rgb_uint8: np.ndarray, scale: int) -> np.ndarray:
    """Protocol step 6 (and the Cb/Cr of step 7): MATLAB imresize of the uint8 RGB LR as doubles by ``scale``,
    quantised to uint8 RGB."""
    lr = _check_uint8_rgb(lr_rgb_uint8, "bicubic_upscale")
    return quantize_uint8(imresize(to_float01(lr), scale=float(scale)))


def y_channel(rgb_uint8: np.ndarray) -> np.ndarray:
    """Protocol step 3: Y of a uint8 RGB image as float64 in [16, 235], not rounded (feed the model Y / 255)."""
    return rgb_to_ycbcr(_check_uint8_rgb(rgb_uint8, "y_channel"), y_only=True)

