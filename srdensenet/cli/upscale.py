"""The upscaling command: ``inference.py`` and ``srdensenet upscale``, over the inference API (inference.py).

    srdensenet upscale photo.jpg folder/ -o results/                # the released x4 weights
    python inference.py -i photo.jpg folder/ -o results/             # the same, from a clone
    python inference.py --weights W -i in.png -o out.png --tile 128 --self-ensemble
    torchrun --nproc_per_node 4 inference.py --weights W -i frames/ -o out/     # images split across 4 processes
    python inference.py -i big.jpg -o out/ --max-memory 4GB          # tiles chosen to fit 4 GiB
    python inference.py -i photos/ -o out/ --outscale 2.5             # 2.5x the size from the x4 model

Folders are searched recursively and mirrored under the output folder; an output that exists is skipped before
PyTorch is even loaded (rerunning continues where a run stopped); a bad image is named in one line and the others go
on; a format that cannot hold an image (alpha or 16-bit as JPEG, 16-bit as WebP) gets it as PNG, said in one line;
Ctrl-C or SIGTERM ends the run with one line saying how many images are done (docs/inference.md, docs/errors.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .. import image_files
from ..choices import BACKENDS, INFERENCE_PRECISIONS
from ..config import MAX_PIXELS_HELP, add_bool_option
from ..fileio import OutputError, ensure_output_dir, hold_output
from ..folder_lock import FolderBusyError
from ..image_header import DEFAULT_MAX_PIXELS
from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Stopped, rank_zero, stoppable
from .options import (
    MAX_MEMORY_HELP,
    TILE_HELP,
    memory_argument,
    memory_hint,
    missing_package,
    pixel_count,
    tile_argument,
)

if TYPE_CHECKING:
    import torch

    from ..model import SRDenseNet


class UsageError(ValueError):
    """A command line that cannot be carried out as written: an option contradicting another, a path that does not
    exist (reported without a traceback, exit code 2)."""


class InputError(ValueError):
    """An input that exists but cannot be worked on, e.g. a folder without images (exit code 1)."""


FORMATS = image_files.OUTPUT_FORMATS  # --format: its extensions


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
                     if not f.startswith(".") and Path(f).suffix.lower() in image_files.PHOTO_EXTENSIONS)
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
                extensions = ", ".join(image_files.PHOTO_EXTENSIONS)
                raise InputError(f"{path}: folder holds no images ({extensions}), also in its sub-folders")
            jobs.extend((src, out / src.relative_to(path).parent / _output_name(src, fmt)) for src in found)
        elif path.exists():  # a FIFO or device too: the reader refuses it unopened, in one line naming it
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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    # Defaults are written into the help texts: ArgumentDefaultsHelpFormatter would add "(default: None)" after a help
    # that already says what happens without the option.
    parser = argparse.ArgumentParser(prog=prog, description="Upscale photos with SRDenseNet (x4 by default).",
                                     allow_abbrev=False)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files and/or folders of images (or -i)")
    parser.add_argument("--weights", help="checkpoint written by train.py, release .safetensors or hub folder (EMA "
                        "weights preferred); default: the released x4 weights")
    parser.add_argument("-i", "--input", nargs="+", default=[], help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created), or an image file name when there is a single input file")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                        help="auto (default): fastest path within fp32 quality (on a CPU bf16 where a probe measured "
                             "it clearly faster, else fp32-cl; fp16 on CUDA); fp32: the eager reference; fp32-cl, "
                             "bf16, fp16 (CUDA): the fast path in that dtype")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto/torch (default): PyTorch; onnxruntime: ONNX Runtime fp32 on the CPU (pip install "
                             "onnx onnxruntime)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--tile", type=tile_argument, default="auto", help=TILE_HELP)
    parser.add_argument("--max-memory", type=memory_argument, metavar="SIZE", help=MAX_MEMORY_HELP)
    parser.add_argument("--outscale", type=float, metavar="S",
                        help="make the output S times the input size, rounded to whole pixels: S from 1 to the "
                             "model's scale, fractions included; the model's result is resized with MATLAB bicubic "
                             "(antialiased). A model trained at that scale does better. Default: the model's scale")
    add_bool_option(parser, "--self-ensemble", "average the 8 flips/transposes (8x slower; default: off)",
                    default=False)
    add_bool_option(parser, "--force", "replace outputs that already exist (default: skip them and say so)",
                    default=False)
    parser.add_argument("--format", choices=[*FORMATS, "same"],
                        help="output format (default: lossless inputs keep theirs, lossy ones become png; same: the "
                             "input's); -o name.ext for a single file names it by the extension. An image the format "
                             "cannot hold (alpha or 16-bit as JPEG, 16-bit as WebP) is written as PNG, said in one "
                             "line")
    parser.add_argument("--quality", type=int, metavar="N", help="JPEG/WebP quality 1-100 (default: JPEG 95, WebP "
                        "lossless)")
    add_bool_option(parser, "--strip-metadata", "drop EXIF and XMP (date, camera, GPS) from the outputs; the colour "
                    "profile stays (default: kept)", default=False)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads per process (default: PyTorch's; under torchrun on a CPU, the node's cores "
                             "divided between its processes)")
    parser.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"{MAX_PIXELS_HELP} (default {DEFAULT_MAX_PIXELS})")
    return parser


def _tiles_text(tile: int | str | None, max_memory: int | None, device: torch.device) -> str:
    if tile != "auto":
        return f"tiles of {tile} LR px" if tile else "untiled"
    from ..system_memory import memory_budget

    return f"tiles auto: {memory_budget(device, max_memory).describe()}"


def finished_output(src: Path, dst: Path) -> tuple[Path, str | None] | None:
    """The output an earlier run left for this job, and why it is not ``dst`` (None: it is), or None when there is
    none. An image the format of ``dst`` cannot hold was written as PNG beside it: that PNG counts only when the image
    needs it (it is read to know: no PyTorch needed), so an unrelated PNG of another run is never taken for it."""
    if dst.exists():
        return dst, None
    png = dst.with_suffix(".png")
    if dst.suffix.lower() not in image_files.LOSSY_EXTENSIONS or not png.exists() or png.resolve() == src.resolve():
        return None
    from ..photo_metadata import read_photo

    try:
        rgb, alpha, _ = read_photo(src)
    except image_files.ImageReadError:
        return None  # the run says what is wrong with it
    reason = image_files.unwritable_reason(dst.suffix, rgb.dtype, alpha is not None)
    return (png, reason) if reason else None


@dataclasses.dataclass
class Progress:
    """What a run has done so far, for its last line (also when it is stopped)."""

    jobs: list[tuple[Path, Path]] | None = None
    force: bool = False
    any_folder: bool = False
    world_text: str = ""  # " (N processes)" under torchrun
    written: int = 0
    skipped: int = 0
    failed: int = 0
    written_as: set[Path] = dataclasses.field(default_factory=set)  # PNGs written instead of the asked format

    def done(self) -> int:
        """Jobs whose output exists now (under torchrun: every process's, as far as the files show)."""
        return sum(dst.exists() or dst.with_suffix(".png") in self.written_as for _, dst in self.jobs or [])

    def stopped_line(self, stop: Stopped) -> str:
        what = f"stopped by {stop.what}"
        if not self.jobs:
            return f"{what} before any image was upscaled; nothing was written"
        total, done = len(self.jobs), self.done()
        images = "image" if total == 1 else "images"
        if done == total:
            return f"{what}: all {total} {images} done"
        again = ("rerun it without --force to do the rest (with --force every image is redone)" if self.force else
                 "rerun the same command to do the rest (finished images are skipped)")
        return f"{what}: {done} of {total} {images} done, {total - done} left; {again}"


def _upscale_one(model: SRDenseNet, src: Path, dst: Path, progress: Progress, write, **options) -> None:
    """One image, its lines said with ``write`` (tqdm.write); failures named in one line (counted in progress)."""
    from ..inference import WrittenAsPNGWarning, upscale_file
    from ..memory import InsufficientMemoryError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shape_in, shape_out, tile = upscale_file(model, src, dst, png_fallback=True, **options)
    except InsufficientMemoryError as error:
        h, w = error.size
        write(f"error: {src} ({w}x{h} px): {error}; {memory_hint(error)}", file=sys.stderr)
        progress.failed += 1
        return
    except (image_files.ImageReadError, image_files.ImageWriteError) as error:
        write(f"error: {error}", file=sys.stderr)
        progress.failed += 1
        return
    except (ValueError, TypeError, MemoryError) as error:
        write(f"error: {src}: {error}", file=sys.stderr)
        progress.failed += 1
        return
    for warning in caught:
        if isinstance(warning.message, WrittenAsPNGWarning):
            dst = warning.message.path
            progress.written_as.add(dst)
        write(f"warning: {src}: {warning.message}", file=sys.stderr)
    progress.written += 1
    tiles = f"tiles of {tile} LR px" if tile else "untiled"
    write(f"{src} -> {dst} ({shape_in[1]}x{shape_in[0]} -> {shape_out[1]}x{shape_out[0]}, {tiles})")


def upscale_jobs(model: SRDenseNet, jobs: list[tuple[Path, Path]], force: bool, show_progress: bool,
                 progress: Progress | None = None, **options) -> tuple[int, int, int]:
    """Upscale (source, destination) pairs, one line per image; returns (written, skipped, failed) of these jobs,
    also counted in ``progress``.

    An existing destination is skipped unless ``force`` (an earlier run's result, or this run's before it was
    killed: rerunning continues where it stopped). A bad image, or one that does not fit in memory, is reported by
    name in one line and the others still run. A format that cannot hold an image gets it as PNG, with a warning.
    """
    from tqdm import tqdm

    progress = progress or Progress()
    before = (progress.written, progress.skipped, progress.failed)
    # A with block: a stopped run closes the bar before its last line, which stays the last.
    with tqdm(jobs, unit="image", disable=not show_progress, file=sys.stderr) as bar:
        for src, dst in bar:
            found = None if force else finished_output(src, dst)
            if found is not None:
                why = f" ({found[1]})" if found[1] else ""
                tqdm.write(f"{src}: {found[0]} exists{why}, skipped (--force replaces it)", file=sys.stderr)
                progress.skipped += 1
                continue
            _upscale_one(model, src, dst, progress, tqdm.write, **options)
    return tuple(now - then for now, then in zip((progress.written, progress.skipped, progress.failed), before))


def _check_options(args: argparse.Namespace) -> None:
    """Option contradictions and values out of range, before anything is read (UsageError)."""
    if args.max_memory is not None and args.tile != "auto":
        raise UsageError(f"--max-memory sets the budget of --tile auto; it does nothing with --tile {args.tile}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be 1-100, got {args.quality}")
    if args.outscale is not None and not (math.isfinite(args.outscale) and args.outscale >= 1):
        raise UsageError(f"--outscale must be from 1 to the model's scale, got {args.outscale:g}")
    if args.weights is not None and not os.path.exists(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file or folder")


# Inside the output folder, not beside it as for the other commands: the folder may be ".", whose parent may not be
# writable. Hidden, so a later run that reads the folder as input skips it.
OUTPUT_LOCK = ".srdensenet-upscale.lock"


def _hold_output(args: argparse.Namespace, jobs: list[tuple[Path, Path]], held: contextlib.ExitStack) -> None:
    """Make this process the one writer of the output (-o: a folder, or the one image file named): two runs into one
    folder would each replace the other's files. Raises FolderBusyError naming the other process."""
    out = Path(args.output)
    single = len(jobs) == 1 and jobs[0][1] == out
    held.enter_context(hold_output(out, "-o/--output", ", or choose another -o",
                                   lock=None if single else out / OUTPUT_LOCK))


def _prepare(args: argparse.Namespace, progress: Progress, speaks: bool,
             held: contextlib.ExitStack) -> list[tuple[Path, Path]] | None:
    """Everything that needs no PyTorch: the jobs, the output folders, the lock on them (kept by ``held``), the outputs
    already there (said and counted). Returns the jobs still to do. Raises UsageError, InputError, OutputError,
    FolderBusyError."""
    _check_options(args)
    jobs, progress.any_folder = collect_jobs(args.input, args.output, args.format)
    if args.quality is not None and not any(dst.suffix.lower() in image_files.LOSSY_EXTENSIONS for _, dst in jobs):
        raise UsageError("--quality applies to JPEG and WebP outputs; none is written (see --format)")
    if args.backend == "onnxruntime":
        missing = missing_package("--backend onnxruntime", ("onnx", "onnxruntime"))
        if missing:
            raise InputError(missing)
    progress.jobs, progress.force = jobs, args.force
    for folder in sorted({dst.parent for _, dst in jobs}):  # check outputs before any work is done
        ensure_output_dir(folder, "-o/--output")
    if speaks:  # under torchrun, rank 0 holds it for the processes of its run
        _hold_output(args, jobs, held)
    if args.force:
        return jobs
    todo = []
    for src, dst in jobs:
        found = finished_output(src, dst)
        if found is None:
            todo.append((src, dst))
            continue
        progress.skipped += 1
        if speaks:
            why = f" ({found[1]})" if found[1] else ""
            print(f"{src}: {found[0]} exists{why}, skipped (--force replaces it)", file=sys.stderr)
    return todo


def _load(args: argparse.Namespace):
    """The device, the backend and precision path, and the model (after the imports that load PyTorch)."""
    import cv2

    from ..hardware import resolve_device
    from ..inference import load_model
    from ..runners import resolve_plan

    # A corrupt file is reported below, once, with its name: OpenCV's own log lines would only add noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        device = resolve_device(args.device)
        backend, precision = resolve_plan(args.precision, device, args.backend)
    except ValueError as error:  # bad device/precision/backend combinations
        raise UsageError(str(error)) from None
    model = load_model(args.weights, device)
    if args.outscale is not None and args.outscale > model.upscale_factor:
        raise UsageError(f"--outscale {args.outscale:g} is above the model's scale (x{model.upscale_factor}); "
                         f"a model trained at a larger scale does better than resizing")
    return device, backend, precision, model


def _header(args, model, device, backend: str, precision: str, world: int) -> str:
    from .. import hardware

    path = hardware.PRECISIONS[precision].inference
    probe = hardware.auto_probe(device) if args.precision == "auto" and backend == "torch" else None
    if probe is not None:
        path += f" (auto: {probe.reason})"
    scale = model.upscale_factor
    outscale = (f", output x{args.outscale:g} (x{scale}, resized with MATLAB bicubic)"
                if args.outscale not in (None, scale) else "")
    return (f"x{scale} model on {device}, {backend} {path}, {_tiles_text(args.tile, args.max_memory, device)}"
            f"{outscale}{', self-ensemble' if args.self_ensemble else ''}{f', {world} processes' if world > 1 else ''}")


def _small_tile_warning(model, tile: int | str) -> str | None:
    from ..memory import useful_tile
    from ..tiling import receptive_field

    if tile == "auto" or not tile or tile >= useful_tile(model):
        return None
    field = receptive_field(model)
    return (f"warning: --tile {tile} is below {useful_tile(model)} LR px, twice this model's receptive field ({field} "
            f"px): every tile recomputes a {field}-px margin on each side, so most of the work is repeated and "
            f"little memory is saved; --tile auto tiles only an image that does not fit")


def _run(args: argparse.Namespace, progress: Progress, speaks: bool) -> int:
    with contextlib.ExitStack() as held:
        try:
            todo = _prepare(args, progress, speaks, held)
        except (UsageError, FolderBusyError) as error:
            return _error(error, EXIT_USAGE, speaks)
        except (InputError, OutputError) as error:
            return _error(error, EXIT_FAILED, speaks)
        if todo:
            code = _upscale_todo(args, progress, todo, speaks)
            if code is not None:
                return code
    total = len(progress.jobs)
    if speaks and total > 1:  # a single image's own line says it all
        print(f"{progress.written} written, {progress.skipped} skipped (already there), {progress.failed} failed, "
              f"of {total} images{progress.world_text}", file=sys.stderr)
        if progress.failed:
            print(f"error: {progress.failed} of {total} images failed", file=sys.stderr)
    return EXIT_FAILED if progress.failed else EXIT_OK


def _upscale_todo(args, progress: Progress, todo: list[tuple[Path, Path]], speaks: bool) -> int | None:
    """Load PyTorch and the model, and upscale the jobs left (this process's share under torchrun); an exit code
    when the run cannot start, else None (the counts are in progress)."""
    from .. import sharding
    from ..checkpoint import CheckpointError

    try:
        device, backend, precision, model = _load(args)
    except UsageError as error:
        return _error(error, EXIT_USAGE, speaks)
    except CheckpointError as error:
        return _error(error, EXIT_FAILED, speaks)
    rank, world = sharding.init(device, args.threads)
    try:
        if rank == 0:
            print(_header(args, model, device, backend, precision, world), file=sys.stderr)
            warning = _small_tile_warning(model, args.tile)
            if warning:
                print(warning, file=sys.stderr)
        options = dict(precision=args.precision, backend=args.backend, tile=args.tile, max_memory=args.max_memory,
                       self_ensemble=args.self_ensemble, quality=args.quality, strip_metadata=args.strip_metadata,
                       outscale=args.outscale, max_pixels=args.max_pixels)
        mine = sharding.shard(todo, rank, world)
        counts = upscale_jobs(model, mine, args.force, rank == 0 and (progress.any_folder or len(progress.jobs) > 1),
                              progress, **options)
        written, skipped, failed = (sum(c) for c in zip(*sharding.gather(counts, world)))
        progress.written, progress.skipped, progress.failed = written, progress.skipped - counts[1] + skipped, failed
        progress.world_text = f" ({world} processes)" if world > 1 else ""
    finally:
        sharding.finish()
    return None


def _error(error: Exception, code: int, speaks: bool) -> int:
    if speaks:  # under torchrun, the other processes would repeat the same error
        print(f"error: {error}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.input = args.inputs + args.input
    if not args.input:
        parser.error("no input: name image files or folders (INPUT or -i)")
    speaks = rank_zero()
    progress = Progress()
    with stoppable():
        try:
            return _run(args, progress, speaks)
        except Stopped as stop:  # the image in progress left no file (atomic writes); the bar is closed
            if speaks:
                print(progress.stopped_line(stop), file=sys.stderr)
            return stop.code
