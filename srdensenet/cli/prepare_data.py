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
failed run never leaves something that looks finished. Work is spread over all cores; the first image that fails
stops the run with its file name and the reason (exit 1, no traceback).

Inputs: JPEG/PNG/BMP/TIFF/WebP/PNM, 8- or 16-bit (16-bit is rounded to 8 bits), grayscale (stored as RGB) or with alpha
(dropped; said once per run). A corrupt or truncated file is an error naming it. Images smaller than the sub-image
size are skipped and counted. Nothing under --input is ever modified.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..config import Config, add_bool_option, make_parser, parse_config
from ..fileio import OutputError
from ..folder_lock import FolderBusyError


def tool_parser(prog: str = "prepare_dataset.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subimages", help="cut large images into overlapping sub-images (BasicSR style)")
    sub.add_argument("--input", required=True, help="folder of images (searched recursively)")
    sub.add_argument("--output", required=True, help="folder to create with <stem>_s001.png, ...")
    sub.add_argument("--size", type=int, default=480, help="sub-image side (default %(default)s)")
    sub.add_argument("--step", type=int, default=240, help="distance between sub-image starts (default %(default)s)")
    sub.add_argument("--threshold", type=int, default=0,
                     help="add a last sub-image flush with the border when more than this many pixels are "
                          "left (default %(default)s: cover every pixel)")
    sub.add_argument("--prescale", type=float, default=1.0,
                     help="area-downscale every image by this factor first (2-3 for JPEG photos; default 1)")
    db = commands.add_parser("lmdb", help="pack a folder of images (e.g. sub-images) into an LMDB")
    db.add_argument("--input", required=True, help="folder of HR images (searched recursively)")
    db.add_argument("--output", required=True, help="HR LMDB to create, e.g. data/DIV2K/train_sub.lmdb")
    db.add_argument("--lr-scales", type=int, nargs="*", default=[],
                    help="also build MATLAB-bicubic LR LMDBs <output>_X<s>.lmdb with the same keys")
    db.add_argument("--compression", type=int, default=1, help="PNG compression level of the values (0-9, default 1)")
    for command in (sub, db):
        command.add_argument("--workers", type=int, default=0, help="processes (default 0: one per core)")
        add_bool_option(command, "--force", "replace the output if it exists", default=False)
    return parser


# The config fields a preset's data recipe reads; --help lists only these (the preset supplies the rest).
CONFIG_FIELDS = ("train_dirs", "valid_dirs", "hr_patch_size", "jpeg_prescale")
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
    group.add_argument("--lr-scales", type=int, nargs="*", default=[], help="release --lmdb: also LR LMDBs")
    group.add_argument("--pack", action="store_true",
                       help="release: instead, write the training pool as WebP tiles (~25 MiB, visually lossless) and "
                            "the validation photos into --pack-dir, to carry to a GPU machine")
    group.add_argument("--pack-dir", default="data/photo_pool_pack", help="release --pack: output folder")
    group.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
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
        build_pack(args.pool, args.pack_dir, workers=args.workers, force=args.force)
    elif args.preset == "release":
        build_release(args.pool, train_dir, valid_dir, lmdb=args.lmdb, lr_scales=args.lr_scales,
                      workers=args.workers, force=args.force, hr_patch_size=config.hr_patch_size)
        if config.jpeg_prescale > 1.0:
            shrunk = math.floor(RELEASE_SUBIMAGE["size"] / config.jpeg_prescale)
            print(f"warning: --jpeg-prescale {config.jpeg_prescale:g} would shrink these already downscaled "
                  f"sub-images again (to {shrunk}x{shrunk}); train them with --jpeg-prescale 1")
    else:
        raise PrepareError(f"preset {args.preset!r} has no data recipe: build your data with `prepare_dataset.py "
                           f"subimages` / `lmdb` (docs/data.md) and pass --train-dirs / --valid-dirs, or use "
                           f"--preset demo or --preset release")


def main(argv: list[str] | None = None, prog: str = "prepare_dataset.py") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        config, args = None, tool_parser(prog).parse_args(argv)
    else:
        config, args = parse_config(argv, preset_parser(prog))
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from ..data_builders import PrepareError, build_lmdb, extract_subimages
    from ..dataset import DatasetError
    from ..image_files import ImageReadError

    try:
        if config is None:
            if args.command == "subimages":
                extract_subimages(args.input, args.output, args.size, args.step, args.threshold, args.prescale,
                                  args.workers, args.force)
            else:
                build_lmdb(args.input, args.output, args.lr_scales, args.compression, args.workers, args.force)
        else:
            build_preset(config, args)
    except FolderBusyError as error:  # another process builds the same output
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (PrepareError, DatasetError, ImageReadError, OutputError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    return 0

