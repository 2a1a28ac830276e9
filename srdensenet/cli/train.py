"""Train SRDenseNet (MSE on the Y channel, Adam) on CPU or CUDA, one process or many under torchrun.

    python train.py --preset demo                                   # small model on the embedded photos
    python train.py --preset paper --train-dirs data/DIV2K.lmdb --valid-dirs data/Set5 --resume auto
    python train.py --run-name demo --resume auto                   # continue a run with its own configuration
    torchrun --nproc_per_node 4 train.py --preset paper ...         # DDP: NCCL on GPUs, gloo on CPU

Every Config field (config.py) is an option; --preset comes first, then overrides in order. A resume continues with
the configuration saved with the run: only the options typed on its command line change it (a change of the plan is
refused unless --resume-override). The demo data is made when missing. The run folder, its checkpoints and exact
resume: docs/training.md.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from ..config import Config, make_parser, parse_config
from ..fileio import OutputError
from ..folder_lock import FolderBusyError
from . import rank_zero


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = make_parser(__doc__)
    parser.prog = prog or parser.prog
    argv = sys.argv[1:] if argv is None else list(argv)
    config, args = parse_config(argv, parser)
    typed = frozenset(f.name for f in fields(Config) if getattr(args, f.name, None) is not None)
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from .. import sharding
    from ..checkpoint import CheckpointError
    from ..dataset import DatasetError, MissingFolderError
    from ..run_folder import RunExistsError, RunFolderError, preset_in
    from ..run_status import Command
    from ..training import TrainingError, train

    try:
        train(config, Command(parser.prog, typed, preset_in(argv)))
    except FolderBusyError as error:  # said once, by the process that tried the lock
        if rank_zero():
            print(f"error: {error}", file=sys.stderr)
        return 2
    except (MissingFolderError, RunExistsError) as error:  # names what is not there, or a run it would mix with
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TrainingError, RunFolderError, DatasetError, CheckpointError, OutputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        sharding.finish()
    return 0
