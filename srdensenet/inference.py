"""The inference API: load a model, upscale an image array, a Y channel or a photo file.

    model = load_model()                     # the released x4 weights; or load_model("run/checkpoints/best.pth")
    sr = upscale(model, rgb_uint8)           # same dtype/channels, scale x the size
    y_hr = predict_y(model, y_lr, tile=128)  # Y in [0, 1] -> Y in [0, 1] (float32, not clamped)
    estimate_memory(model, (3000, 4000), channels=3)          # bytes upscale would need, untiled
    upscale_file(model, Path("in.jpg"), Path("out.png"))     # a photo file: upright, profile and EXIF/XMP carried
    upscale(model, rgb_uint8, outscale=2.5)                   # 2.5x the size from a x4 model (resized, see below)

The model upscales the Y channel; Cb/Cr and alpha are upscaled with MATLAB bicubic (docs/protocol.md, step 7).
Grayscale stays grayscale, 16-bit images stay 16-bit, and outputs are written atomically. ``outscale`` (1 to the
model's scale, fractions included) makes the output that many times the input size, rounded to whole pixels: the SR
Y is resized with MATLAB bicubic (antialiased when shrinking), Cb/Cr and alpha are interpolated from the input straight
to that size with the same filter; a model trained at that scale does better. Files: photo_metadata.py
applies the EXIF orientation and carries the ICC profile, EXIF and XMP (docs/inference.md, "Photos").

``precision``: "auto" (per device: hardware.AUTO_PRECISION), "fp32" (the eager reference), or "fp32-cl", "bf16",
"fp16" (CUDA): the fast path in that dtype (runners.py). ``backend="onnxruntime"``: ONNX Runtime, fp32, CPU.
``tile``: "auto" (untiled when the estimated peak fits the memory budget, else the largest tile that does; memory.py),
0 (untiled) or an LR tile size; tiles overlap by the receptive field, so the output does not depend on them
(tiling.py). ``self_ensemble``: the mean of the outputs for the 8 flips/transposes. docs/inference.md says more.
The command line over this API is cli/upscale.py (``inference.py``, ``srdensenet upscale``).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import imgproc, memory, runners, system_memory, tiling
from .checkpoint import model_from_checkpoint
from .hardware import resolve_device
from .image_header import DEFAULT_MAX_PIXELS
from .memory import estimate_memory, plan_memory
from .model import SRDenseNet
from .released import default_weights
from .runners import resolve_plan

__all__ = ["load_model", "upscale", "predict_y", "upscale_file", "estimate_memory", "output_size",
           "WrittenAsPNGWarning"]


class WrittenAsPNGWarning(UserWarning):
    """upscale_file(png_fallback=True) wrote an image as PNG because the format asked for cannot hold it (alpha or
    16-bit as JPEG, 16-bit as WebP); ``path``: the file written."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> SRDenseNet:
    """The checkpoint's model (EMA weights when present) in eval mode on ``device`` (None/"auto": CUDA if available).

    ``path``: None for the released x4 weights (``released.default_weights``), a training checkpoint (.pth), a
    release file (.safetensors or an older .pth), or a folder written by ``scripts/export_hub.py``
    (model.safetensors + config.json). Raises ``checkpoint.CheckpointError`` naming the
    file for a missing, unsafe or damaged checkpoint.
    """
    model = model_from_checkpoint(default_weights() if path is None else path)
    return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------------------------------------------------
# Y-channel prediction
# --------------------------------------------------------------------------------------------------------------------


def _predict(model: SRDenseNet, x: torch.Tensor, backend: str, precision: str, tile: int | None) -> torch.Tensor:
    """(N, 1, H, W) float32 -> (N, 1, sH, sW) float32 on the runner's device; LR tiles of at most tile x tile. A
    reduced-precision piece that is not finite is recomputed on the fp32 fast path."""
    runner = runners.prepared_runner(model, backend, precision)
    fallback = runners.prepared_runner(model, "torch", "fp32-cl") if runner.reduced else None
    return tiling.run_tiled(runner, x, model, tile, fallback, between_tiles=system_memory.release_free_heap)


def predict_y(model: SRDenseNet, y: torch.Tensor | np.ndarray, *, precision: str = "auto",
              tile: int | str | None = "auto", self_ensemble: bool = False, backend: str = "auto",
              max_memory: int | None = None) -> torch.Tensor | np.ndarray:
    """Super-resolve a Y channel in [0, 1] (the model's input convention) -> float32 Y in [0, 1], not clamped.

    ``y``: a tensor (N, 1, H, W) or (H, W), or a numpy array (H, W) or (N, 1, H, W). The result has the same type
    and layout at ``model.upscale_factor`` times the size; a tensor result is on the input tensor's device. The
    computation runs on the model's device. ``tile``: "auto" (the default: untiled when the estimated peak fits the
    memory budget, else the largest tile that does; ``plan_memory``), None or 0 (untiled), or an LR tile size.
    ``max_memory``: the budget in bytes for "auto" (default: system_memory.memory_budget). ``self_ensemble``: mean of
    the 8 flips/transposes, in fp32. ``precision`` / ``backend``: see the module docstring ("fp32" = the reference).
    Raises InsufficientMemoryError when no tile fits the budget or an allocation fails.
    """
    if not isinstance(model, SRDenseNet):
        raise TypeError(f"expected an SRDenseNet, got {type(model).__name__}")
    tiling.check_tile(tile)
    device = next(model.parameters()).device
    backend, precision = resolve_plan(precision, device, backend)
    is_numpy = isinstance(y, np.ndarray)
    x = torch.from_numpy(np.asarray(y, dtype=np.float32)) if is_numpy else y
    if not bool(torch.isfinite(x).all()):
        raise ValueError("predict_y: the input contains NaN or infinite values")
    if x.dim() not in (2, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"predict_y: expected (H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    size = (x.shape[0] if x.dim() == 4 else 1, *x.shape[-2:])
    plan = plan_memory(model, size, tile=tile, max_memory=max_memory, precision=precision, backend=backend,
                       self_ensemble=self_ensemble)
    out_device = x.device
    with memory.reporting_out_of_memory(plan, model, size, precision=precision, backend=backend,
                                        self_ensemble=self_ensemble), torch.inference_mode():
        x4 = x.reshape(1, 1, *x.shape) if x.dim() == 2 else x
        x4 = x4.to(device=device, dtype=torch.float32)
        if self_ensemble:
            result = tiling.ensemble_mean(lambda t: _predict(model, t, backend, precision, plan.tile), x4)
        else:
            result = _predict(model, x4, backend, precision, plan.tile)
        result = result.reshape(result.shape[-2:]) if x.dim() == 2 else result
        result = result.cpu().numpy() if is_numpy else result.to(out_device).clone()  # .clone(): a normal tensor
    # The activations are freed now; glibc would keep their fragments and a long run would read them as growth.
    system_memory.release_free_heap()
    return result


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


def output_size(model: SRDenseNet, size: tuple[int, int], outscale: float | None = None) -> tuple[int, int]:
    """The (height, width) ``upscale`` makes of an image of ``size``: ``outscale`` (None: the model's scale) times
    it, rounded to whole pixels (halves up). ValueError unless 1 <= outscale <= model.upscale_factor."""
    scale = model.upscale_factor
    if outscale is None:
        return size[0] * scale, size[1] * scale
    if isinstance(outscale, bool) or not isinstance(outscale, int | float) or not 1 <= outscale <= scale:
        raise ValueError(f"outscale must be a number from 1 to the model's scale {scale}, got {outscale!r}")
    return tuple(max(1, math.floor(side * outscale + 0.5)) for side in size)


def upscale(model: SRDenseNet, image: np.ndarray, *, precision: str = "auto", tile: int | str | None = "auto",
            self_ensemble: bool = False, backend: str = "auto", max_memory: int | None = None,
            outscale: float | None = None) -> np.ndarray:
    """Super-resolve an image: HxWx3 RGB, HxWx4 RGBA, HxW or HxWx1 grayscale, uint8 or uint16.

    Returns the same dtype and channels at ``model.upscale_factor`` times the size, or ``outscale`` times it
    (``output_size``: 1 to the model's scale, fractions included). Colour: SR Y + MATLAB-bicubic Cb/Cr, converted
    back to RGB (docs/protocol.md, step 7); alpha: MATLAB bicubic. With ``outscale`` below the model's scale the SR Y
    is resized with MATLAB bicubic (antialiased) and Cb/Cr and alpha are interpolated from the input straight to the
    output size. Grayscale g is treated as the RGB image (g, g, g), as the evaluation protocol does (Y = 16 + 219 g).
    Options as in ``predict_y``; ``"auto"`` tiling also counts the memory of the colour conversion
    (``estimate_memory``, at the model's scale: an upper bound for a smaller ``outscale``). Raises
    InsufficientMemoryError.
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"upscale: expected a uint8 or uint16 image, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        return upscale(model, img[:, :, 0], precision=precision, tile=tile, self_ensemble=self_ensemble,
                       backend=backend, max_memory=max_memory, outscale=outscale)[:, :, None]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"upscale: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    if min(img.shape[:2]) < 1:
        raise ValueError(f"upscale: empty image of shape {img.shape}")
    size = output_size(model, img.shape[:2], outscale)
    # The model's own scale takes the unresized path: the same bits as without outscale.
    target = None if size == output_size(model, img.shape[:2]) else size
    sizes = dict(self_ensemble=self_ensemble, channels=img.shape[2] if img.ndim == 3 else 1, itemsize=img.itemsize)
    plan = plan_memory(model, img.shape[:2], tile=tile, max_memory=max_memory, precision=precision, backend=backend,
                       **sizes)
    options = dict(precision=precision, tile=plan.tile or 0, self_ensemble=self_ensemble, backend=backend)
    with memory.reporting_out_of_memory(plan, model, precision=precision, backend=backend, **sizes):
        if img.ndim == 2:
            out = _upscale_gray(model, img, options, target)
        else:
            out = _upscale_colour(model, img, options, target)
    system_memory.release_free_heap()  # the colour strips' fragments (predict_y released the model's)
    return out


def _strips(height: int, width: int, source_width: float | None = None) -> list[tuple[int, int]]:
    """Row ranges for the colour conversion, which runs strip by strip on memory.colour_workers() threads: together
    at most memory.STRIP_PIXELS pixels in flight, so a large output costs its own size plus a strip rather than ~100
    bytes per HR pixel of float64 planes. ``source_width``: the pixels of the model's output one output row is
    resized from (outscale), when that is more than ``width``."""
    pixels = min(memory.STRIP_PIXELS_EACH, memory.STRIP_PIXELS // memory.colour_workers())
    step = max(1, int(pixels // max(1, source_width or width)))
    return [(r0, min(height, r0 + step)) for r0 in range(0, height, step)]


def _each_strip(convert, strips: list[tuple[int, int]]) -> None:
    """convert(rows) for every strip, on memory.colour_workers() threads: numpy lets go of the GIL in the resampling
    and the colour matrices, and each strip's arithmetic is the same, so the bits do not change."""
    workers = min(memory.colour_workers(), len(strips))
    if workers == 1:
        for rows in strips:
            convert(rows)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="srdensenet-colour") as pool:
        for _ in pool.map(convert, strips):  # (re-raises the first strip's error)
            pass


def _hr_rows(sr_y: np.ndarray, rows: tuple[int, int], target: tuple[int, int] | None) -> np.ndarray:
    """Output rows of the SR Y as float64: as the model made them, or resized to ``target`` (MATLAB bicubic, which
    antialiases when it shrinks)."""
    if target is None:
        return sr_y[rows[0]:rows[1]].astype(np.float64)
    return imgproc.imresize(sr_y, output_shape=target, rows=rows)


def _lr_rows(plane: np.ndarray, rows: tuple[int, int], scale: float, target: tuple[int, int] | None) -> np.ndarray:
    """Output rows of an input plane (Cb/Cr, alpha) interpolated with MATLAB bicubic: by the model's scale, or
    straight to ``target`` (one resampling rather than up, then down)."""
    if target is None:
        return imgproc.imresize(plane, scale=scale, rows=rows)
    return imgproc.imresize(plane, output_shape=target, rows=rows)


def _out_strips(sr_y: np.ndarray, target: tuple[int, int] | None) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    if target is None:
        return sr_y.shape, _strips(*sr_y.shape)
    return target, _strips(*target, source_width=sr_y.shape[0] * sr_y.shape[1] / target[0])


def _upscale_gray(model: SRDenseNet, img: np.ndarray, options: dict, target: tuple[int, int] | None) -> np.ndarray:
    y = 16.0 + 219.0 * imgproc.to_float01(img)  # rgb2ycbcr of (g, g, g): the Y coefficients sum to 219
    sr_y = predict_y(model, (y / 255.0).astype(np.float32), **options)
    del y
    shape, strips = _out_strips(sr_y, target)
    out = np.empty(shape, img.dtype)

    def convert(rows: tuple[int, int]) -> None:
        out[rows[0]:rows[1]] = _quantize((_hr_rows(sr_y, rows, target) * 255.0 - 16.0) / 219.0, img.dtype)

    _each_strip(convert, strips)
    return out


def _upscale_colour(model: SRDenseNet, img: np.ndarray, options: dict, target: tuple[int, int] | None) -> np.ndarray:
    # Strip by strip, each the same per-pixel arithmetic as on the whole image (imresize(rows=) and the row-wise
    # colour matrices give the same bits), so the result equals the whole-image formula (evaluation.colour_sr).
    scale = float(model.upscale_factor)
    ycc = imgproc.rgb_to_ycbcr(img[:, :, :3])
    cbcr = np.ascontiguousarray(ycc[:, :, 1:])
    sr_y = predict_y(model, (ycc[:, :, 0] / 255.0).astype(np.float32), **options)
    del ycc
    shape, strips = _out_strips(sr_y, target)
    out = np.empty(shape + (img.shape[2],), img.dtype)

    def convert(rows: tuple[int, int]) -> None:
        strip_y = _hr_rows(sr_y, rows, target)[:, :, None] * 255.0
        ycc_hr = np.concatenate([strip_y, _lr_rows(cbcr, rows, scale, target)], axis=2)
        out[rows[0]:rows[1], :, :3] = _quantize(imgproc.ycbcr_to_rgb(ycc_hr), img.dtype)
        if img.shape[2] == 4:
            out[rows[0]:rows[1], :, 3] = _lr_rows(img[:, :, 3], rows, scale, target)

    _each_strip(convert, strips)
    return out


def fallback_png(dst: Path, dtype: np.dtype, has_alpha: bool) -> tuple[Path, str] | None:
    """(the PNG beside ``dst``, why) when ``dst``'s format cannot hold such pixels (alpha or 16-bit as JPEG, 16-bit as
    WebP), else None: where ``upscale_file(png_fallback=True)`` writes such an image instead."""
    from . import image_files

    reason = image_files.unwritable_reason(dst.suffix, dtype, has_alpha)
    return None if reason is None else (dst.with_suffix(".png"), reason)


def upscale_file(model: SRDenseNet, src: Path, dst: Path, *, quality: int | None = None,
                 strip_metadata: bool = False, outscale: float | None = None, png_fallback: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, **options
                 ) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
    """Read, upscale and atomically write one photo, carrying its metadata; the format follows ``dst``'s extension.

    The EXIF orientation is applied on reading, so the output is upright. The ICC profile, EXIF and XMP are written
    into formats that hold them, with Orientation 1 and the new dimensions (``photo_metadata.output_metadata``);
    ``strip_metadata`` drops EXIF and XMP (the profile stays). Grayscale files (R = G = B) are written as grayscale,
    unless an RGB profile is carried (it would not describe gray pixels). ``quality``: JPEG/WebP (1-100).
    A format that cannot hold the image (alpha or 16-bit as JPEG, 16-bit as WebP) raises ImageWriteError before any
    work, or with ``png_fallback`` writes it as PNG beside ``dst`` (``fallback_png``) and warns
    WrittenAsPNGWarning, whose ``path`` is the file written.
    Returns the input and output shapes and the tile it ran with (None: untiled). Options as in ``upscale``
    (``outscale`` too). Warnings (a profile not carried) go through ``warnings``. Only a regular file is read, and
    one whose header claims more than ``max_pixels`` pixels is refused before it is decoded (ImageReadError), so
    the memory plan never sees it.
    """
    from . import image_files, photo_metadata  # here: Pillow is for files; training imports this module

    rgb, alpha, metadata = photo_metadata.read_photo(src, max_pixels)
    fallback = fallback_png(dst, rgb.dtype, alpha is not None) if png_fallback else None
    if fallback is None:
        photo_metadata.check_writable(dst.suffix, rgb.dtype, alpha is not None, src)
    elif fallback[0].resolve() == Path(src).resolve():
        raise image_files.ImageWriteError(f"{src}: {fallback[1]}, and the PNG it would be written as instead is "
                                             f"the input itself; choose another output")
    if strip_metadata:
        metadata = metadata.stripped()
    rgb_profile = metadata.icc_profile and photo_metadata.profile_colour_space(metadata.icc_profile) == "RGB"
    gray = not rgb_profile and bool((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all())
    image = rgb[:, :, 0] if gray else rgb
    if alpha is not None:
        image = np.concatenate([np.repeat(image[:, :, None], 3, axis=2) if gray else image, alpha[:, :, None]], axis=2)
    del rgb, alpha
    output_size(model, image.shape[:2], outscale)  # a bad outscale fails before the work
    plan = plan_memory(model, image.shape[:2], tile=options.pop("tile", "auto"),
                       max_memory=options.pop("max_memory", None), channels=image.shape[2] if image.ndim == 3 else 1,
                       itemsize=image.itemsize, **options)
    out = upscale(model, image, tile=plan.tile or 0, outscale=outscale, **options)
    target = dst if fallback is None else fallback[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    photo_metadata.write_photo(target, out, metadata, quality)
    if fallback is not None:
        warnings.warn(WrittenAsPNGWarning(f"{fallback[1]}; written as {target}", target), stacklevel=2)
    return image.shape, out.shape, plan.tile
