"""Independent jobs (images to upscale or to score) split across the processes of a ``torchrun`` launch.

    torchrun --nproc_per_node 4 inference.py -i frames/ -o out/          # one GPU per process, or CPU cores split
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint host:29500 validate.py --weights W --valid-dirs ...

Every process builds the same sorted job list and takes every world_size-th job from its rank on, so no job list is
ever sent around; results (small: counts, per-image scores) are gathered with a gloo process group, which needs no
GPU and works across nodes through torchrun's own flags. Outside torchrun everything is one process, world size 1.
On a CPU, the cores are divided between the processes of a node unless ``--threads`` says otherwise (torchrun sets
OMP_NUM_THREADS=1 for every process, which would leave cores idle).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_from_env() -> int:
    """This process's rank before any process group exists (0 outside torchrun): who prints usage errors."""
    return int(os.environ.get("RANK", 0))


def init(device: torch.device, threads: int | None = None) -> tuple[int, int]:
    """(rank, world size). Under torchrun, joins a gloo group (kept until ``finish``); sets the CPU threads."""
    rank, world = 0, 1
    if launched_by_torchrun():
        if not dist.is_initialized():
            # Long enough for the slowest process to finish its share before the final gather.
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
        rank, world = dist.get_rank(), dist.get_world_size()
    if threads:
        torch.set_num_threads(threads)
    elif world > 1 and device.type == "cpu":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return rank, world


def shard(items: Sequence, rank: int, world: int) -> list:
    """This process's share of items: every world-th item from ``rank`` on (sizes differ by at most one)."""
    return list(items[rank::world])


def gather(value: object, world: int) -> list:
    """Every process's ``value``, in rank order (on every process); [value] when alone."""
    if world == 1:
        return [value]
    values: list = [None] * world
    dist.all_gather_object(values, value)
    return values


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
