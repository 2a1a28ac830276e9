"""Super-resolve images with a trained SRDenseNet: a Python API and a command-line tool.

    python inference.py --weights weights/srdensenet_x4_all_paper.safetensors -i photo.jpg folder/ -o results/
    python inference.py --weights W -i in.png -o out.png --tile 128 --self-ensemble
    torchrun --nproc_per_node 4 inference.py --weights W -i frames/ -o out/     # images split across 4 processes
    python inference.py --weights W -i big.jpg -o out/ --max-memory 4GB      # tiles chosen to fit 4 GiB

Python API::

    model = load_model("weights/srdensenet_x4_all_paper.safetensors")  # eval mode, model.upscale_factor known
    sr = upscale(model, rgb_uint8)           # same dtype/channels, scale x the size
    y_hr = predict_y(model, y_lr, tile=128)  # Y in [0, 1] -> Y in [0, 1] (float32, not clamped)
    estimate_memory(model, (3000, 4000), channels=3)          # bytes upscale would need, untiled
    upscale_file(model, Path("in.jpg"), Path("out.png"))     # a photo file: upright, profile and EXIF/XMP carried

The model upscales the Y channel; Cb/Cr and alpha are upscaled with MATLAB bicubic (docs/protocol.md, step 7).
Grayscale stays grayscale, 16-bit images stay 16-bit, and outputs are written atomically. Files: photo_metadata.py
applies the EXIF orientation and carries the ICC profile, EXIF and XMP (docs/inference.md, "Photos").

``precision``: "auto" (per device: hardware.AUTO_PRECISION), "fp32" (the eager reference), or "fp32-cl", "bf16",
"fp16" (CUDA): the fast path in that dtype (runners.py). ``backend="onnxruntime"``: ONNX Runtime, fp32, CPU.
``tile``: "auto" (untiled when the estimated peak fits the memory budget, else the largest tile that does; memory.py),
0 (untiled) or an LR tile size; tiles overlap by the receptive field, so the output does not depend on them
(tiling.py). ``self_ensemble``: the mean of the outputs for the 8 flips/transposes. docs/inference.md says more.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import hardware
import image_files
import imgproc
import memory
import photo_metadata
import runners
import sharding
import tiling
from checkpoint import CheckpointError, model_from_checkpoint
from config import add_bool_option, memory_argument, tile_argument
from fileio import OutputError, ensure_output_dir, exit_quietly_on_broken_pipe
from hardware import resolve_device
from memory import InsufficientMemoryError, MemoryPlan, estimate_memory, plan_memory
from model import SRDenseNet
from runners import BACKENDS, PRECISIONS, clear_prepared, resolve_plan
from tiling import receptive_field, trunk_radius, upsampler_radius

__all__ = ["PRECISIONS", "BACKENDS", "load_model", "upscale", "predict_y", "upscale_file", "receptive_field",
           "upsampler_radius", "trunk_radius", "resolve_plan", "resolve_device", "clear_prepared", "estimate_memory",
           "plan_memory", "MemoryPlan", "InsufficientMemoryError", "main"]



def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> SRDenseNet:
    """The checkpoint's model (EMA weights when present) in eval mode on ``device`` (None/"auto": CUDA if available).

    ``path``: a training checkpoint (.pth), a release file (.safetensors or an older .pth), or a folder written by
    ``scripts/export_hub.py`` (model.safetensors + config.json). Raises ``checkpoint.CheckpointError`` naming the
    file for a missing, unsafe or damaged checkpoint.
    """
    model = model_from_checkpoint(path)
    return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------------------------------------------------
# Y-channel prediction
# --------------------------------------------------------------------------------------------------------------------


def _predict(model: SRDenseNet, x: torch.Tensor, backend: str, precision: str, tile: int | None) -> torch.Tensor:
    """(N, 1, H, W) float32 -> (N, 1, sH, sW) float32 on the runner's device; LR tiles of at most tile x tile. A
    reduced-precision piece that is not finite is recomputed on the fp32 fast path."""
    runner = runners.prepared_runner(model, backend, precision)
    fallback = runners.prepared_runner(model, "torch", "fp32-cl") if runner.reduced else None
    return tiling.run_tiled(runner, x, model, tile, fallback, between_tiles=memory.release_free_heap)


def predict_y(model: SRDenseNet, y: torch.Tensor | np.ndarray, *, precision: str = "auto",
              tile: int | str | None = "auto", self_ensemble: bool = False, backend: str = "auto",
              max_memory: int | None = None) -> torch.Tensor | np.ndarray:
    """Super-resolve a Y channel in [0, 1] (the model's input convention) -> float32 Y in [0, 1], not clamped.

    ``y``: a tensor (N, 1, H, W) or (H, W), or a numpy array (H, W) or (N, 1, H, W). The result has the same type
    and layout at ``model.upscale_factor`` times the size; a tensor result is on the input tensor's device. The
    computation runs on the model's device. ``tile``: "auto" (the default: untiled when the estimated peak fits the
    memory budget, else the largest tile that does; ``plan_memory``), None or 0 (untiled), or an LR tile size.
    ``max_memory``: the budget in bytes for "auto" (default: memory.memory_budget). ``self_ensemble``: mean of the
    8 flips/transposes, in fp32. ``precision`` / ``backend``: see the module docstring ("fp32" = the reference).
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
    plan = plan_memory(model, (x.shape[0] if x.dim() == 4 else 1, *x.shape[-2:]), tile=tile, max_memory=max_memory,
                       precision=precision, backend=backend, self_ensemble=self_ensemble)
    out_device = x.device
    with memory.reporting_out_of_memory(plan), torch.inference_mode():
        x4 = x.reshape(1, 1, *x.shape) if x.dim() == 2 else x
        x4 = x4.to(device=device, dtype=torch.float32)
        if self_ensemble:
            result = tiling.ensemble_mean(lambda t: _predict(model, t, backend, precision, plan.tile), x4)
        else:
            result = _predict(model, x4, backend, precision, plan.tile)
        result = result.reshape(result.shape[-2:]) if x.dim() == 2 else result
        result = result.cpu().numpy() if is_numpy else result.to(out_device).clone()  # .clone(): a normal tensor
    # The activations are freed now; glibc would keep their fragments and a long run would read them as growth.
    memory.release_free_heap()
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
    with memory.reporting_out_of_memory(plan):
        out = _upscale_gray(model, img, options) if img.ndim == 2 else _upscale_colour(model, img, options)
    memory.release_free_heap()  # the colour strips' fragments (predict_y released the model's)
    return out


def _strips(height: int, width: int) -> list[tuple[int, int]]:
    """Row ranges of at most memory.STRIP_PIXELS pixels: the colour conversion runs strip by strip, so a large output
    costs its own size plus a strip rather than ~100 bytes per HR pixel of float64 planes."""
    step = max(1, memory.STRIP_PIXELS // max(1, width))
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


FORMATS = {"png": (".png",), "jpg": (".jpg", ".jpeg"), "webp": (".webp",)}  # --format: its extensions


def _output_name(src: Path, fmt: str | None = None) -> str:
    """The output file name for ``src`` under --format ``fmt`` (None: lossless formats kept, the rest PNG, as an SR
    result should not be re-compressed unasked; "same": the input's format where it can be written, else PNG)."""
    suffix = src.suffix.lower()
    if fmt in FORMATS:
        return src.stem + FORMATS[fmt][0]
    keep = image_files.IMAGE_EXTENSIONS if fmt == "same" else image_files.LOSSLESS_EXTENSIONS
    return src.name if suffix in keep else src.stem + ".png"


def _check_format(fmt: str | None, src: Path, dst: Path) -> None:
    """-o name.ext names the format; a --format that contradicts it is a UsageError."""
    ext = dst.suffix.lower()
    wanted = FORMATS.get(fmt, ()) if fmt != "same" else (src.suffix.lower(),)
    if fmt is not None and ext not in wanted:
        raise UsageError(f"--format {fmt} contradicts -o {dst} (its extension names the format); drop one of them")


def images_under(folder: Path, skip: Path | None) -> list[Path]:
    """Images anywhere under folder, sorted; hidden files and folders, and the folder ``skip`` (an output folder
    inside the input), are never read."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        found.extend(here / f for f in sorted(files)
                     if not f.startswith(".") and Path(f).suffix.lower() in photo_metadata.PHOTO_EXTENSIONS)
    return found


def collect_jobs(inputs: list[str], output: str, fmt: str | None = None) -> tuple[list[tuple[Path, Path]], bool]:
    """(source, destination) pairs for the CLI, and whether any input was a folder.

    Folders are searched recursively and their tree is mirrored under the output folder (``in/a/b.jpg`` ->
    ``out/a/b.png``); a single input file may be given an output file name, whose extension names the format.
    ``fmt``: --format (png, jpg, webp, same; None: lossless formats kept, the rest PNG).
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
            found = images_under(path, skip)
            if not found:
                extensions = ", ".join(photo_metadata.PHOTO_EXTENSIONS)
                raise UsageError(f"{path}: folder holds no images ({extensions}), also in its sub-folders")
            jobs.extend((src, out / src.relative_to(path).parent / _output_name(src, fmt)) for src in found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if len(files) == 1 and not any_folder and out.suffix.lower() in image_files.IMAGE_EXTENSIONS and not out.is_dir():
        _check_format(fmt, files[0], out)
        jobs = [(files[0], out)]
    else:
        if out.suffix.lower() in image_files.IMAGE_EXTENSIONS and not out.is_dir():
            raise UsageError(f"-o {out}: several inputs need an output folder, not an image file name")
        jobs.extend((src, out / _output_name(src, fmt)) for src in files)
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        key = dst.resolve()
        if key == src.resolve():
            raise UsageError(f"{src}: the output would overwrite the input; choose another -o")
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    return jobs, any_folder


def upscale_file(model: SRDenseNet, src: Path, dst: Path, *, quality: int | None = None,
                 strip_metadata: bool = False, **options) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
    """Read, upscale and atomically write one photo, carrying its metadata; the format follows ``dst``'s extension.

    The EXIF orientation is applied on reading, so the output is upright. The ICC profile, EXIF and XMP are written
    into formats that hold them, with Orientation 1 and the new dimensions (``photo_metadata.output_metadata``);
    ``strip_metadata`` drops EXIF and XMP (the profile stays). Grayscale files (R = G = B) are written as grayscale,
    unless an RGB profile is carried (it would not describe gray pixels). ``quality``: JPEG/WebP (1-100).
    Returns the input and output shapes and the tile it ran with (None: untiled). Options as in ``upscale``.
    Warnings (a profile not carried) go through ``warnings``.
    """
    rgb, alpha, metadata = photo_metadata.read_photo(src)
    photo_metadata.check_writable(dst.suffix, rgb.dtype, alpha is not None, src)
    if strip_metadata:
        metadata = metadata.stripped()
    rgb_profile = metadata.icc_profile and photo_metadata.profile_colour_space(metadata.icc_profile) == "RGB"
    gray = not rgb_profile and bool((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all())
    image = rgb[:, :, 0] if gray else rgb
    if alpha is not None:
        image = np.concatenate([np.repeat(image[:, :, None], 3, axis=2) if gray else image, alpha[:, :, None]], axis=2)
    del rgb, alpha
    plan = plan_memory(model, image.shape[:2], tile=options.pop("tile", "auto"),
                       max_memory=options.pop("max_memory", None), channels=image.shape[2] if image.ndim == 3 else 1,
                       itemsize=image.itemsize, **options)
    out = upscale(model, image, tile=plan.tile or 0, **options)
    dst.parent.mkdir(parents=True, exist_ok=True)
    photo_metadata.write_photo(dst, out, metadata, quality)
    return image.shape, out.shape, plan.tile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint written by train.py, release .safetensors or hub "
                        "folder (EMA weights preferred)")
    parser.add_argument("-i", "--input", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created), or an image file name when there is a single input file")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fastest path within fp32 quality (on a CPU bf16 where a probe measured it "
                             "clearly faster, else fp32-cl; fp16 on CUDA); fp32: the eager reference; fp32-cl, bf16, "
                             "fp16 (CUDA): the fast path in that dtype")
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
    parser.add_argument("--format", choices=[*FORMATS, "same"],
                        help="output format (default: lossless inputs keep theirs, lossy ones become png; same: the "
                             "input's); -o name.ext for a single file names it by the extension")
    parser.add_argument("--quality", type=int, metavar="N", help="JPEG/WebP quality 1-100 (default: JPEG 95, WebP "
                        "lossless)")
    add_bool_option(parser, "--strip-metadata", "drop EXIF and XMP (date, camera, GPS) from the outputs; the colour "
                    "profile stays", default=False)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads per process (default: PyTorch's; under torchrun on a CPU, the node's cores "
                             "divided between its processes)")
    return parser


def _tiles_text(tile: int | str | None, max_memory: int | None, device: torch.device) -> str:
    if tile != "auto":
        return f"tiles of {tile} LR px" if tile else "untiled"
    return f"tiles auto: {memory.memory_budget(device, max_memory).describe()}"


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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shape_in, shape_out, tile = upscale_file(model, src, dst, **options)
            for warning in caught:
                tqdm.write(f"warning: {src}: {warning.message}", file=sys.stderr)
        except InsufficientMemoryError as error:
            h, w = error.size
            tqdm.write(f"error: {src} ({w}x{h} px): {error}; {error.hint(device)}", file=sys.stderr)
            failures += 1
        except (image_files.ImageReadError, image_files.ImageWriteError) as error:
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
    elif args.quality is not None and not 1 <= args.quality <= 100:
        usage = f"--quality must be 1-100, got {args.quality}"
    try:
        if usage:
            raise UsageError(usage)
        jobs, any_folder = collect_jobs(args.input, args.output, args.format)
        if args.quality is not None and not any(dst.suffix.lower() in photo_metadata.LOSSY_EXTENSIONS
                                                for _, dst in jobs):
            raise UsageError("--quality applies to JPEG and WebP outputs; none is written (see --format)")
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
        probe = hardware.auto_probe(device) if args.precision == "auto" and backend == "torch" else None
        if probe is not None:
            path += f" (auto: {probe.reason})"
        if rank == 0:
            print(f"x{model.upscale_factor} model on {device}, {backend} {path}, "
                  f"{_tiles_text(args.tile, args.max_memory, device)}{', self-ensemble' if args.self_ensemble else ''}"
                  f"{f', {world} processes' if world > 1 else ''}", file=sys.stderr)
        options = dict(precision=args.precision, backend=args.backend, tile=args.tile, max_memory=args.max_memory,
                       self_ensemble=args.self_ensemble, quality=args.quality, strip_metadata=args.strip_metadata)
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
