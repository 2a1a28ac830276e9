"""The training step train.py runs and benchmarks/bench_train.py times: one step for both batch sources, the EMA of
the weights, and the Adam they update with its learning-rate schedule.

A batch source turns what an epoch yields into (LR Y, HR Y) on the device: ``LoaderBatches`` (the DataLoader path:
CPU workers cut uint8 patches, ``dataset.prepare_batch`` makes the LR on the device) or ``PoolBatches``
(``--data-on-device``: ``device_pool.DevicePool`` makes the whole batch on the device, from its index).
``TrainStep(batch)`` runs one optimiser step on it and returns the loss, detached and on the device, so train.py reads
it (a host sync) only every ``log_every`` steps.

Design note on the fast path (``--data-on-device``):

* Adam is ``fused=True`` on CUDA (one kernel for every parameter instead of a few per tensor) and ``foreach=True``
  on CPU; ``capturable=True`` as well under ``--cuda-graph``. The loader path keeps torch's defaults.
  ``load_state_dict`` takes these flags from the saved groups, so ``restore_adam_options`` puts the run's own back.
* The EMA is one ``torch._foreach_lerp_`` over all floating-point weights, on both paths.
* ``--cuda-graph`` (CUDA, one process, bf16/fp32): ``GraphedStep`` captures the whole step -- batch, forward,
  backward, clipping, Adam, EMA -- as one CUDA graph replayed every step, since a step of ~70 small convolutions is
  launch-bound on a big GPU. The learning rate and the EMA weight live in device scalars that the host fills before
  each replay, so the schedule and the EMA ramp stay the eager step's. The warm-up steps before the capture are
  undone, so the captured run starts where the eager one would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import unwrap_model
from .config import COMPILE_MODES, Config
from .dataset import batches_per_epoch, prepare_batch
from .device_pool import DevicePool
from .hardware import autocast

_ADAM_DEFAULTS = {"foreach": None, "fused": None, "capturable": False}


class FastPathError(ValueError):
    """A fast-path setting that cannot work here (reported without a traceback)."""


def check_fast_path(data_on_device: bool, cuda_graph: bool, compile_mode: str, device: torch.device,
                    dtype: torch.dtype, world_size: int) -> None:
    """Refuse combinations that cannot run, naming the option, before any data is read."""
    if not cuda_graph:
        return
    problems = [(not data_on_device, "--cuda-graph needs --data-on-device (the graph makes its own batches)"),
                (device.type != "cuda", "--cuda-graph needs a CUDA device"),
                (world_size > 1, "--cuda-graph runs in one process (DDP's gradient hooks are not captured here)"),
                (dtype == torch.float16, "--cuda-graph needs bf16 or fp32 (fp16's GradScaler syncs every step)"),
                (compile_mode == "reduce-overhead", "--cuda-graph and --compile-mode reduce-overhead both capture "
                                                    "CUDA graphs; pick one")]
    for bad, message in problems:
        if bad:
            raise FastPathError(message)


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile in a COMPILE_MODES mode ("default" is torch's own default)."""
    if mode not in COMPILE_MODES:
        raise FastPathError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}")
    return torch.compile(model) if mode == "default" else torch.compile(model, mode=mode)


# ---------------------------------------------------------------------------------------------------------------------
# Adam and the EMA
# ---------------------------------------------------------------------------------------------------------------------


def adam_options(device: torch.device, data_on_device: bool, cuda_graph: bool = False) -> dict[str, object]:
    """Adam's implementation flags: torch's defaults on the loader path; on the fast path fused on CUDA
    (capturable for graphs), foreach elsewhere."""
    if not data_on_device:
        return dict(_ADAM_DEFAULTS)
    if device.type == "cuda":
        return {**_ADAM_DEFAULTS, "fused": True, "capturable": cuda_graph}
    return {**_ADAM_DEFAULTS, "foreach": True}


def learning_rate_factor(config: Config, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step n: linear warm-up, then step / cosine / constant."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "step":
            return warm * config.lr_gamma ** ((step // steps_per_epoch) // config.lr_step_epochs)
        if config.lr_schedule == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        return warm

    return factor


def make_adam(model: nn.Module, learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
              weight_decay: float = 0.0, options: dict[str, object] | None = None) -> torch.optim.Adam:
    """The one place Adam is built (training, benchmarks, tests); ``options``: ``adam_options``' flags."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay,
                            **(options or {}))


def restore_adam_options(optimizer: torch.optim.Optimizer, options: dict[str, object]) -> None:
    """After load_state_dict: this run's implementation flags, and step counters where fused / capturable Adam
    keeps them (on the parameter's device, float32)."""
    on_device = bool(options.get("fused") or options.get("capturable"))
    for group in optimizer.param_groups:
        group.update(options)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                step = state["step"]
                state["step"] = (step.to(torch.float32, param.device) if on_device else
                                 torch.tensor(float(step)))  # a CPU scalar, as plain Adam keeps it


class ModelEma:
    """Exponential moving average of a model's weights, in one foreach lerp. The decay ramps up as
    (1 + n) / (10 + n), so the average is not dominated by the random initialisation early on.

    It holds the model's own tensors (taken when it is made): weights loaded into the model in place are seen, a
    model whose tensors are replaced needs a new ModelEma.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self.module.state_dict().values(), unwrap_model(model).state_dict().values()))
        self.floats = [ema for ema, _ in pairs if ema.is_floating_point()]
        self.sources = [new for ema, new in pairs if ema.is_floating_point()]
        self.others = [(ema, new) for ema, new in pairs if not ema.is_floating_point()]

    def next_weight(self) -> float:
        """Count one update and return its lerp weight, 1 - min(decay, (1 + n) / (10 + n))."""
        self.updates += 1
        return 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.floats, self.sources, self.next_weight())
        for ema, new in self.others:
            ema.copy_(new)


# ---------------------------------------------------------------------------------------------------------------------
# Batch sources
# ---------------------------------------------------------------------------------------------------------------------


class LoaderBatches:
    """The DataLoader path: an epoch yields TrainDataset's uint8 batches; a batch becomes (LR Y, HR Y) on
    ``device`` by dataset.prepare_batch."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device, self.scale = loader, device, loader.dataset.scale

    def epoch(self, epoch: int, start_batch: int) -> Iterable:
        """The epoch's batches from ``start_batch`` on (the same ones an uninterrupted run gets)."""
        self.loader.sampler.set_epoch(epoch)
        self.loader.sampler.set_start(start_batch * self.loader.batch_size)
        self.loader.dataset.set_epoch(epoch)
        return self.loader

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch(batch, self.scale, self.device)


class PoolBatches:
    """The device-pool path: an epoch yields batch indices; batch ``b`` is positions ``[b * batch_size, ...)`` of
    the pool's epoch order, of which this process takes its ``batch_size // world_size`` consecutive samples."""

    def __init__(self, pool: DevicePool, batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        self.pool, self.device = pool, pool.device
        self.batch_size, self.local_batch, self.rank = batch_size, batch_size // world_size, rank
        self.per_epoch = batches_per_epoch(len(pool), self.local_batch, world_size)

    def epoch(self, epoch: int, start_batch: int) -> range:
        self.pool.set_epoch(epoch)
        return range(start_batch, self.per_epoch)

    def start(self, batch_index: int) -> int:
        """Position of this process's first sample of the batch in the epoch's order."""
        return batch_index * self.batch_size + self.rank * self.local_batch

    def at(self, start: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's batch from position ``start`` (an int, or a device scalar inside a CUDA graph)."""
        return self.pool.batch(start, self.local_batch)

    def __call__(self, batch_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.at(self.start(batch_index))


# ---------------------------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------------------------


class TrainStep:
    """One optimiser step on one batch of ``batches``: forward under autocast, MSE on the Y channel, (scaled)
    backward, gradient clipping, Adam, the learning-rate schedule and the EMA. Returns the detached loss.

    ``model`` is the plain model (its parameters are clipped and averaged); ``train_model`` is what runs the forward
    pass: the model itself or its DDP / torch.compile wrapper.
    """

    def __init__(self, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 scaler: torch.amp.GradScaler, ema: ModelEma | None, batches: LoaderBatches | PoolBatches, *,
                 dtype: torch.dtype, grad_clip: float) -> None:
        self.model, self.train_model, self.optimizer, self.scheduler = model, train_model, optimizer, scheduler
        self.scaler, self.ema, self.batches, self.dtype, self.grad_clip = scaler, ema, batches, dtype, grad_clip

    def __call__(self, batch: object) -> torch.Tensor:
        lr, hr = self.batches(batch)
        with autocast(self.batches.device, self.dtype):
            sr = self.train_model(lr)
        loss = F.mse_loss(sr.float(), hr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return loss.detach()


class GraphedStep(TrainStep):
    """TrainStep on PoolBatches captured once as a CUDA graph (on the first call) and replayed; see the module
    docstring. No GradScaler: fp16 is refused by check_fast_path."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batches, PoolBatches):
            raise TypeError("GraphedStep makes its batches from a PoolBatches")
        device = self.batches.device
        self.start_at = torch.zeros((), dtype=torch.int64, device=device)
        self.lr_value = torch.zeros((), dtype=torch.float32, device=device)
        self.ema_weight = torch.zeros((), dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss = torch.zeros((), device=device)

    def __call__(self, batch_index: int) -> torch.Tensor:
        if self.graph is None:
            self.capture_graph()
        self.start_at.fill_(self.batches.start(batch_index))  # fills are queued kernels: no host sync
        self.lr_value.fill_(float(self.optimizer.param_groups[0]["lr"]))
        if self.ema is not None:
            self.ema_weight.fill_(self.ema.next_weight())
        self.graph.replay()
        self.scheduler.step()
        return self.loss

    def body(self) -> torch.Tensor:
        """The captured step: reads only device memory (the pool, start_at, lr_value, ema_weight)."""
        lr, hr = self.batches.at(self.start_at)
        # cache_enabled=False: autocast's weight-cast cache must not outlive the capture (PyTorch's graph docs).
        with torch.autocast(self.batches.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32,
                            cache_enabled=False):
            sr = self.train_model(lr)
        loss = F.mse_loss(sr.float(), hr)
        loss.backward()  # grads were set to None before the capture: backward writes them, never accumulates
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        if self.ema is not None:  # ema += (model - ema) * w, w a device scalar (lerp takes no tensor weight)
            diff = torch._foreach_sub(self.ema.sources, self.ema.floats)
            torch._foreach_mul_(diff, self.ema_weight)
            torch._foreach_add_(self.ema.floats, diff)
        return loss.detach()

    def capture_graph(self) -> None:
        saved = self._snapshot()
        groups = self.optimizer.param_groups
        for group in groups:  # capturable Adam reads the learning rate from this tensor when replayed
            group["lr"] = self.lr_value
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, lazy Adam state) off the capture stream
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self.body()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.body()
        for group, lr in zip(groups, saved["lr"]):
            group["lr"] = lr  # the scheduler and state_dict keep a float; the graph keeps lr_value
        self._restore(saved)

    def _tensors(self) -> list[torch.Tensor]:
        return list(self.model.parameters()) + (self.ema.floats if self.ema is not None else [])

    def _snapshot(self) -> dict[str, object]:
        state = {p: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.state.items()}
        return {"lr": [g["lr"] for g in self.optimizer.param_groups], "tensors": [t.clone() for t in self._tensors()],
                "state": state}

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        """Undo the warm-up: weights, EMA and Adam state as before it (fresh Adam state is zeros, step 0)."""
        for tensor, value in zip(self._tensors(), saved["tensors"]):
            tensor.copy_(value)
        for param, state in self.optimizer.state.items():
            before = saved["state"].get(param)
            for key, value in state.items():
                value.copy_(before[key]) if before else value.zero_()


def make_step(*args: object, cuda_graph: bool = False, **kwargs: object) -> TrainStep:
    """TrainStep, or GraphedStep with cuda_graph (arguments as TrainStep's)."""
    return (GraphedStep if cuda_graph else TrainStep)(*args, **kwargs)


__all__ = ["FastPathError", "GraphedStep", "LoaderBatches", "ModelEma", "PoolBatches", "TrainStep", "adam_options",
           "check_fast_path", "compile_model", "make_adam", "make_step", "restore_adam_options"]
