"""Run folders you cannot lose or mix: what a run's *plan* is, when a folder already holds a run, and the record
of every start and resume, and the logs a run appends to as it goes (RunLog).

The plan is everything that shapes a run's trajectory (PLAN_FIELDS, the resolved precision and the first validation
set, which defines ``best``). Resuming compares the saved plan with the new one and refuses any difference unless
``--resume-override`` accepts it; every start and resume, with the changes it brought, is appended to the run's
``history.jsonl``, so ``config.json`` (written once, when the run starts) is never rewritten. Everything else may
change between resumes (FREE_FIELDS): where outputs go, logging cadence, workers, the device, the memory format, the
stop knobs, later validation sets.

A resume needs nothing but the run (``train.py --run-name NAME --resume auto``): it continues with the configuration
saved with the run (resumed_config), and only the fields typed on its command line change it, each checked against
the plan as any change.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .config import Config, config_from_dict, config_to_dict, validate_config
from .dataset import encode_png
from .fileio import WriteError, append_text, write_text_atomic
from .limits import MAX_JSON_BYTES, parse_json

# Fields that shape the trajectory: a different value makes a different run.
PLAN_FIELDS = (
    # model
    "upscale_factor", "variant", "layout", "num_blocks", "layers_per_block", "growth_rate", "num_features",
    "bottleneck_features",
    # data and augmentation
    "train_dirs", "train_lr_lmdb", "hr_patch_size", "patches_per_image", "augment", "jpeg_prescale",
    "max_pixels",  # which images of train_dirs are read
    "data_on_device",  # the device pool draws its samples with its own hash (device_pool.py), not numpy's generator
    # optimisation, schedule and its length
    "batch_size", "epochs", "max_steps", "learning_rate", "adam_betas", "weight_decay", "lr_schedule",
    "lr_step_epochs", "lr_gamma", "warmup_steps", "grad_clip", "ema_decay", "seed",
)
# Plan entries that are not config fields: what "auto" precision became, and the set that decides `best`.
RESOLVED_PRECISION, FIRST_VALID_SET = "precision (resolved)", "valid_dirs[0]"
# Fields that may change freely between resumes (docs/training.md). channels_last, compile, compile_mode
# and cuda_graph change only the order of float operations; device: a CPU/GPU change keeps the plan but not
# bit-exactness.
FREE_FIELDS = ("device", "precision", "channels_last", "compile", "compile_mode", "cuda_graph", "num_workers",
               "output_dir", "run_name", "resume", "resume_override", "stop_at_step", "time_limit", "init_weights",
               "init_strict", "validate_every", "log_every", "num_log_images", "valid_dirs")
# Fields a resume takes from its own command line, never from the saved run: where the run is, and the knobs of this
# one start (a --stop-at-step saved with the run would pause the continued run at once).
PER_START_FIELDS = ("output_dir", "run_name", "resume", "resume_override", "stop_at_step", "time_limit")
DEFAULT_PRESET = "paper"  # what --preset is when not typed (config.make_parser)
HISTORY = "history.jsonl"
LOW_SPACE_CHECKPOINTS = 3  # warn when the free space at a run folder holds fewer checkpoints than this


class RunFolderError(ValueError):
    """A start or resume that would mix or damage runs (reported without a traceback)."""


class RunExistsError(RunFolderError):
    """A new run (no --resume) into a folder that holds a run: refused before anything is touched (exit code 2)."""


def make_plan(config: Config, precision: str) -> dict[str, object]:
    """The plan of a run: its PLAN_FIELDS, the resolved precision ("fp32", "bf16", ...) and the first validation set."""
    plan = {name: getattr(config, name) for name in PLAN_FIELDS}
    plan[RESOLVED_PRECISION] = precision
    plan[FIRST_VALID_SET] = config.valid_dirs[0] if config.valid_dirs else ""
    return plan


def saved_plan(state: dict) -> dict[str, object]:
    """The plan stored in a checkpoint; for checkpoints older than plans, what its saved config holds of one."""
    if "plan" in state:
        return dict(state["plan"])
    config = state.get("config") or {}
    plan = {name: config[name] for name in PLAN_FIELDS if name in config}
    if config.get("valid_dirs") is not None:
        plan[FIRST_VALID_SET] = config["valid_dirs"][0] if config["valid_dirs"] else ""
    return plan


def plan_changes(old: dict[str, object], new: dict[str, object]) -> dict[str, tuple[object, object]]:
    """{entry: (old, new)} for every entry of both plans that differs; entries missing from ``old`` are no change."""
    return {name: (old[name], new[name]) for name in new if name in old and _comparable(old[name]) != new[name]}


def _comparable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # JSON / checkpoints store tuples as lists


def describe_changes(changes: dict[str, tuple[object, object]]) -> str:
    return "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changes.items())


def holds_run(run_dir: Path) -> bool:
    """A folder holds a run when it has a config.json or a checkpoint."""
    checkpoints = run_dir / "checkpoints"
    return (run_dir / "config.json").is_file() or (checkpoints.is_dir() and any(checkpoints.glob("*.pth")))


def check_new_run(run_dir: Path, plan: dict[str, object]) -> None:
    """Refuse to start a new run (no --resume) in a folder that holds one.

    The one exception is the same plan in a folder with a config.json but no checkpoint: the same run, stopped before
    it saved anything, so there is nothing to lose and it simply starts again.
    """
    if not holds_run(run_dir):
        return
    ways_out = (f"continue it with --resume auto, start a new one with another --run-name, or delete {run_dir} "
                f"yourself")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pth"))
    if checkpoints:
        raise RunExistsError(f"{run_dir} already holds a run (checkpoints {', '.join(checkpoints)}); {ways_out}")
    old = _read_json(run_dir / "config.json")
    if not isinstance(old, dict):
        raise RunFolderError(f"{run_dir} holds a config.json that cannot be read as a run's configuration; "
                             f"{ways_out}")
    changes = plan_changes(saved_plan({"config": old}), plan)
    if changes:
        raise RunExistsError(f"{run_dir} already holds another run (config.json, no checkpoint yet; its plan differs: "
                             f"{describe_changes(changes)}); {ways_out}")


def check_resume(resume: Path, run_dir: Path, state: dict, plan: dict[str, object], override: bool,
                 ) -> dict[str, tuple[object, object]]:
    """The plan changes a resume brings; raises unless there are none or ``override`` accepts them."""
    inside = resume.resolve().is_relative_to(run_dir.resolve())
    if not inside and holds_run(run_dir):
        raise RunFolderError(f"--resume {resume} would continue into {run_dir}, which holds another run; pick a new "
                             f"--run-name for the continued run")
    changes = plan_changes(saved_plan(state), plan)
    if changes and not override:
        raise RunFolderError(f"{resume}: the plan of this run changed, so resuming would not continue it: "
                             f"{describe_changes(changes)}. Resume with the saved values, start a new run (another "
                             f"--run-name), or accept the change with --resume-override (it is kept in {HISTORY}). "
                             f"To stop early without changing the plan, use --stop-at-step N or --time-limit MIN")
    return changes


def resumed_config(config: Config, typed: frozenset[str] | None, preset: str | None) -> Config:
    """The configuration a resume continues with: the one saved with the run (saved_config), with only the fields
    typed on this command line (``typed``) and the PER_START_FIELDS on top; the plan check then refuses any typed
    change of the plan as it would any other. A typed --preset that is the run's own changes nothing; another
    preset counts in full (the command line's configuration, as without a saved run). ``config`` itself when this
    is no resume, when the run saved no configuration, or when ``typed`` is None (every field given: the Python API).
    """
    if typed is None or not config.resume:
        return config
    auto = config.resume == "auto"
    checkpoint = Path(config.output_dir) / config.run_name / "checkpoints" / "last.pth" if auto else Path(
        config.resume)
    run_dir = checkpoint.parent.parent  # the run that saved it
    saved = saved_config(checkpoint, run_dir / "config.json" if auto else None)
    if saved is None or (preset is not None and preset != run_preset(run_dir)):
        return config
    resumed = dataclasses.replace(saved, **{name: getattr(config, name) for name in typed | set(PER_START_FIELDS)})
    validate_config(resumed)
    return resumed


def saved_config(checkpoint: Path, start_config: Path | None) -> Config | None:
    """The configuration saved with the run a resume continues: the one held by the checkpoint it continues (that of
    the start or resume that wrote it, accepted plan changes included), else ``start_config`` (the config.json of a
    run stopped before its first checkpoint). None when there is none (a new run, or weights without a training
    state: the resume's own checks say why)."""
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        values = state.get("config") if "optimizer" in state else None
    else:
        values = _read_json(start_config) if start_config is not None else None
    return config_from_dict(values) if isinstance(values, dict) else None


def run_preset(run_dir: Path) -> str:
    """The preset of a run: the last --preset named by the commands that started or resumed it (history.jsonl);
    DEFAULT_PRESET when none named one."""
    try:
        lines = (run_dir / HISTORY).read_text().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            command = json.loads(line).get("command")
        except (ValueError, AttributeError):
            continue  # a torn line
        named = preset_in(command) if isinstance(command, list) else None
        if named:
            return named
    return DEFAULT_PRESET


def preset_in(argv: Sequence[str]) -> str | None:
    """The --preset a command line names (the last one, as argparse takes it), or None."""
    named = None
    for index, token in enumerate(argv):
        if token == "--preset" and index + 1 < len(argv):
            named = argv[index + 1]
        elif isinstance(token, str) and token.startswith("--preset="):
            named = token.split("=", 1)[1]
    return named


def planned_steps_done(state: dict, config: Config) -> bool:
    """Whether the checkpoint reached the end its plan sets: every epoch, or max_steps."""
    return bool(config.max_steps and state["step"] >= config.max_steps) or state["epoch"] >= config.epochs


def record(run_dir: Path, event: str, config: Config, **details: object) -> None:
    """Append one line to the run's history (start / resume / accepted plan changes); never rewrites earlier lines."""
    entry = {"event": event, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv, **details,
             "config": config_to_dict(config)}
    append_text(run_dir / HISTORY, json.dumps(entry, default=str) + "\n")


def space_warning(run_dir: Path, checkpoint_bytes: int) -> str:
    """A warning when the free space at run_dir is below LOW_SPACE_CHECKPOINTS checkpoints ("" when it is not)."""
    free = shutil.disk_usage(run_dir).free
    if free >= LOW_SPACE_CHECKPOINTS * checkpoint_bytes:
        return ""
    return (f"warning: {_size(free)} free at {run_dir}, less than {LOW_SPACE_CHECKPOINTS} checkpoints of "
            f"{_size(checkpoint_bytes)}; a checkpoint that does not fit stops the run (the last good one is kept)")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def keep_log_until(path: Path, step: int) -> int:
    """Drop the lines of a train_log.jsonl logged after ``step`` (a resumed run logs those steps again); returns how
    many were dropped. Written to a temporary file and renamed, so the log is never half-written."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) == len(lines):
        return 0
    write_text_atomic(path, "".join(kept))
    return len(lines) - len(kept)


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line (killed mid-write) belongs to the lost steps


def _read_json(path: Path) -> object:
    """A run's JSON file, or None when it cannot be read; bounded in size and nesting (limits.py)."""
    try:
        return None if path.stat().st_size > MAX_JSON_BYTES else parse_json(path.read_bytes())
    except (OSError, ValueError):
        return None


class RunLog:
    """The main process's records as the run goes: train_log.jsonl (every log_every steps), TensorBoard and log.txt
    (a line an epoch). Appended in place by design: a killed run keeps every line it wrote. A log that cannot be
    written (a full disk) is warned about once and left alone from then on; training goes on, and the first
    checkpoint that cannot be written stops it."""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.failed, self.writer = folder, set(), None
        # Steps logged after the checkpoint (a run killed between checkpoints) are logged again by this run.
        self._write(self.steps, lambda: keep_log_until(self.steps, step))
        from torch.utils.tensorboard import SummaryWriter

        def open_writer() -> None:
            self.writer = SummaryWriter(str(folder / "tb"), purge_step=step)

        before = set(threading.enumerate())
        self._write(folder / "tb", open_writer)
        self._writer_threads = set(threading.enumerate()) - before  # TensorBoard's writer thread
        self._previous_hook = threading.excepthook
        threading.excepthook = self._quiet_writer_thread  # until close()

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        """TensorBoard's writer thread keeps a failed write for the next add_* call (where RunLog warns once) and also
        re-raises it in the thread: that second report, a traceback, is not printed. Anything else is reported."""
        if not (isinstance(args.exc_value, OSError) and args.thread in self._writer_threads):
            self._previous_hook(args)

    @property
    def steps(self) -> Path:
        return self.folder / "train_log.jsonl"

    def _write(self, target: Path, write) -> None:
        """One write to a log; its first failure is a warning, and that log is not written again."""
        if target in self.failed:
            return
        try:
            write()
        except (OSError, WriteError) as error:
            self.failed.add(target)
            reason = error.strerror or str(error) if isinstance(error, OSError) else error.reason
            print(f"warning: cannot write {target} ({reason}); training goes on without it (a checkpoint that "
                  f"cannot be written stops the run)", file=sys.stderr, flush=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            self._write(self.folder / "tb", lambda: [self.writer.add_scalar(k, v, step) for k, v in values.items()])

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HxWx3 uint8 RGB image, encoded here with OpenCV (TensorBoard's own add_image would load Pillow)."""
        if self.writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
                height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=encode_png(image)))])
            self._write(self.folder / "tb", lambda: self.writer.file_writer.add_summary(summary, step))

    def losses(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.scalars(step, {"train/loss": loss, "train/learning_rate": lr})
        line = json.dumps({"step": step, "epoch": epoch, "loss": loss, "lr": lr}) + "\n"
        self._write(self.steps, lambda: append_text(self.steps, line))

    def epoch(self, message: str) -> None:
        print(message, flush=True)
        line = time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n"
        self._write(self.folder / "log.txt", lambda: append_text(self.folder / "log.txt", line))

    def close(self) -> None:
        """Flush and close TensorBoard, and give the process its own exception hook back (safe to call twice)."""
        if self.writer is not None:
            self._write(self.folder / "tb", self.writer.close)
            self.writer = None
        if threading.excepthook == self._quiet_writer_thread:
            threading.excepthook = self._previous_hook


def remove_if_failed(folder: Path):
    """An ExitStack exit callback: a run that fails (an error, or a signal before its first save) leaves no run
    folder it made, as long as that holds no checkpoint: its logs alone continue nothing (the lock beside it is
    released after)."""

    def on_exit(kind: type | None, error: BaseException | None, trace: object) -> bool:
        if kind is not None and folder.is_dir() and not any(folder.rglob("*.pth")):
            shutil.rmtree(folder, ignore_errors=True)
        return False  # the error goes on

    return on_exit
