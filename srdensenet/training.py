"""The training loop: SRDenseNet (MSE on the Y channel, Adam) on CPU or CUDA, one process or many under torchrun.

``train(config)`` runs one configuration to its end or to a pause; cli/train.py is its command line. A run folder
``<output_dir>/<run_name>/`` holds config.json and meta.json (the run's start: git commit, versions, seed),
history.jsonl (every start and resume), log.txt (one line per epoch), train_log.jsonl (loss and learning rate
every log_every steps), tb/ (TensorBoard) and checkpoints/{last,best}.pth (each with what a resume needs). ``last`` is
written every epoch, on SIGINT/SIGTERM and when --stop-at-step / --time-limit pause the run; ``--resume auto``
continues from it exactly (same batches, same losses on CPU with a fixed seed) if the plan is unchanged (run_folder.py
says what the plan is), with the configuration saved with the run: ``train.py --run-name NAME --resume auto`` is the
whole command, and a pause ends with it (run_status.py words where a run stands). Data a preset can make (the demo's)
is made when missing (preset_data.py); a start that fails leaves no run folder behind.

``--data-on-device`` is the GPU fast path (device_pool.py, train_step.py): the training images stay on the device,
batches are cut there, Adam is fused, the EMA one foreach op, and ``--cuda-graph`` replays the whole step as one
CUDA graph. It resumes exactly too; its samples differ from the loader path's, so it is part of the plan.
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import sharding
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from .config import Config, config_to_dict, model_arch
from .data_builders import PrepareError
from .dataset import (
    TrainDataset,
    ValidationSet,
    batches_per_epoch,
    find_validation_sets,
    make_train_loader,
)
from .device_pool import DevicePool
from .evaluation import SCORE_KEYS, SkipCallback, evaluate
from .fileio import (
    OutputError,
    WriteError,
    ensure_output_dir,
    hold_output,
    write_json_atomic,
)
from .folder_lock import FolderBusyError
from .hardware import (
    PRECISIONS,
    TRAINING_PRECISIONS,
    auto_probe,
    check_precision,
    precision_name,
    resolve_device,
    resolve_precision,
)
from .layout_probe import TrainingLayout, training_layout
from .memory import allocation_failure
from .model import SRDenseNet
from .preset_data import MissingDataError, make_missing_data
from .provenance import git_commit, library_versions
from .run_folder import (
    RESOLVED_PRECISION,
    RunLog,
    check_new_run,
    check_resume,
    describe_changes,
    make_plan,
    planned_steps_done,
    record,
    remove_if_failed,
    resumed_config,
    saved_plan,
    space_warning,
)
from .run_status import (
    Command,
    StopRequest,
    continue_command,
    epoch_line_start,
    finished_message,
    instability_advice,
    kept_message,
    naming_a_whole_checkpoint,
    out_of_memory_message,
    pause_line,
    planned_epochs,
    position,
    stop_reason,
)
from .train_step import (  # FastPathError is a ValueError: main() reports it without a traceback
    LoaderBatches,
    ModelEma,
    PoolBatches,
    TrainStep,
    adam_options,
    check_fast_path,
    compile_model,
    learning_rate_factor,
    make_adam,
    make_step,
    restore_adam_options,
)


class TrainingError(RuntimeError):
    """A condition that stops training with a clear message (bad data, NaN loss, mismatched checkpoint)."""


# ---------------------------------------------------------------------------------------------------------------------
# What a run is made of
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One start or resume of a run: its setting, what it continues from, and where it stands (what is saved)."""

    config: Config
    device: torch.device
    dtype: torch.dtype
    rank: int
    world_size: int
    folder: Path
    plan: dict
    command: Command = field(default_factory=Command)  # how it was started: for the continue command
    resume: str = ""  # the checkpoint this start continues ("" for a new run)
    state: dict | None = None  # that checkpoint
    changes: dict = field(default_factory=dict)  # plan changes accepted with --resume-override
    epoch: int = 0
    batch: int = 0  # batches of this epoch done (saved as step_in_epoch)
    step: int = 0
    best_psnr: float = -math.inf
    stopped_by: str = ""  # why the run stops early ("" while it goes on)
    deadline: float = math.inf  # --time-limit, on time.monotonic()
    kept: tuple[str, int] | None = None  # the last good checkpoint with resume state, and its step
    precision_kept: bool = False  # a resume with --precision auto runs in its plan's precision (keep_run_precision)
    layout: TrainingLayout | None = None  # the memory format it trains in, and why (decided last in open_run)
    low_space: bool = False  # free space is below LOW_SPACE_CHECKPOINTS checkpoints (warned)
    refused: list[str] = field(default_factory=list)  # images left out, each said once; the run then exits 1

    def refuse(self, reason: str) -> None:
        """An image left out of training or validation: said once, in one line (main process)."""
        if self.main and reason not in self.refused:
            print(f"error: {reason}", file=sys.stderr, flush=True)
            self.refused.append(reason)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"


@dataclass
class Trainer:
    """The data, the model and what updates it."""

    dataset: TrainDataset
    batches: LoaderBatches | PoolBatches
    steps_per_epoch: int
    valid_sets: list[ValidationSet]
    model: nn.Module
    adam_options: dict[str, object]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEma | None


class LossMeter:
    """The losses since the last log line, summed on the device (read every log_every steps only)."""

    def __init__(self, device: torch.device) -> None:
        self.total, self.count, self.last = torch.zeros((), device=device), 0, math.nan

    def add(self, loss: torch.Tensor) -> None:
        self.total, self.count = self.total + loss, self.count + 1

    def mean(self, world_size: int) -> float:
        """The mean over these steps and all processes; starts a new sum."""
        self.last = float(sharding.mean(self.total / self.count, world_size))
        self.total, self.count = torch.zeros_like(self.total), 0
        return self.last

    def shown(self) -> float:
        """The last logged mean; before the first log line, the mean of the steps so far."""
        return self.last if not math.isnan(self.last) or not self.count else float(self.total / self.count)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def train(config: Config, command: Command | None = None) -> Path:
    """Run (or resume) training, holding the run folder throughout; returns the run folder. ``command``: what the
    command line typed (a resume takes the rest from the run) and its program; None: ``config`` is the whole story."""
    stop = StopRequest()
    try:
        with contextlib.ExitStack() as held:
            return run_training(config, command or Command(), stop, held)
    finally:
        stop.restore()


def run_training(config: Config, command: Command, stop: StopRequest, held: contextlib.ExitStack) -> Path:
    """Open the run, build, restore, then one epoch after another until the plan ends or a stop comes."""
    run = open_run(config, command, held)
    config = run.config  # a resume's: the run's own, with what was typed
    if run.stopped_by:  # finished, or already at --stop-at-step: nothing to do
        return run.folder
    trainer = build(run)
    if run.main:  # the data and the model checks passed: only now the run folder is made (proven writable)
        ensure_output_dir(run.checkpoints, "--output-dir")
    if run.state is not None:
        restore(run, trainer)
    step = make_train_step(run, trainer)
    log = open_log(run, trainer) if run.main else None
    if log is not None:
        held.callback(log.close)  # also when the run stops with an error
    losses = LossMeter(run.device)
    run.deadline = time.monotonic() + 60 * config.time_limit if config.time_limit else math.inf
    try:
        while run.epoch < config.epochs and not run.stopped_by:
            speed = train_epoch(run, trainer, step, losses, log, stop)
            end_epoch(run, trainer, losses, log, speed)
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        stopped_by_memory(run, trainer, error)
    if log is not None:
        log.close()
        say_how_it_ended(run, trainer)
    if stop.signal:
        raise SystemExit(128 + stop.signal)
    if run.refused:
        raise TrainingError(f"{len(run.refused)} image(s) were left out (named above); the run went on without them")
    return run.folder


def stopped_by_memory(run: Run, trainer: Trainer, error: BaseException) -> None:
    """A failed allocation in a step, a validation or a save becomes one line with what is kept and how to go on with
    less memory (a run that never saved leaves no folder: remove_if_failed); any other error goes on as it is."""
    cause = allocation_failure(error)
    if cause is None:
        raise error
    where = position(run.epoch, run.batch, trainer.steps_per_epoch, planned_epochs(run.config, trainer.steps_per_epoch))
    command = continue_command(run.config, run.command.prog, run.world_size)
    raise TrainingError(out_of_memory_message(f"at step {run.step}, {where}", cause, run.kept, run.checkpoints,
                                              command, run.config)) from None


def say_how_it_ended(run: Run, trainer: Trainer) -> None:
    """The run's last lines (main process): where its files are, then where it stands; a pause ends with the command
    that continues it, the line to copy."""
    config = run.config
    where = position(run.epoch, run.batch, trainer.steps_per_epoch, planned_epochs(config, trainer.steps_per_epoch))
    print(f"checkpoints: {run.checkpoints}  TensorBoard: tensorboard --logdir {run.folder / 'tb'}")
    if run.epoch >= config.epochs or (config.max_steps and run.step >= config.max_steps):
        print(f"run complete: step {run.step}, {where}", flush=True)
    else:
        command = continue_command(config, run.command.prog, run.world_size)
        print(pause_line(run.step, where, run.stopped_by, command), flush=True)


def open_run(config: Config, command: Command, held: contextlib.ExitStack) -> Run:
    """The configuration (a resume's is the run's own plus what was typed), the device, the processes, the data a
    preset can make, the run folder's lock (kept in ``held``) and its verdict, decided before the run folder is
    written: a start that would mix runs, a resume of a run that is already done, or data that is missing touches
    nothing there."""
    with naming_a_whole_checkpoint(config, command.prog):  # a damaged checkpoint names one the run can go back to
        config = resumed_config(config, command.typed, command.preset)
    device = resolve_device(config.device)
    rank, world_size = sharding.join(device)
    if any(other != config_to_dict(config) for other in sharding.gather(config_to_dict(config), world_size)):
        raise TrainingError(f"the processes read different configurations of {config.run_name} (was its folder "
                            f"changed while they started?); start them again")
    # Every process resolves (and checks) the precision; all take rank 0's, so a measured "auto" cannot split them.
    precision = sharding.gather(precision_name(resolve_precision(config.precision, device)), world_size)[0]
    dtype = PRECISIONS[precision].dtype
    if config.batch_size % world_size:
        raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {world_size} processes")
    check_fast_path(config.data_on_device, config.cuda_graph, config.compile_mode, device, dtype, world_size)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    np.random.seed(config.seed)
    run = Run(config, device, dtype, rank, world_size, Path(config.output_dir) / config.run_name,
              make_plan(config, precision_name(dtype)), command)
    make_data(run)
    lock_run_folder(run, held)
    if run.main and not run.folder.exists():
        held.push(remove_if_failed(run.folder))  # runs before the lock is released
    run.resume = str(run.checkpoints / "last.pth") if config.resume == "auto" else config.resume
    if config.resume == "auto" and not Path(run.resume).is_file():
        run.resume = ""
    if run.resume:
        with naming_a_whole_checkpoint(config, command.prog):
            done = check_resume_state(run)
        if done:
            if run.main:
                print(done)
            run.stopped_by = "nothing to do"
            return run
    else:
        check_new_run(run.folder, run.plan)
    # Last, so a refused start measures nothing; rank 0 decides (auto may measure) and every process takes its layout.
    layout = training_layout(run.config, command.typed, device, run.dtype, world_size) if run.main else None
    run.layout = sharding.gather(layout, world_size)[0]  # a barrier too: every process has checked the folder
    run.config = replace(run.config, channels_last=run.layout.channels_last)  # what config.json and checkpoints keep
    return run


def make_data(run: Run) -> None:
    """The data a preset can make, made by the main process when missing (said in one line; the others wait);
    missing data it cannot make stops every process, naming the command that makes it."""
    said, failure, missing = "", "", False
    if run.main:
        try:
            said = make_missing_data(run.config, run.command.prog)
        except (MissingDataError, PrepareError, OutputError, FolderBusyError) as error:
            failure, missing = str(error), isinstance(error, MissingDataError)
    # A barrier too: the data is there for every process, and every process stops alike.
    failure, missing = sharding.gather((failure, missing), run.world_size)[0]
    if said:
        print(said, flush=True)
    if failure:
        raise MissingDataError(failure) if missing else TrainingError(failure)


def lock_run_folder(run: Run, held: contextlib.ExitStack) -> None:
    """The main process holds the run folder until it exits (fileio.hold_output); the others go on only once it
    does, and all stop if it cannot."""
    refused: tuple[bool, str] = (False, "")
    if run.main:
        try:
            held.enter_context(hold_output(run.folder, "--output-dir", ", then continue with --resume auto; or "
                                                                       "choose another --run-name"))
        except (FolderBusyError, OutputError) as error:  # held by another process, or no lock file can be made
            refused = (isinstance(error, FolderBusyError), str(error))
    busy, message = sharding.gather(refused, run.world_size)[0]  # a barrier too: rank 0 holds the lock from here
    if message:
        raise FolderBusyError(message) if busy else OutputError(message)


def check_resume_state(run: Run) -> str:
    """Load the checkpoint to resume and check that this run can continue it; returns why there is nothing to do
    ("" when there is)."""
    config, resume = run.config, run.resume
    state = run.state = load_checkpoint(resume)
    run.kept = (resume, state.get("step", 0))
    if "optimizer" not in state:
        raise TrainingError(f"{resume}: holds model weights only (a release or .safetensors file, no optimiser "
                            f"state), so training cannot resume from it; start from it with --init-weights")
    if state["arch"] != model_arch(config):
        raise TrainingError(f"{resume}: was trained with {state['arch']}, the config asks for "
                            f"{model_arch(config)}; pass the same model fields to resume")
    keep_run_precision(run)
    run.changes = check_resume(Path(resume), run.folder, state, run.plan, config.resume_override)
    if planned_steps_done(state, config):
        return finished_message(resume, state, run.checkpoints)
    if config.stop_at_step and state["step"] >= config.stop_at_step:
        return (f"{resume} is at step {state['step']}, already at --stop-at-step {config.stop_at_step}; nothing to "
                f"do (raise --stop-at-step or leave it out to continue)")
    if state.get("world_size", run.world_size) != run.world_size and state.get("step_in_epoch", 0):
        raise TrainingError(f"{resume}: saved mid-epoch with {state['world_size']} processes; resume with the "
                            f"same number (now {run.world_size})")
    return ""


def keep_run_precision(run: Run) -> None:
    """With --precision auto a resume continues in the precision of the run's plan (what auto became when it started,
    maybe on another CPU or before auto was measured), not in what auto would pick here."""
    saved, here = saved_plan(run.state).get(RESOLVED_PRECISION), run.plan[RESOLVED_PRECISION]
    if run.config.precision != "auto" or saved == here:
        return
    try:
        check_precision(saved, run.device, TRAINING_PRECISIONS[1:])
    except ValueError:  # fp16 off CUDA (or none saved): left to the plan check, which names the change
        return
    run.dtype, run.plan[RESOLVED_PRECISION], run.precision_kept = PRECISIONS[saved].dtype, saved, True
    config = run.config
    check_fast_path(config.data_on_device, config.cuda_graph, config.compile_mode, run.device, run.dtype,
                    run.world_size)
    if run.main:
        print(f"resuming in {saved}, the precision this run started with (--precision auto would pick {here} here)")


def build(run: Run) -> Trainer:
    """The data, the model (from --init-weights when a new run asks), Adam, the schedule, the scaler and the EMA."""
    config, device, world_size = run.config, run.device, run.world_size
    dataset = TrainDataset(config.train_dirs, config.upscale_factor, config.hr_patch_size, config.patches_per_image,
                           config.augment, config.seed, config.train_lr_lmdb, config.jpeg_prescale,
                           max_pixels=config.max_pixels)
    for reason in dataset.refused:
        run.refuse(reason)
    # Built on the fast path too (without workers), for its batch-size check; only the loader path iterates it.
    loader = make_train_loader(dataset, config.batch_size // world_size,
                               0 if config.data_on_device else config.num_workers, device,
                               num_replicas=world_size, rank=run.rank, seed=config.seed)
    batches = (PoolBatches(DevicePool.from_dataset(dataset, device), config.batch_size, world_size, run.rank)
               if config.data_on_device else LoaderBatches(loader, device))
    steps_per_epoch = batches_per_epoch(len(dataset), config.batch_size // world_size, world_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    valid_sets = find_validation_sets(config.valid_dirs, config.upscale_factor, config.max_pixels) if run.main else []

    model = SRDenseNet(**model_arch(config)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.init_weights and run.state is None:
        init = load_checkpoint(config.init_weights)
        missing, unexpected = load_weights(model, init.get("ema") or init["model"], strict=config.init_strict,
                                           source=config.init_weights)
        if run.main:
            print(f"initialised from {config.init_weights}: {len(missing)} tensors missing/mismatched, "
                  f"{len(unexpected)} unexpected{' (strict)' if config.init_strict else ''}")
    options = adam_options(device, config.data_on_device, config.cuda_graph)
    optimizer = make_adam(model, config.learning_rate, tuple(config.adam_betas), config.weight_decay, options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config, steps_per_epoch,
                                                                                  total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=run.dtype == torch.float16)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    return Trainer(dataset, batches, steps_per_epoch, valid_sets, model, options, optimizer, scheduler, scaler, ema)


def restore(run: Run, trainer: Trainer) -> None:
    """Continue from the checkpoint: weights, EMA, optimiser, schedule, scaler, position and random state."""
    config, state, source = run.config, run.state, run.resume
    load_weights(trainer.model, state["model"], source=source)
    trainer.optimizer.load_state_dict(state["optimizer"])
    restore_adam_options(trainer.optimizer, trainer.adam_options)  # load_state_dict took the saved run's flags
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    if trainer.ema is not None:
        load_weights(trainer.ema.module, state.get("ema") or state["model"], source=source)
        trainer.ema.updates = state.get("ema_updates", 0)
    # The optimiser and schedule follow the (possibly --resume-override'd) config, not the values saved with the
    # state: unchanged plans give the same numbers, changed ones take effect from here.
    trainer.scheduler.base_lrs = [config.learning_rate] * len(trainer.optimizer.param_groups)
    for group in trainer.optimizer.param_groups:
        group.update(initial_lr=config.learning_rate, betas=tuple(config.adam_betas),
                     weight_decay=config.weight_decay)
    run.epoch, run.batch, run.step = state["epoch"], state["step_in_epoch"], state["step"]
    run.best_psnr = state.get("best_psnr", -math.inf)
    restore_rng_state(state["rng"])


def make_train_step(run: Run, trainer: Trainer) -> TrainStep:
    """The step, on the model as it trains: torch.compile'd with --compile, in DDP under torchrun."""
    config, device = run.config, run.device
    train_model: nn.Module = trainer.model
    if config.compile:
        train_model = compile_model(train_model, config.compile_mode)
    if sharding.launched_by_torchrun():
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.data_on_device and device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN time its algorithms once
    return make_step(trainer.model, train_model, trainer.optimizer, trainer.scheduler, trainer.scaler, trainer.ema,
                     trainer.batches, dtype=run.dtype, grad_clip=config.grad_clip, cuda_graph=config.cuda_graph)


def open_log(run: Run, trainer: Trainer) -> RunLog:
    """Record this start or resume in the run folder, open the logs and say what runs (main process)."""
    config, device = run.config, run.device
    metadata = run_metadata(config, device, run.dtype, run.world_size)
    probe = auto_probe(device) if config.precision == "auto" else None
    if probe is not None:  # what auto measured here, and whether this start follows it or its plan
        metadata["auto_precision"] = {**probe.record(), "kept_from_plan": run.precision_kept}
    if run.layout.auto:  # what --channels-last auto measured (or was told) here
        metadata["auto_channels_last"] = run.layout.record()
    auto = "" if config.precision != "auto" else " (auto: the run's precision)" if run.precision_kept else (
        f" (auto: {probe.reason})" if probe is not None else " (auto)")
    if run.resume:  # config.json and meta.json describe the run's start; later events go to history.jsonl
        record(run.folder, "resume", config, step=run.step, checkpoint=run.resume, plan_changes=run.changes,
               meta=metadata)
        if run.changes:
            print(f"plan changed on resume (--resume-override): {describe_changes(run.changes)}")
    else:
        write_json_atomic(run.folder / "config.json", config_to_dict(config))
        write_json_atomic(run.folder / "meta.json", metadata)
        record(run.folder, "start", config, meta=metadata)
    log = RunLog(run.folder, run.step)
    warn_if_low_space(run, checkpoint_bytes(run, trainer))
    pool = trainer.batches.pool if isinstance(trainer.batches, PoolBatches) else None
    dataset = trainer.dataset
    where = position(run.epoch, run.batch, trainer.steps_per_epoch, planned_epochs(config, trainer.steps_per_epoch))
    resumed = f", resumed from {run.resume} at step {run.step}, {where}" if run.resume else ""
    small = "".join(f"{', ' if i else ': '}{Path(key).name}" for i, key in enumerate(dataset.skipped[:3]))
    print(f"run {run.folder}: {len(dataset.items)} training images ({len(dataset.skipped)} smaller than the patch "
          f"skipped{small}{', ...' if len(dataset.skipped) > 3 else ''}), {trainer.steps_per_epoch} steps/epoch, "
          f"{run.world_size} process(es), device {device}, "
          f"{precision_name(run.dtype)}{auto}"
          f", {run.layout.words()}"
          f"{f', data on device ({pool.nbytes / 2**20:.0f} MiB)' if pool is not None else ''}"
          f"{', CUDA graph' if config.cuda_graph else ''}{resumed}")
    return log


def train_epoch(run: Run, trainer: Trainer, step: TrainStep, losses: LossMeter, log: RunLog | None,
                stop: StopRequest) -> float:
    """The steps of run.epoch from run.batch on, to its end or to a stop; returns the patches per second."""
    config = run.config
    batches = trainer.batches.epoch(run.epoch, run.batch)
    trainer.model.train()
    started, seen = time.perf_counter(), 0
    epochs = planned_epochs(config, trainer.steps_per_epoch)
    bar = tqdm(batches, desc=f"epoch {run.epoch + 1}/{epochs}", initial=run.batch,
               total=trainer.steps_per_epoch, disable=None if run.main else True, leave=False, dynamic_ncols=True)
    for batch in bar:
        losses.add(step(batch))
        run.step, run.batch, seen = run.step + 1, run.batch + 1, seen + config.batch_size
        if run.step % config.log_every == 0 or run.batch == trainer.steps_per_epoch:
            mean_loss = losses.mean(run.world_size)
            if not math.isfinite(mean_loss):
                raise TrainingError(f"loss became {mean_loss} at step {run.step} (epoch {run.epoch + 1}); stopped. "
                                    + instability_advice(run.checkpoints))
            if log is not None:
                log.losses(run.step, run.epoch, mean_loss, trainer.scheduler.get_last_lr()[0])
                bar.set_postfix(loss=f"{mean_loss:.5f}", patches_s=f"{seen / (time.perf_counter() - started):.0f}")
        run.stopped_by = agreed_stop(run, stop.signal)
        if run.stopped_by:
            break
    bar.close()
    return seen / max(time.perf_counter() - started, 1e-9)


def agreed_stop(run: Run, signal_number: int) -> str:
    """Why training stops after this step ("" = it goes on); every process stops at the same step."""
    reason = stop_reason(run.config, run.step, signal_number, run.deadline)
    if run.world_size > 1:  # no device sync when alone
        stopping = float(sharding.mean(torch.tensor(float(bool(reason)), device=run.device), run.world_size)) > 0
        reason = reason or ("another process" if stopping else "")
    return reason


def end_epoch(run: Run, trainer: Trainer, losses: LossMeter, log: RunLog | None, speed: float) -> None:
    """After an epoch, or a stop within one: the position moves on, then (main process) validation when due, the
    checkpoints and the epoch's line."""
    config = run.config
    if not run.stopped_by or run.batch == trainer.steps_per_epoch:
        run.epoch, run.batch = run.epoch + 1, 0
    if log is not None:
        start = epoch_line_start(run.epoch, run.batch, trainer.steps_per_epoch,
                                 planned_epochs(config, trainer.steps_per_epoch))
        message = (f"{start} step {run.step} loss {losses.shown():.6f} "
                   f"lr {trainer.scheduler.get_last_lr()[0]:.3g} {speed:.1f} patches/s")
        due = run.stopped_by or (run.batch == 0 and (run.epoch % config.validate_every == 0
                                                      or run.epoch == config.epochs))
        if trainer.valid_sets and due:
            message += validate_and_keep_best(run, trainer, log)
        save(run, trainer, "last")
        log.epoch(message)
    sharding.barrier()


def validate_and_keep_best(run: Run, trainer: Trainer, log: RunLog) -> str:
    """Score the EMA (or the model) on the validation sets; a new best on the first set is saved as `best`.
    Returns the scores for the epoch's line."""
    ema = trainer.ema
    scores = validate(ema.module if ema else trainer.model, trainer.valid_sets, run.device, log, run.step,
                      run.config, lambda set_name, image, reason: run.refuse(reason))
    text = "".join(f" | {name} {s['psnr']:.3f} dB / {s['ssim']:.4f} (bicubic {s['bicubic_psnr']:.3f})"
                   for name, s in scores.items())
    first = scores[trainer.valid_sets[0].name]
    if first["psnr"] > run.best_psnr:
        run.best_psnr = first["psnr"]
        save(run, trainer, "best", valid_scores={k: v for k, v in first.items() if k != "images"})
        text += " *best*"
    return text


def save(run: Run, trainer: Trainer, name: str, **extra: object) -> None:
    """checkpoints/<name>.pth: the weights, the EMA, the position and what an exact resume needs (optimiser,
    schedule, scaler, random state): `best` too, so a run whose `last` is damaged can go back to it."""
    model, ema = trainer.model, trainer.ema
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f"the weights became NaN or infinite by step {run.step}; not saving them. "
                            + instability_advice(run.checkpoints))
    state = dict(config=config_to_dict(run.config), plan=run.plan, epoch=run.epoch, step_in_epoch=run.batch,
                 step=run.step, best_psnr=run.best_psnr, world_size=run.world_size, **extra)
    state.update(optimizer=trainer.optimizer.state_dict(), scheduler=trainer.scheduler.state_dict(),
                 scaler=trainer.scaler.state_dict(), rng=capture_rng_state(), ema_updates=ema.updates if ema else 0)
    path = run.checkpoints / f"{name}.pth"
    try:
        save_checkpoint(path, model, ema_model=ema.module if ema else None, **state)
    except WriteError as error:
        raise error.keeping(kept_message(run.kept, run.checkpoints)) from None
    if name == "last":
        run.kept = (str(path), run.step)
        warn_if_low_space(run, path.stat().st_size)


def warn_if_low_space(run: Run, checkpoint_bytes: int) -> None:
    """Say once when free space at the run folder falls below a few checkpoints (again after it recovers)."""
    warning = space_warning(run.folder, checkpoint_bytes)
    if warning and not run.low_space:
        print(warning, file=sys.stderr, flush=True)
    run.low_space = bool(warning)


def checkpoint_bytes(run: Run, trainer: Trainer) -> int:
    """The size of ``last``: the saved file's, or before any, the weights, EMA and Adam's two moments."""
    last = run.checkpoints / "last.pth"
    if last.is_file():
        return last.stat().st_size
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    return weights * (4 if trainer.ema is not None else 3)


def run_metadata(config: Config, device: torch.device, dtype: torch.dtype, world_size: int) -> dict:
    return {"command": sys.argv, "git_commit": git_commit(), "seed": config.seed, "device": str(device),
            "precision": precision_name(dtype), "world_size": world_size, "versions": library_versions(),
            "host": {"platform": platform.platform(), "processor": platform.processor(), "threads":
                     torch.get_num_threads(), "cuda": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else None}}


def validate(model: nn.Module, valid_sets: list, device: torch.device, log: RunLog, step: int, config: Config,
             on_skip: SkipCallback | None = None) -> dict:
    """PSNR/SSIM per set through the one evaluate() that validate.py uses too; logs scalars and a few images.
    ``on_skip``: evaluate's, for an image left out."""
    result = evaluate(model, valid_sets, device=device, precision="fp32", keep_samples=config.num_log_images,
                      on_skip=on_skip)
    for name, s in result.sets.items():
        log.scalars(step, {f"valid/{name}/{key}": s[key] for key in SCORE_KEYS})
    for index, sample in enumerate(result.samples):
        log.image(f"valid/{index}_bicubic|sr|hr", np.concatenate(sample, axis=1), step)
    return result.sets
