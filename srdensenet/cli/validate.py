"""Score a model (or bicubic) on benchmark sets with the SR literature's protocol (docs/protocol.md).

    python validate.py --weights weights/srdensenet_x4_all_paper.safetensors --valid-dirs data/Set5 --json x4.json
    python validate.py --weights bicubic --upscale-factor 2 --valid-dirs data/Set5   # the published bicubic table
    python validate.py --self-check                                                 # protocol vs golden numbers
    torchrun --nproc_per_node 4 validate.py --weights W --valid-dirs data/DIV2K_valid_HR --report results/page

Each folder holds HR images only (LR made by MATLAB-exact bicubic), or HR/ (or GT/) with LR_bicubic/X{s}/ (or LR/)
paired by file stem. The scale is the checkpoint's; --upscale-factor may repeat it but not contradict it.
Precision is fp32 (the protocol) unless --precision is given on the command line; the config's "auto" is not used.
Exit codes: 0 done, 1 unusable data/weights/device (message names the file), 2 bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..config import add_bool_option, make_parser, parse_config
from ..fileio import OutputError, hold_output
from ..folder_lock import FolderBusyError
from .options import memory_argument, memory_hint, tile_argument

# The config fields validation reads (the preset supplies the rest); --help lists only these.
CONFIG_FIELDS = ("valid_dirs", "upscale_factor", "device", "precision")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, fields=CONFIG_FIELDS)
    parser.prog = prog or parser.prog
    # --upscale-factor is read here rather than applied to the Config: validate_config ties it to the training patch
    # size (the paper preset's 100-pixel patch would reject x3), which means nothing for validation.
    parser.options["--upscale-factor"].dest = "scale_option"
    own = parser.option_group("validation")
    own.add_argument("--weights", metavar="PATH", help="checkpoint to score, or 'bicubic' for the baseline alone "
                     "(required unless --self-check)")
    own.add_argument("--json", metavar="PATH", help="write every score, the protocol and versions to this file")
    own.add_argument("--save-images", metavar="DIR", help="write colour SR images (SR Y + bicubic Cb/Cr) as "
                     "DIR/<set>/<name>.png")
    add_bool_option(own, "--force", "replace an existing --json file, --save-images images or --report page",
                    default=False)
    own.add_argument("--report", metavar="DIR", help="write a results page, DIR/index.html (sortable tables, crops "
                     "where the model gains most), self-contained")
    own.add_argument("--threads", type=int, metavar="N", help="CPU threads per process (default: PyTorch's; under "
                     "torchrun on a CPU, the node's cores divided between its processes)")
    own.add_argument("--tile", type=tile_argument, default="auto", metavar="N",
                     help="run the model on N x N LR tiles; auto (default): only when an image does not fit the "
                          "memory budget; 0: never (output unchanged either way)")
    own.add_argument("--max-memory", type=memory_argument, metavar="SIZE",
                     help="memory budget for --tile auto, e.g. 4GB, 512MB (default: 80%% of the memory available)")
    add_bool_option(own, "--self-ensemble", "average the model over the 8 flips/rotations", default=False)
    add_bool_option(own, "--self-check", "check the protocol against the golden bicubic numbers and an independent "
                    "SSIM, print PASS/FAIL, exit 0/1", default=False)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    config, args = parse_config(argv, parser)
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from .. import image_files, report, sharding
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
    try:
        with contextlib.ExitStack() as held:
            if args.report and sharding.rank_from_env() == 0:  # the process that writes the page
                held.enter_context(hold_output(args.report, "--report", ", or choose another --report folder"))
            return run(args, config)
    except FolderBusyError as error:  # another validate.py writes the same report
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:  # the command line contradicts itself or the checkpoint
        parser.error(str(error))
    except (CheckpointError, DatasetError, EvaluationError, image_files.ImageReadError, image_files.ImageWriteError,
            OutputError, report.ReportError, OSError) as error:
        advice = f"; {memory_hint(error.__cause__)}" if isinstance(error.__cause__, InsufficientMemoryError) else ""
        print(f"{parser.prog}: error: {error}{advice}", file=sys.stderr)
        return 1
