"""Build training and validation data: sub-images, LMDBs, and the data of the demo and release presets.

    python prepare_dataset.py subimages --input data/DIV2K/DIV2K_train_HR --output data/DIV2K/train_sub \
        --size 480 --step 240 --threshold 0 [--prescale 2]
    python prepare_dataset.py lmdb --input data/DIV2K/train_sub --output data/DIV2K/train_sub.lmdb [--lr-scales 2 3 4]
    python prepare_dataset.py --preset demo       # data/demo/{train,valid} from scikit-image's bundled photos
    python prepare_dataset.py --preset release    # data/photo_pool/{train,valid} from the fetched photo pool [--lmdb]
    python prepare_dataset.py --preset release --pack   # data/photo_pool_pack/{train,valid}: the same, ~25 MiB

``--preset NAME`` builds that preset's ``train_dirs[0]`` and ``valid_dirs[0]`` (config.py; override them like in
any script): the demo's here, the release's in release_data.py; the commands' work is in data_builders.py. Every output
is built in a hidden temporary folder beside it and swapped into place only when complete, so an interrupted or
failed run never leaves something that looks finished: Ctrl-C or SIGTERM discards the output in progress and ends
with one line saying which outputs are complete (exit 130 / 143). Work is spread over all cores; an image that
cannot be read is named in one line with the reason and the others go on, then the run fails (exit 1, no
traceback): subimages and lmdb keep the output built from the others, a preset builds nothing. A command line that
cannot be carried out (an option out of range, a path that does not exist, an output already there without
--force) is refused before any work (exit 2; docs/errors.md).

Inputs: JPEG/PNG/BMP/TIFF/WebP/PNM, 8- or 16-bit (16-bit is rounded to 8 bits), grayscale (stored as RGB) or with alpha
(dropped; said once per run). A corrupt or truncated file, one over --max-pixels or one that is not a regular file
(a FIFO, a device) is an error naming it. Images smaller than the sub-image size are skipped and counted. Nothing
under --input is ever modified.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..config import MAX_PIXELS_HELP, Config, add_bool_option, make_parser, parse_config
from ..fileio import OutputError
from ..folder_lock import FolderBusyError
from ..image_header import DEFAULT_MAX_PIXELS
from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Stopped, rank_zero, stoppable


def at_least(minimum: float, kind: type = int, maximum: float | None = None):
    """An argparse type: a number of ``kind`` from ``minimum`` (to ``maximum``); anything else exits 2 naming it."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
            limits = f"from {minimum:g} to {maximum:g}" if maximum is not None else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} {limits}, "
                                             f"got {text!r}")
        return value

    return parse


def tool_parser(prog: str = "prepare_dataset.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subimages", help="cut large images into overlapping sub-images (BasicSR style)")
    sub.add_argument("--input", required=True, help="folder of images (searched recursively)")
    sub.add_argument("--output", required=True, help="folder to create with <stem>_s001.png, ...")
    sub.add_argument("--size", type=at_least(1), default=480, help="sub-image side (default %(default)s)")
    sub.add_argument("--step", type=at_least(1), default=240,
                     help="distance between sub-image starts, at most --size (default %(default)s)")
    sub.add_argument("--threshold", type=at_least(0), default=0,
                     help="add a last sub-image flush with the border when more than this many pixels are "
                          "left (default %(default)s: cover every pixel)")
    sub.add_argument("--prescale", type=at_least(1, float), default=1.0,
                     help="area-downscale every image by this factor first (2-3 for JPEG photos; default 1)")
    db = commands.add_parser("lmdb", help="pack a folder of images (e.g. sub-images) into an LMDB")
    db.add_argument("--input", required=True, help="folder of HR images (searched recursively)")
    db.add_argument("--output", required=True, help="HR LMDB to create, e.g. data/DIV2K/train_sub.lmdb")
    db.add_argument("--lr-scales", type=at_least(2), nargs="*", default=[],
                    help="also build MATLAB-bicubic LR LMDBs <output>_X<s>.lmdb with the same keys")
    db.add_argument("--compression", type=at_least(0, int, 9), default=1,
                    help="PNG compression level of the values (0-9, default 1)")
    for command in (sub, db):
        command.add_argument("--workers", type=at_least(0), default=0, help="processes (default 0: one per core)")
        command.add_argument("--max-pixels", type=at_least(1), default=DEFAULT_MAX_PIXELS, metavar="N",
                             help=f"{MAX_PIXELS_HELP} (default %(default)s)")
        add_bool_option(command, "--force", "replace the output if it exists", default=False)
    return parser


# The config fields a preset's data recipe reads; --help lists only these (the preset supplies the rest).
CONFIG_FIELDS = ("train_dirs", "valid_dirs", "hr_patch_size", "jpeg_prescale", "max_pixels")
COMMANDS = ("subimages", "lmdb")
USAGE = """{prog} [--preset {{demo,release}}] [options]   the data of a preset
       {prog} subimages --input DIR --output DIR [options]
       {prog} lmdb --input DIR --output DB [options]"""
EPILOG = """commands:
  subimages   cut large images into overlapping sub-images ({prog} subimages --help)
  lmdb        pack a folder of images into an LMDB ({prog} lmdb --help)"""


def preset_parser(prog: str = "prepare_dataset.py") -> argparse.ArgumentParser:
    parser = make_parser("Build training and validation data: the data of a preset (demo, release), or, with a "
                         "command, sub-images and LMDBs.", fields=CONFIG_FIELDS, usage=USAGE.format(prog=prog),
                         epilog=EPILOG.format(prog=prog))
    parser.prog = prog
    group = parser.option_group("preset data")
    group.add_argument("--pool", default="data/photo_pool", help="release: the fetched photo pool")
    add_bool_option(group, "--lmdb", "release: also pack the train sub-images into an LMDB", default=False)
    group.add_argument("--lr-scales", type=at_least(2), nargs="*", default=[],
                       help="release --lmdb: also LR LMDBs")
    group.add_argument("--pack", action="store_true",
                       help="release: instead, write the training pool as WebP tiles (~25 MiB, visually lossless) and "
                            "the validation photos into --pack-dir, to carry to a GPU machine")
    group.add_argument("--pack-dir", default="data/photo_pool_pack", help="release --pack: output folder")
    group.add_argument("--workers", type=at_least(0), default=0, help="processes (0: one per core)")
    add_bool_option(group, "--force", "replace output folders not made by this script", default=False)
    return parser


def _single_dir(dirs: list[str], field_name: str) -> Path:
    from ..data_builders import PrepareError

    if len(dirs) != 1 or dirs[0].endswith(".lmdb"):
        raise PrepareError(f"--{field_name.replace('_', '-')} {' '.join(dirs)}: the preset's data builds exactly one "
                           f"image folder here")
    return Path(dirs[0])


def build_preset(config: Config, args: argparse.Namespace) -> None:
    from ..data_builders import PrepareError
    from ..demo_data import build_demo
    from ..release_data import RELEASE_SUBIMAGE, build_pack, build_release

    train_dir, valid_dir = _single_dir(config.train_dirs, "train_dirs"), _single_dir(config.valid_dirs, "valid_dirs")
    if args.preset == "demo":
        build_demo(train_dir, valid_dir, force=args.force)
    elif args.preset == "release" and args.pack:
        build_pack(args.pool, args.pack_dir, workers=args.workers, force=args.force, max_pixels=config.max_pixels)
    elif args.preset == "release":
        build_release(args.pool, train_dir, valid_dir, lmdb=args.lmdb, lr_scales=args.lr_scales,
                      workers=args.workers, force=args.force, hr_patch_size=config.hr_patch_size,
                      max_pixels=config.max_pixels)
        if config.jpeg_prescale > 1.0:
            shrunk = math.floor(RELEASE_SUBIMAGE["size"] / config.jpeg_prescale)
            print(f"warning: --jpeg-prescale {config.jpeg_prescale:g} would shrink these already downscaled "
                  f"sub-images again (to {shrunk}x{shrunk}); train them with --jpeg-prescale 1")
    else:
        raise PrepareError(f"preset {args.preset!r} has no data recipe: build your data with `prepare_dataset.py "
                           f"subimages` / `lmdb` (docs/data.md) and pass --train-dirs / --valid-dirs, or use "
                           f"--preset demo or --preset release")


def outputs_of(config: Config | None, args: argparse.Namespace) -> list[Path]:
    """The folders (and LMDBs) the command builds, each whole or not at all."""
    from ..data_builders import lr_lmdb_path

    if config is None:
        extra = [lr_lmdb_path(args.output, s) for s in sorted(set(args.lr_scales))] if args.command == "lmdb" else []
        return [Path(args.output), *extra]
    if args.preset == "release" and args.pack:
        return [Path(args.pack_dir)]
    return [Path(d) for d in (*config.train_dirs[:1], *config.valid_dirs[:1])]


def refusal(config: Config | None, args: argparse.Namespace, outputs: list[Path]) -> str | None:
    """Why the command line cannot be carried out as written (exit 2, before any work), or None."""
    from ..data_builders import PrepareError, refuse_foreign

    if config is None:
        source = Path(args.input)
        if not source.exists():
            return f"--input {source}: no such folder"
        if args.command == "subimages" and args.step > args.size:
            return f"--step {args.step} is larger than --size {args.size}: the sub-images would leave gaps"
        for path in outputs:
            if path.resolve().is_relative_to(source.resolve()) or source.resolve().is_relative_to(path.resolve()):
                return f"{path}: the output and the input folder {source} must not contain each other"
            if path.exists() and not args.force:
                return f"{path}: already exists; pass --force to replace it"
        return None
    if args.preset not in ("demo", "release"):
        return (f"preset {args.preset!r} has no data recipe: build your data with `prepare_dataset.py subimages` / "
                f"`lmdb` (docs/data.md) and pass --train-dirs / --valid-dirs, or use --preset demo or --preset release")
    if args.preset == "release" and not Path(args.pool).is_dir():
        return f"--pool {args.pool}: no such folder; fetch the photo pool first: python scripts/fetch_photo_pool.py"
    try:
        _single_dir(config.train_dirs, "train_dirs"), _single_dir(config.valid_dirs, "valid_dirs")
        if not (args.preset == "release" and args.pack):  # the pack's own folders are checked inside it
            refuse_foreign(outputs, args.force)
    except PrepareError as error:
        return str(error)
    return None


def stopped_line(prog: str, stop: Stopped, outputs: list[Path], before: dict[Path, tuple | None], tool: bool) -> str:
    """What a stopped run built (outputs swapped in since it started) and how to go on: the output in progress was
    discarded with its temporary folder, so nothing half-built is left."""
    if not outputs:  # stopped while the command was starting
        return f"{prog}: stopped by {stop.what} before any work; nothing was written"
    built = [path for path in outputs if _stamp(path) not in (None, before.get(path))]
    names = f" ({', '.join(map(str, built))})" if built else ""
    again = ("rerun it with --force to build them all" if tool and built else
             "rerun the same command to build the rest (complete outputs are kept)" if built else
             "rerun the same command to build it again" if len(outputs) == 1 else
             "rerun the same command to build them")
    return (f"{prog}: stopped by {stop.what}: {len(built)} of {len(outputs)} outputs built{names}; the one in "
            f"progress was discarded, nothing half-built is left; {again}")


def _stamp(path: Path) -> tuple | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def main(argv: list[str] | None = None, prog: str = "prepare_dataset.py") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        config, args = None, tool_parser(prog).parse_args(argv)
    else:
        config, args = parse_config(argv, preset_parser(prog))
    outputs, before = [], {}
    with stoppable():
        try:
            outputs = outputs_of(config, args)
            before = {path: _stamp(path) for path in outputs}
            return _main(prog, config, args, outputs)
        except Stopped as stop:
            if rank_zero():
                print(stopped_line(prog, stop, outputs, before, config is None), file=sys.stderr)
            return stop.code


def _main(prog: str, config: Config | None, args: argparse.Namespace, outputs: list[Path]) -> int:
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from ..data_builders import PrepareError, build_lmdb, extract_subimages
    from ..dataset import DatasetError
    from ..image_files import ImageReadError

    refused = refusal(config, args, outputs)
    if refused:
        print(f"{prog}: error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if config is None:
            if args.command == "subimages":
                extract_subimages(args.input, args.output, args.size, args.step, args.threshold, args.prescale,
                                  args.workers, args.force, args.max_pixels)
            else:
                build_lmdb(args.input, args.output, args.lr_scales, args.compression, args.workers, args.force,
                           max_pixels=args.max_pixels)
        else:
            build_preset(config, args)
    except FolderBusyError as error:  # another process builds the same output
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (PrepareError, DatasetError, ImageReadError, OutputError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
