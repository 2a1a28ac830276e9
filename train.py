"""Train SRDenseNet (MSE on the Y channel, Adam) on CPU or CUDA, one process or many under torchrun.

    python train.py --preset demo                                   # small model on the embedded photos
    python train.py --preset paper --train-dirs data/DIV2K.lmdb --valid-dirs data/Set5 --resume auto
    torchrun --nproc_per_node 4 train.py --preset paper ...         # DDP: NCCL on GPUs, gloo on CPU

A run folder ``<output_dir>/<run_name>/`` holds config.json and meta.json (the run's start: git commit, versions,
seed), history.jsonl (every start and resume), log.txt (one line per epoch), train_log.jsonl (loss and learning rate
every log_every steps), tb/ (TensorBoard) and checkpoints/{last,best}.pth. ``last`` is written every epoch, on
SIGINT/SIGTERM and when --stop-at-step / --time-limit pause the run; ``--resume auto`` continues from it exactly (same
batches, same losses on CPU with a fixed seed) if the plan is unchanged (run_folder.py says what the plan is).

``--data-on-device`` is the GPU fast path (device_pool.py, fast_step.py): the training images stay on the device,
batches are cut there, Adam is fused, the EMA one foreach op, and ``--cuda-graph`` replays the whole step as one
CUDA graph. It resumes exactly too; its samples differ from the loader path's, so it is part of the plan.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import fast_step  # the --data-on-device step; its FastPathError is a ValueError, reported by main() without a traceback
from checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from config import Config, config_to_dict, make_parser, model_arch, parse_config
from dataset import (
    DatasetError,
    TrainDataset,
    batches_per_epoch,
    find_validation_sets,
    make_train_loader,
    prepare_batch,
)
from device_pool import DevicePool
from evaluation import SAMPLES_KEY, evaluate, set_scores
from fileio import OutputError, ensure_output_dir, exit_quietly_on_broken_pipe, write_json_atomic
from hardware import autocast, precision_name, resolve_device, resolve_precision
from model import SRDenseNet
from provenance import git_commit, library_versions
from run_folder import (
    RunFolderError,
    check_new_run,
    check_resume,
    describe_changes,
    keep_log_until,
    make_plan,
    planned_steps_done,
    record,
)


class TrainingError(RuntimeError):
    """A condition that stops training with a clear message (bad data, NaN loss, mismatched checkpoint)."""


# ---------------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------------


class ModelEma:
    """Exponential moving average of the weights; the effective decay ramps up as (1 + n) / (10 + n) so the
    average is not dominated by the random initialisation early on."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, new in zip(self.module.state_dict().values(), unwrap_model(model).state_dict().values()):
            ema.lerp_(new.detach(), 1.0 - decay) if ema.is_floating_point() else ema.copy_(new)


def instability_advice(checkpoints: Path) -> str:
    return (f"The last good checkpoint is {checkpoints / 'last.pth'}; try a lower --learning-rate, --grad-clip 1 or "
            f"--precision fp32")


def learning_rate_factor(config: Config, steps_per_epoch: int, total_steps: int):
    """Multiplier of the base learning rate at optimiser step n: linear warm-up, then step / cosine / constant."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "step":
            return warm * config.lr_gamma ** ((step // steps_per_epoch) // config.lr_step_epochs)
        if config.lr_schedule == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        return warm

    return factor


def setup_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size). Under torchrun (LOCAL_RANK set) the process group is always initialised, even for one
    process, so the DDP code path is the one that runs: NCCL on CUDA, gloo on CPU. Multi-node comes from
    torchrun's own flags (--nnodes, --rdzv-endpoint, ...)."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def all_mean(value: torch.Tensor, world_size: int) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value


def run_metadata(config: Config, device: torch.device, dtype: torch.dtype, world_size: int) -> dict:
    return {"command": sys.argv, "git_commit": git_commit(), "seed": config.seed, "device": str(device),
            "precision": precision_name(dtype), "world_size": world_size, "versions": library_versions(),
            "host": {"platform": platform.platform(), "processor": platform.processor(), "threads":
                     torch.get_num_threads(), "cuda": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else None}}


class StopRequest:
    """Turns SIGINT / SIGTERM into a flag checked between steps, so `last` is saved before exiting."""

    def __init__(self) -> None:
        self.signal = 0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def train(config: Config) -> Path:
    """Run (or resume) training; returns the run folder."""
    stop = StopRequest()
    try:
        return _train(config, stop)
    finally:
        stop.restore()


def _train(config: Config, stop: StopRequest) -> Path:
    device = resolve_device(config.device)
    rank, world_size = setup_distributed(device)
    main_process = rank == 0
    dtype = resolve_precision(config.precision, device)
    if config.batch_size % world_size:
        raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {world_size} processes")
    fast_step.check_fast_path(config.data_on_device, config.cuda_graph, config.compile_mode, device, dtype, world_size)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    np.random.seed(config.seed)
    run_dir = Path(config.output_dir) / config.run_name
    checkpoints = run_dir / "checkpoints"
    plan = make_plan(config, precision_name(dtype))
    # Decided before any data is read or any file written: a start that would mix runs, or a resume of a run that
    # is already done, touches nothing.
    resume = str(checkpoints / "last.pth") if config.resume == "auto" else config.resume
    if config.resume == "auto" and not Path(resume).is_file():
        resume = ""
    state, changes = None, {}
    if resume:
        state = load_checkpoint(resume)
        if "optimizer" not in state:
            raise TrainingError(f"{resume}: holds model weights only (a release or .safetensors file, no optimiser "
                                f"state), so training cannot resume from it; start from it with --init-weights")
        if state["arch"] != model_arch(config):
            raise TrainingError(f"{resume}: was trained with {state['arch']}, the config asks for "
                                f"{model_arch(config)}; pass the same model fields to resume")
        changes = check_resume(Path(resume), run_dir, state, plan, config.resume_override)
        if planned_steps_done(state, config):
            if main_process:
                print(finished_message(resume, state, checkpoints))
            return run_dir
        if config.stop_at_step and state["step"] >= config.stop_at_step:
            if main_process:
                print(f"{resume} is at step {state['step']}, already at --stop-at-step {config.stop_at_step}; "
                      f"nothing to do (raise --stop-at-step or leave it out to continue)")
            return run_dir
    else:
        check_new_run(run_dir, plan)
    if dist.is_initialized():
        dist.barrier()  # every process has checked the folder before the first one writes into it
    if main_process:  # before reading any data: a run must not fail at its first save
        ensure_output_dir(checkpoints, "--output-dir")

    dataset = TrainDataset(config.train_dirs, config.upscale_factor, config.hr_patch_size, config.patches_per_image,
                           config.augment, config.seed, config.train_lr_lmdb, config.jpeg_prescale)
    # Built on the fast path too (without workers), for its batch-size check; only the loader path iterates it.
    loader = make_train_loader(dataset, config.batch_size // world_size,
                               0 if config.data_on_device else config.num_workers, device,
                               num_replicas=world_size, rank=rank, seed=config.seed)
    pool = DevicePool.from_dataset(dataset, device) if config.data_on_device else None
    steps_per_epoch = batches_per_epoch(len(dataset), config.batch_size // world_size, world_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    valid_sets = find_validation_sets(config.valid_dirs, config.upscale_factor) if main_process else []

    model = SRDenseNet(**model_arch(config)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The fast path's Adam is fused (CUDA) or foreach (CPU); the loader path's keeps torch's defaults.
    adam_flags = fast_step.adam_options(device, config.cuda_graph) if pool is not None else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=tuple(config.adam_betas),
                                 weight_decay=config.weight_decay, **adam_flags)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config, steps_per_epoch,
                                                                                  total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema_class = fast_step.ForeachEma if pool is not None else ModelEma
    ema = ema_class(model, config.ema_decay) if config.ema_decay > 0 else None
    epoch, start_batch, step, best_psnr = 0, 0, 0, -math.inf

    if resume:
        if state.get("world_size", world_size) != world_size and state.get("step_in_epoch", 0):
            raise TrainingError(f"{resume}: saved mid-epoch with {state['world_size']} processes; resume with the "
                                f"same number (now {world_size})")
        load_weights(model, state["model"], source=resume)
        optimizer.load_state_dict(state["optimizer"])
        if adam_flags:  # load_state_dict took the saved run's implementation flags
            fast_step.restore_adam_options(optimizer, adam_flags)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            load_weights(ema.module, state.get("ema") or state["model"], source=resume)
            ema.updates = state.get("ema_updates", 0)
        # The optimiser and schedule follow the (possibly --resume-override'd) config, not the values saved with
        # the state: unchanged plans give the same numbers, changed ones take effect from here.
        scheduler.base_lrs = [config.learning_rate] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group.update(initial_lr=config.learning_rate, betas=tuple(config.adam_betas),
                         weight_decay=config.weight_decay)
        epoch, start_batch, step = state["epoch"], state["step_in_epoch"], state["step"]
        best_psnr = state.get("best_psnr", -math.inf)
        restore_rng_state(state["rng"])
    elif config.init_weights:
        init = load_checkpoint(config.init_weights)
        missing, unexpected = load_weights(model, init.get("ema") or init["model"], strict=config.init_strict,
                                           source=config.init_weights)
        if main_process:
            print(f"initialised from {config.init_weights}: {len(missing)} tensors missing/mismatched, "
                  f"{len(unexpected)} unexpected{' (strict)' if config.init_strict else ''}")
        if ema is not None:
            ema = ema_class(model, config.ema_decay)

    train_model: nn.Module = model
    if config.compile:
        train_model = fast_step.compile_model(train_model, config.compile_mode)
    if dist.is_initialized():
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    run_step = None
    if pool is not None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN time its algorithms once
        run_step = fast_step.make_step(model, train_model, optimizer, scheduler, scaler, ema, pool, dtype=dtype,
                             grad_clip=config.grad_clip, batch_size=config.batch_size, world_size=world_size,
                             rank=rank, cuda_graph=config.cuda_graph)

    writer = None
    if main_process:
        metadata = run_metadata(config, device, dtype, world_size)
        if resume:  # config.json and meta.json describe the run's start; later events go to history.jsonl
            record(run_dir, "resume", config, step=step, checkpoint=resume, plan_changes=changes, meta=metadata)
            if changes:
                print(f"plan changed on resume (--resume-override): {describe_changes(changes)}")
        else:
            write_json_atomic(run_dir / "config.json", config_to_dict(config))
            write_json_atomic(run_dir / "meta.json", metadata)
            record(run_dir, "start", config, meta=metadata)
        # Steps logged after the checkpoint (a run killed between checkpoints) are logged again by this run.
        keep_log_until(run_dir / "train_log.jsonl", step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step)  # event files: appended in place, by design
        print(f"run {run_dir}: {len(dataset.items)} training images ({len(dataset.skipped)} smaller than the patch "
              f"skipped), {steps_per_epoch} steps/epoch, {world_size} process(es), device {device}, "
              f"{precision_name(dtype)}{', channels_last' if config.channels_last else ''}"
              f"{f', data on device ({pool.nbytes / 2**20:.0f} MiB)' if pool is not None else ''}"
              f"{', CUDA graph' if config.cuda_graph else ''}"
              f"{', resumed from ' + resume + f' at epoch {epoch} step {step}' if resume else ''}")

    def save(name: str, **extra: object) -> None:
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingError(f"the weights became NaN or infinite by step {step}; not saving them. "
                                + instability_advice(checkpoints))
        state = dict(config=config_to_dict(config), plan=plan, epoch=epoch, step_in_epoch=start_batch, step=step,
                     best_psnr=best_psnr, world_size=world_size, **extra)
        if name == "last":
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), rng=capture_rng_state(),
                         ema_updates=ema.updates if ema else 0)
        save_checkpoint(checkpoints / f"{name}.pth", model, ema_model=ema.module if ema else None, **state)

    log_file = open(run_dir / "train_log.jsonl", "a") if main_process else None  # appended in place, by design
    running, running_count, done, mean_loss = torch.zeros((), device=device), 0, False, math.nan
    deadline = time.monotonic() + 60 * config.time_limit if config.time_limit else math.inf
    stopped_by = ""
    while epoch < config.epochs and not done:
        if pool is None:
            loader.sampler.set_epoch(epoch)
            loader.sampler.set_start(start_batch * loader.batch_size)
            dataset.set_epoch(epoch)
        else:
            pool.set_epoch(epoch)
        model.train()
        started, seen = time.perf_counter(), 0
        batches = loader if pool is None else range(start_batch, steps_per_epoch)  # the pool path: batch indices
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", initial=start_batch, total=steps_per_epoch,
                   disable=None if main_process else True, leave=False, dynamic_ncols=True)
        for batch_index, batch in enumerate(bar, start=start_batch):
            if run_step is not None:
                loss = run_step(batch_index)
            else:
                lr, hr = prepare_batch(batch, config.upscale_factor, device)
                with autocast(device, dtype):
                    sr = train_model(lr)
                loss = F.mse_loss(sr.float(), hr)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
            step, seen = step + 1, seen + config.batch_size  # divisible by world_size (checked above)
            running, running_count = running + loss.detach(), running_count + 1
            start_batch = batch_index + 1

            if step % config.log_every == 0 or start_batch == steps_per_epoch:
                mean_loss = float(all_mean(running / running_count, world_size))
                running, running_count = torch.zeros((), device=device), 0
                if not math.isfinite(mean_loss):
                    raise TrainingError(f"loss became {mean_loss} at step {step} (epoch {epoch + 1}); stopped. "
                                        + instability_advice(checkpoints))
                if main_process:
                    current_lr = scheduler.get_last_lr()[0]
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/learning_rate", current_lr, step)
                    log_file.write(json.dumps({"step": step, "epoch": epoch, "loss": mean_loss, "lr": current_lr})
                                   + "\n")
                    log_file.flush()
                    bar.set_postfix(loss=f"{mean_loss:.5f}", patches_s=f"{seen / (time.perf_counter() - started):.0f}")
            stopped_by = stop_reason(config, step, stop.signal, deadline)
            stopping = bool(stopped_by)
            if dist.is_initialized():  # every process stops at the same step (no device sync when alone)
                stopping = float(all_mean(torch.tensor(float(stopping), device=device), world_size)) > 0
                stopped_by = stopped_by or ("another process" if stopping else "")
            if stopping:
                done = True
                break
        bar.close()
        if not done or start_batch == steps_per_epoch:
            epoch, start_batch = epoch + 1, 0
        if main_process:
            elapsed = time.perf_counter() - started
            position = (f"epoch {epoch}/{config.epochs}" if start_batch == 0 else
                        f"epoch {epoch + 1}/{config.epochs} (stopped after batch {start_batch}/{steps_per_epoch})")
            shown_loss = mean_loss if not math.isnan(mean_loss) or not running_count else float(
                running / running_count)  # nothing logged yet (a stop before log_every steps): the steps so far
            message = (f"{position} step {step} loss {shown_loss:.6f} "
                       f"lr {scheduler.get_last_lr()[0]:.3g} {seen / max(elapsed, 1e-9):.1f} patches/s")
            if valid_sets and (done or (start_batch == 0 and (epoch % config.validate_every == 0
                                                              or epoch == config.epochs))):
                scores = validate(ema.module if ema else model, valid_sets, device, writer, step, config)
                first = scores[valid_sets[0].name]
                message += "".join(f" | {name} {s['psnr']:.3f} dB / {s['ssim']:.4f} (bicubic "
                                   f"{s['bicubic_psnr']:.3f})" for name, s in set_scores(scores).items())
                if first["psnr"] > best_psnr:
                    best_psnr = first["psnr"]
                    save("best", valid_scores={k: v for k, v in first.items() if k != "images"})
                    message += " *best*"
            save("last")
            print(message, flush=True)
            with open(run_dir / "log.txt", "a") as log:  # a log: appended in place, by design
                log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")
        if dist.is_initialized():
            dist.barrier()
    if main_process:
        log_file.close()
        writer.close()
        if stopped_by and stopped_by != "max_steps":
            print(f"paused at step {step} ({stopped_by}); continue with --resume auto")
        else:
            print(f"run complete: step {step}, epoch {epoch}")
        print(f"checkpoints: {checkpoints}  TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    if stop.signal:
        raise SystemExit(128 + stop.signal)
    return run_dir


def stop_reason(config: Config, step: int, signal_number: int, deadline: float) -> str:
    """Why training stops after this step ("" = it goes on): a signal, the plan's end, or a stop knob."""
    if signal_number:
        return signal.Signals(signal_number).name
    if config.max_steps and step >= config.max_steps:
        return "max_steps"
    if config.stop_at_step and step >= config.stop_at_step:
        return f"--stop-at-step {config.stop_at_step}"
    if time.monotonic() >= deadline:
        return f"--time-limit {config.time_limit:g} min"
    return ""


def finished_message(resume: str, state: dict, checkpoints: Path) -> str:
    """What a resume of a finished run prints: that it is complete, and its best scores."""
    message = f"{resume}: this run is complete (step {state['step']}, epoch {state['epoch']})"
    best = checkpoints / "best.pth"
    scores = load_checkpoint(best).get("valid_scores") if best.is_file() else None
    if scores:
        message += (f"; best {scores.get('psnr', math.nan):.3f} dB / {scores.get('ssim', math.nan):.4f} (bicubic "
                    f"{scores.get('bicubic_psnr', math.nan):.3f} dB) in {best}")
    return (message + ". Nothing was changed. To train it further, raise --epochs / --max-steps with "
            "--resume-override (kept in history.jsonl), or start a new run from it with --init-weights")


def validate(model: nn.Module, valid_sets: list, device: torch.device, writer, step: int, config: Config) -> dict:
    """PSNR/SSIM through the one evaluate() that validate.py uses too; logs scalars and a few images."""

    scores = evaluate(model, valid_sets, device=device, precision="fp32", keep_samples=config.num_log_images)
    for name, s in set_scores(scores).items():
        for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            writer.add_scalar(f"valid/{name}/{key}", s[key], step)
    for index, sample in enumerate(scores.get(SAMPLES_KEY, [])[: config.num_log_images]):
        writer.add_image(f"valid/{index}_bicubic|sr|hr", np.concatenate(sample, axis=1), step, dataformats="HWC")
    return scores


def main(argv: list[str] | None = None) -> int:
    config, _ = parse_config(argv, make_parser(__doc__))
    try:
        train(config)
    except (TrainingError, RunFolderError, DatasetError, CheckpointError, OutputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
