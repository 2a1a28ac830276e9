"""Score a model (or bicubic) on benchmark sets with the SR literature's protocol (docs/protocol.md).

    python validate.py --weights weights/srdensenet_x4_all_paper.safetensors --valid-dirs data/Set5 --json x4.json
    python validate.py --weights bicubic --upscale-factor 2 --valid-dirs data/Set5   # the published bicubic table
    python validate.py --self-check                                                 # protocol vs golden numbers
    torchrun --nproc_per_node 4 validate.py --weights W --valid-dirs data/DIV2K_valid_HR --report results/page

Each folder holds HR images only (LR made by MATLAB-exact bicubic), or HR/ (or GT/) with LR_bicubic/X{s}/ (or LR/)
paired by file stem. The scale is the checkpoint's; --upscale-factor may repeat it but not contradict it.
Precision is fp32 (the protocol) unless --precision is given on the command line; the config's "auto" is not used.
Exit codes (docs/errors.md): 0 done; 1 the work failed on a file (unusable data or weights, an output that cannot
be written) or the machine; 2 the command line is wrong or names a path that does not exist; 130 / 143 stopped by
Ctrl-C / SIGTERM, in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ..config import add_bool_option, make_parser, parse_config
from ..fileio import OutputError, hold_output
from ..folder_lock import FolderBusyError
from . import EXIT_FAILED, EXIT_USAGE, Stopped, rank_zero, stoppable
from .options import MAX_MEMORY_HELP, TILE_HELP, memory_argument, memory_hint, tile_argument

# The config fields validation reads (the preset supplies the rest); --help lists only these.
CONFIG_FIELDS = ("valid_dirs", "upscale_factor", "device", "precision", "max_pixels")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, fields=CONFIG_FIELDS)
    parser.prog = prog or parser.prog
    # --upscale-factor is read here rather than applied to the Config: validate_config ties it to the training patch
    # size (the paper preset's 100-pixel patch would reject x3), which means nothing for validation.
    parser.options["--upscale-factor"].dest = "scale_option"
    # The config field's own help names "auto" as the default; validation's is fp32, the protocol's reference.
    parser.options["--precision"].help = ("fp32 (default here: the eager reference the protocol's numbers are "
                                          "measured with), or auto, bf16, fp16 (CUDA): the fast paths "
                                          "(docs/inference.md)")
    own = parser.option_group("validation")
    own.add_argument("--weights", metavar="PATH", help="checkpoint to score, or 'bicubic' for the baseline alone "
                     "(required unless --self-check)")
    own.add_argument("--json", metavar="PATH", help="write every score, the protocol and versions to this file")
    own.add_argument("--save-images", metavar="DIR", help="write colour SR images (SR Y + bicubic Cb/Cr) as "
                     "DIR/<set>/<name>.png")
    add_bool_option(own, "--force", "replace an existing --json file, --save-images images or --report page",
                    default=False)
    own.add_argument("--report", metavar="DIR", help="write a results page into the folder DIR: DIR/index.html "
                     "(sortable tables) and the crops where the model gains most in DIR/images/; to share it, copy "
                     "the whole folder")
    own.add_argument("--threads", type=int, metavar="N", help="CPU threads per process (default: PyTorch's; under "
                     "torchrun on a CPU, the node's cores divided between its processes)")
    own.add_argument("--tile", type=tile_argument, default="auto", metavar="N", help=TILE_HELP)
    own.add_argument("--max-memory", type=memory_argument, metavar="SIZE", help=MAX_MEMORY_HELP)
    add_bool_option(own, "--self-ensemble", "average the model over the 8 flips/rotations", default=False)
    add_bool_option(own, "--self-check", "check the protocol against the golden bicubic numbers and an independent "
                    "SSIM, print PASS/FAIL, exit 0/1", default=False)
    return parser


def missing_paths(config, args) -> str | None:
    """The first path the command line names that does not exist (exit code 2, before anything is loaded)."""
    if args.weights and args.weights != "bicubic" and not os.path.exists(args.weights):
        return f"--weights {args.weights}: no such file or folder"
    for folder in config.valid_dirs:
        if not os.path.exists(folder):
            return f"--valid-dirs {folder}: no such folder"
    return None


def small_tile_warning(args) -> str | None:
    """A --tile below the model's useful size (memory.useful_tile), said once before the work; None when not."""
    if args.tile == "auto" or not args.tile or args.weights == "bicubic":
        return None
    import torch

    from ..checkpoint import CheckpointError, load_checkpoint
    from ..memory import useful_tile
    from ..model import SRDenseNet
    from ..tiling import receptive_field

    try:
        with torch.device("meta"):  # the architecture only: no weights are made or read into it
            model = SRDenseNet(**load_checkpoint(args.weights)["arch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None  # the run itself says what is wrong with the weights
    if args.tile >= useful_tile(model):
        return None
    field = receptive_field(model)
    return (f"warning: --tile {args.tile} is below {useful_tile(model)} LR px, twice this model's receptive field "
            f"({field} px): every tile recomputes a {field}-px margin on each side, so most of the work is repeated "
            f"and little memory is saved; --tile auto tiles only an image that does not fit")


def stopped_line(prog: str, args, stop: Stopped) -> str:
    """The last line of a stopped run: what is done and how to go on. Scores are kept in memory until the end, so a
    stopped run has written no --json, summary or page; --save-images files are complete (atomic) but make a rerun
    need --force."""
    saved = sum(1 for _ in Path(args.save_images).rglob("*.png")) if args.save_images else 0
    again = (f"rerun the same command with --force to score again (it replaces the {saved} images already in "
             f"{args.save_images})" if saved and not args.force else "rerun the same command to score again")
    return (f"{prog}: stopped by {stop.what} before the end: the rows above are the images scored so far; --json, "
            f"the summary and the --report page are written only at the end, so none was; {again}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    config, args = parse_config(argv, parser)
    with stoppable():
        try:
            return _main(parser, config, args)
        except Stopped as stop:
            if rank_zero():  # under torchrun the other processes stay quiet
                print(stopped_line(parser.prog, args, stop), file=sys.stderr)
            return stop.code


def _main(parser, config, args) -> int:
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from .. import image_files, report
    from ..checkpoint import CheckpointError
    from ..dataset import DatasetError
    from ..evaluation import EvaluationError
    from ..memory import InsufficientMemoryError
    from ..protocol_check import self_check
    from ..validation import ValidationError, run

    if args.self_check:
        return self_check()
    if not args.weights:
        parser.error("--weights PATH is required (a checkpoint, or 'bicubic' for the baseline alone)")
    missing = missing_paths(config, args)
    if missing:
        parser.error(missing)
    warning = small_tile_warning(args)
    if warning and rank_zero():
        print(warning, file=sys.stderr)
    try:
        with contextlib.ExitStack() as held:
            if args.report and rank_zero():  # the process that writes the page
                held.enter_context(hold_output(args.report, "--report", ", or choose another --report folder"))
            return run(args, config)
    except FolderBusyError as error:  # another validate.py writes the same report
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as error:  # the command line contradicts itself or the checkpoint
        parser.error(str(error))
    except (CheckpointError, DatasetError, EvaluationError, image_files.ImageReadError, image_files.ImageWriteError,
            OutputError, report.ReportError, OSError) as error:
        advice = f"; {memory_hint(error.__cause__)}" if isinstance(error.__cause__, InsufficientMemoryError) else ""
        print(f"{parser.prog}: error: {error}{advice}", file=sys.stderr)
        return EXIT_FAILED
