"""The upscaling command: ``inference.py`` and ``srdensenet upscale``, over the inference API (inference.py).

    srdensenet upscale photo.jpg folder/ -o results/                # the released x4 weights
    python inference.py -i photo.jpg folder/ -o results/             # the same, from a clone
    python inference.py --weights W -i in.png -o out.png --tile 128 --self-ensemble
    torchrun --nproc_per_node 4 inference.py --weights W -i frames/ -o out/     # images split across 4 processes
    python inference.py -i big.jpg -o out/ --max-memory 4GB          # tiles chosen to fit 4 GiB

Folders are searched recursively and mirrored under the output folder; an output that exists is skipped (rerunning
continues where a run stopped); a bad image is named in one line and the others go on (docs/inference.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .. import image_files
from ..choices import BACKENDS, INFERENCE_PRECISIONS
from ..config import add_bool_option
from ..fileio import OutputError, ensure_output_dir
from .options import memory_argument, memory_hint, tile_argument

if TYPE_CHECKING:
    import torch

    from ..model import SRDenseNet


class UsageError(ValueError):
    """A command line that cannot be carried out (reported without a traceback, exit code 2)."""


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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Upscale photos with SRDenseNet (x4 by default).",
                                     allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files and/or folders of images (or -i)")
    parser.add_argument("--weights", help="checkpoint written by train.py, release .safetensors or hub folder (EMA "
                        "weights preferred); default: the released x4 weights")
    parser.add_argument("-i", "--input", nargs="+", default=[], help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created), or an image file name when there is a single input file")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
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
    from ..system_memory import memory_budget

    return f"tiles auto: {memory_budget(device, max_memory).describe()}"


def upscale_jobs(model: SRDenseNet, jobs: list[tuple[Path, Path]], force: bool, show_progress: bool,
                 **options) -> tuple[int, int, int]:
    """Upscale (source, destination) pairs, one line per image; returns (written, skipped, failed).

    An existing destination is skipped unless ``force`` (an earlier run's result, or this run's before it was
    killed: rerunning continues where it stopped). A bad image, or one that does not fit in memory, is reported by
    name in one line and the others still run.
    """
    from tqdm import tqdm

    from ..inference import upscale_file
    from ..memory import InsufficientMemoryError

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
            tqdm.write(f"error: {src} ({w}x{h} px): {error}; {memory_hint(error)}", file=sys.stderr)
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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.input = args.inputs + args.input
    if not args.input:
        parser.error("no input: name image files or folders (INPUT or -i)")
    # Here, not at the top: --help and a bad command line load no PyTorch.
    import cv2

    from .. import hardware, sharding
    from ..checkpoint import CheckpointError
    from ..hardware import resolve_device
    from ..inference import load_model
    from ..runners import resolve_plan

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
        if args.quality is not None and not any(dst.suffix.lower() in image_files.LOSSY_EXTENSIONS
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
