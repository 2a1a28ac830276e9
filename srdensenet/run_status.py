"""What training says about where a run stands and how to go on: its position (step, epoch), why it stops, and the
command that continues it, worded the same way in the progress bar, the epoch lines, the pause line and the resume
line.

The one command that continues a run is ``python train.py --run-name NAME --resume auto`` (plus ``--output-dir``
where it is not the default): a resume takes the run's saved configuration (run_folder.resumed_config), so nothing
else needs repeating. A pause prints it as its last line, so a user can copy it as it is.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .config import Config
from .weights_checks import CONTENTS_KEY


@dataclass(frozen=True)
class Command:
    """How train() was started from a command line: the program (to say the continue command in its own words) and
    what was typed (a resume takes the rest from the run, run_folder.resumed_config)."""

    prog: str = "train.py"  # "train.py" or "srdensenet train"
    typed: frozenset[str] | None = None  # the Config fields given on the command line; None: all (the Python API)
    preset: str | None = None  # --preset as typed; None: not typed


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


def planned_epochs(config: Config, steps_per_epoch: int) -> int:
    """The epochs the plan runs: all of them, or as many as max_steps reaches when it ends the run sooner (a run of
    20 steps of 20 per epoch is 1 epoch long, whatever --epochs says)."""
    if config.max_steps:
        return max(1, min(config.epochs, math.ceil(config.max_steps / steps_per_epoch)))
    return config.epochs


def position(epoch: int, batch: int, steps_per_epoch: int, epochs: int) -> str:
    """Where a run stands between steps, from its saved position (``epoch`` epochs done, then ``batch`` batches of
    the next): "after epoch 1/25", or "in epoch 2/25 after batch 5/20" (the epoch the progress bar shows)."""
    if batch:
        return f"in epoch {epoch + 1}/{epochs} after batch {batch}/{steps_per_epoch}"
    return f"after epoch {epoch}/{epochs}" if epoch else f"before epoch 1/{epochs}"


def epoch_line_start(epoch: int, batch: int, steps_per_epoch: int, epochs: int) -> str:
    """The start of an epoch's line in log.txt: the epoch just done, or the one a stop cut short."""
    if batch:
        return f"epoch {epoch + 1}/{epochs} (stopped after batch {batch}/{steps_per_epoch})"
    return f"epoch {epoch}/{epochs}"


def continue_command(config: Config, prog: str, world_size: int, resume: str = "auto") -> str:
    """The command that continues this run, to be typed as it is: the run folder and --resume auto (or the
    checkpoint ``resume``; a resume takes the rest from the run); under torchrun, the same number of processes."""
    args = ["--run-name", config.run_name, "--resume", resume]
    if config.output_dir != default_output_dir():
        args = ["--output-dir", config.output_dir, *args]
    if world_size > 1:  # a pause mid-epoch resumes only with as many processes
        nodes = world_size // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        launch = (["torchrun", "--nproc_per_node", str(world_size)] if nodes <= 1 else
                  ["torchrun", "--nnodes", str(nodes), "--nproc_per_node", str(world_size // nodes)])
        return shlex.join([*launch, "train.py", *args])
    program = ["python", prog] if prog.endswith(".py") else shlex.split(prog)
    return shlex.join([*program, *args])


def default_output_dir() -> str:
    return next(f.default for f in fields(Config) if f.name == "output_dir")


def pause_line(step: int, where: str, reason: str, command: str) -> str:
    """The last line of a paused run (a signal or a stop knob): where it stands, why, and the continue command."""
    return f"paused at step {step}, {where} ({reason}); continue with: {command}"


def kept_message(kept: tuple[str, int] | None, checkpoints: Path) -> str:
    """What a run stopped by a failed save keeps (the last good checkpoint with resume state, and its step), and how
    to go on."""
    if kept is None:
        return "no checkpoint was saved yet; free space, then run the same command again"
    path, step = kept
    then = "continue with --resume auto" if Path(path) == checkpoints / "last.pth" else "run the same command again"
    return f"kept: the last good checkpoint {path} (step {step}); free space, then {then}"


def out_of_memory_message(run_position: str, cause: str, kept: tuple[str, int] | None, checkpoints: Path,
                          command: str, config: Config) -> str:
    """What a run stopped by a failed allocation says: where, what failed, what is kept and how to go on with less
    memory (fewer loader processes keeps the plan; a smaller batch changes it)."""
    smaller = f"--batch-size {max(1, config.batch_size // 2)}"
    workers = "--num-workers 0" if config.num_workers > 0 else ""
    if kept is None:
        less = f"fewer loader processes ({workers}) or a smaller batch ({smaller})" if workers else f"{smaller}"
        return (f"ran out of memory {run_position} ({cause}); no checkpoint was saved, so nothing of the run is "
                f"kept; start it again with less memory: {less}")
    path, step = kept
    if Path(path) != checkpoints / "last.pth":
        command = "the same command"
    less = f"{command} {workers}, or with a smaller batch (a new plan): " if workers else ""
    return (f"ran out of memory {run_position} ({cause}); kept: the last good checkpoint {path} (step {step}); "
            f"continue with less memory: {less}{command} {smaller} --resume-override")


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


def instability_advice(checkpoints: Path) -> str:
    return (f"The last good checkpoint is {checkpoints / 'last.pth'}; try a lower --learning-rate, --grad-clip 1 or "
            f"--precision fp32")


@contextlib.contextmanager
def naming_a_whole_checkpoint(config: Config, prog: str) -> Iterator[None]:
    """A checkpoint to resume that cannot be loaded (damaged, truncated, refused) stops the resume with its own line
    and, on it, the newest other checkpoint of its folder that is whole (its SHA-256 verified) and the command that
    resumes from it (``best`` holds the training state as ``last`` does)."""
    try:
        yield
    except CheckpointError as error:
        resume = Path(config.output_dir) / config.run_name / "checkpoints" / "last.pth" if config.resume == "auto" \
            else Path(config.resume)
        if error.path is None or Path(error.path) != resume or resume.parent.name != "checkpoints":
            raise  # another file, or one outside a run folder (whose neighbours need not belong to it)
        raise CheckpointError(f"{error}; {whole_checkpoint_advice(resume, config, prog)}") from None


def whole_checkpoint_advice(damaged: Path, config: Config, prog: str) -> str:
    """What a run keeps beside a damaged checkpoint: the newest whole one with the training state and the command
    that resumes from it, else one with weights only, else that there is none."""
    whole = []
    for path in sorted(damaged.parent.glob("*.pth")):
        if path == damaged:
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            continue
        if CONTENTS_KEY in state:  # verified; one too old to carry a SHA-256 cannot be called whole
            whole.append((("optimizer" in state, state.get("step", 0)), path))
    if not whole:
        return f"no other checkpoint in {damaged.parent} is whole, so the run cannot be resumed"
    (resumable, step), path = max(whole)
    if not resumable:
        return (f"{path} is whole but holds weights only (no training state); a new run can start from it with "
                f"--init-weights {path}")
    command = continue_command(config, prog, int(os.environ.get("WORLD_SIZE", 1)), str(path))
    return f"{path} (step {step}) is whole: resume from it with: {command}"
