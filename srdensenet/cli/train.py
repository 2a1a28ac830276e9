"""Train SRDenseNet (MSE on the Y channel, Adam) on CPU or CUDA, one process or many under torchrun.

    python train.py --preset demo                                   # small model on the embedded photos
    python train.py --preset paper --train-dirs data/DIV2K.lmdb --valid-dirs data/Set5 --resume auto
    torchrun --nproc_per_node 4 train.py --preset paper ...         # DDP: NCCL on GPUs, gloo on CPU

Every Config field (config.py) is an option; --preset comes first, then overrides in order. The run folder, its
checkpoints and exact resume: docs/training.md.
"""

from __future__ import annotations

import sys

from ..config import make_parser, parse_config
from ..fileio import OutputError
from ..folder_lock import FolderBusyError


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = make_parser(__doc__)
    parser.prog = prog or parser.prog
    config, _ = parse_config(argv, parser)
    # Here, not at the top: --help and a bad command line load no PyTorch.
    from .. import sharding
    from ..checkpoint import CheckpointError
    from ..dataset import DatasetError
    from ..run_folder import RunFolderError
    from ..training import TrainingError, train

    try:
        train(config)
    except FolderBusyError as error:  # said once, by the process that tried the lock
        if sharding.rank_from_env() == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except (TrainingError, RunFolderError, DatasetError, CheckpointError, OutputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        sharding.finish()
    return 0
