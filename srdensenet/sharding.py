"""Processes of a ``torchrun`` launch: joining the process group (training and scoring alike), and independent jobs
(images to upscale or to score) split across the processes.

    torchrun --nproc_per_node 4 train.py --preset paper ...             # DDP: NCCL on GPUs, gloo on CPU
    torchrun --nproc_per_node 4 inference.py -i frames/ -o out/          # one GPU per process, or CPU cores split
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint host:29500 validate.py --weights W --valid-dirs ...

For jobs, every process builds the same sorted job list and takes every world_size-th job from its rank on, so no
job list is ever sent around; results (small: counts, per-image scores) are gathered with a gloo process group, which
needs no GPU and works across nodes through torchrun's own flags. Outside torchrun everything is one process, world
size 1. On a CPU, ``init`` divides the cores between the processes of a node unless ``--threads`` says otherwise
(torchrun sets OMP_NUM_THREADS=1 for every process, which would leave cores idle).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(device: torch.device, backend: str | None = None,
         timeout: datetime.timedelta | None = None) -> tuple[int, int]:
    """(rank, world size). Under torchrun the process group is joined (once; kept until ``finish``), even by a single
    process, so that the distributed code path is the one that runs. ``backend`` None is the device's own: NCCL on
    CUDA (with this process's GPU made current), gloo on CPU. Outside torchrun: (0, 1)."""
    if not launched_by_torchrun():
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def init(device: torch.device, threads: int | None = None) -> tuple[int, int]:
    """(rank, world size) for sharded jobs: under torchrun, joins a gloo group; sets the CPU threads."""
    # Long enough for the slowest process to finish its share before the final gather.
    rank, world = join(device, "gloo", timeout=datetime.timedelta(hours=12))
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


def mean(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``value`` over all processes (on every process); ``value`` itself when alone."""
    if world == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / world


def barrier() -> None:
    """Wait for every process (nothing to wait for when alone)."""
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
