"""One unattended GPU command for the release model: check the fast path, measure its variants, train with the
best one until a deadline, export, and leave the results in --out. scripts/gpu_release.sh is the entry point (it
starts the clock); see docs/gpu.md.

Steps (``all`` runs them in one command, inside --budget-seconds counted from --started):

* check    the CUDA tests of the fast path (tests/test_device_pool.py, tests/test_train_step.py); if they fail, the
           run trains on the loader path instead (slower, known to work)
* measure  benchmarks/bench_train.py --json, limited to --bench-seconds: every variant side by side
* train    train.py --preset release with the fastest trainable variant, --time-limit so that it pauses in time (a
           watchdog interrupts it, saving ``last``, if it does not); with a checkpoint in the run folder (or joined
           from --resume-from) it continues with --resume auto and the checkpoint's own plan
* pack     export_weights.py, validate.py, the resume state split by state_parts.py, the logs in one tar.gz

Larger batches scale the learning rate by sqrt(batch / 32) from the recipe's 2e-4 (Adam's usual square-root rule,
a choice, not a measurement) and keep the 200 warm-up steps (a tenth of a shorter run); max_steps comes from the
measured rate so that the cosine schedule ends near the deadline; patches_per_image makes an epoch (one checkpoint)
take ~--epoch-seconds.

Data: --pool DIR trains on DIR/train and validates on DIR/valid (default: the packed pool of
``prepare_dataset.py --preset release --pack``); --train-dirs / --valid-dirs name folders or LMDBs directly.
Where results must be copied back under size limits, --part-mib splits the resume state and --max-files /
--max-file-mib make summary.txt warn when --out holds more (and leave TensorBoard out of logs.tar.gz if it is too
large). By default there are no limits and the resume state is one part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from state_parts import join, sha256_of, split

from srdensenet import checkpoint
from srdensenet.checkpoint import load_checkpoint
from srdensenet.dataset import is_lmdb, list_images, read_lmdb_meta
from srdensenet.fileio import atomic_write, write_bytes_atomic, write_text_atomic
from srdensenet.run_folder import PLAN_FIELDS

ROOT = Path(__file__).resolve().parent.parent

BASE_LR, BASE_BATCH = 2e-4, 32  # the release preset's recipe
FALLBACK_RATE = 1500.0  # patches/s of the loader path on one H200 (the release run), when nothing was measured


def log(message: str) -> None:
    print(f"[gpu_release {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Clock:
    """Seconds left of the command's budget, counted from the shell script's start."""

    def __init__(self, started: float, budget: float) -> None:
        self.deadline = started + budget

    def left(self) -> float:
        return self.deadline - time.time()


def run(command: list[str], log_file: Path, timeout: float | None = None, stop_at: float | None = None) -> int:
    """Run a command, its output both printed and appended to log_file. ``stop_at`` (a time.time()): interrupt it
    then (SIGINT: train.py saves ``last`` and exits), kill it 30 s later; ``timeout``: kill it after that long."""
    log(f"$ {shlex.join(command)}")
    kill_at = time.time() + timeout if timeout else math.inf
    with open(log_file, "a") as handle:  # a log: appended in place, by design
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def pump() -> None:  # a thread, so the watchdog below never waits on a quiet pipe
            for line in process.stdout:
                sys.stdout.write(line)
                handle.write(line)
            sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        interrupted = False
        while process.poll() is None:
            now = time.time()
            if stop_at is not None and now > stop_at and not interrupted:
                log("watchdog: past the training deadline; interrupting (train.py saves `last`)")
                process.send_signal(signal.SIGINT)
                interrupted, kill_at = True, min(kill_at, now + 30)
            if now > kill_at:
                log("watchdog: out of time; killing it")
                process.kill()
            time.sleep(0.2)
        reader.join(timeout=10)
    log(f"exit status {process.returncode}")
    return process.returncode


# ---- choosing the variant and the plan ------------------------------------------------------------------------------


def image_count(sources: list[str]) -> int:
    return sum(len(read_lmdb_meta(s)[0]) if is_lmdb(s) else len(list_images(s)) for s in sources)


def choose_variant(work: Path, check_ok: bool, given: str) -> tuple[list[str], float, str, float]:
    """(train.py options, expected patches/s, why, seconds of compilation to expect): --variant, else the bench's
    best trainable row, else defaults."""
    if given:
        return shlex.split(given), FALLBACK_RATE, "--variant", 0.0
    if not check_ok:
        workers = str(max(1, (os.cpu_count() or 2) - 2))
        return (["--no-data-on-device", "--batch-size", "32", "--num-workers", workers], FALLBACK_RATE,
                "the fast path's CUDA tests failed: loader path", 0.0)
    bench = work / "bench.json"
    best = json.loads(bench.read_text()).get("best") if bench.is_file() else None
    if best:
        overhead = best.get("wall_seconds", 0.0) if best.get("compile_mode") else 0.0
        return (best["train_options"], best["patches_per_second"], f"fastest trainable row of {bench}: "
                f"{best['name']}", overhead)
    return ["--data-on-device", "--batch-size", "32"], FALLBACK_RATE, "nothing measured: eager fast path, batch 32", 0.0


def option_value(options: list[str], flag: str, default: str) -> str:
    return options[options.index(flag) + 1] if flag in options else default


def fresh_plan(args, options: list[str], rate: float, train_seconds: float) -> list[str]:
    """A new run's plan: learning rate scaled to the batch, max_steps from the rate, epochs of ~epoch_seconds."""
    batch = int(option_value(options, "--batch-size", "32"))
    patches = rate * max(train_seconds, 1.0) * args.rate_safety
    images = image_count(args.train_dirs)
    per_image = args.patches_per_image or max(1, math.ceil(rate * args.epoch_seconds / images))
    per_image = max(per_image, math.ceil(batch / images))  # at least one batch an epoch
    steps = max(1, int(patches // batch))
    return ["--learning-rate", f"{BASE_LR * math.sqrt(batch / BASE_BATCH):.6g}", "--max-steps", str(steps),
            "--warmup-steps", str(min(200, max(1, steps // 10))),  # the recipe's 200, unless the run is very short
            "--patches-per-image", str(per_image),
            "--train-dirs", *args.train_dirs, "--jpeg-prescale", str(args.jpeg_prescale)]


def saved_plan_options(config: dict) -> list[str]:
    """train.py options that reproduce a checkpoint's plan exactly (so --resume auto accepts it)."""
    options = []
    for name in PLAN_FIELDS:
        if name not in config:
            continue
        flag, value = "--" + name.replace("_", "-"), config[name]
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            options += [flag, *map(str, value)]
        else:
            options += [flag, str(value)]
    return options


def free_options(options: list[str], data_on_device: bool) -> list[str]:
    """The variant's options that may change on resume (memory format, compile, graphs, workers), minus the plan
    (batch size, data path); --cuda-graph only where the saved run is on the device pool."""
    skip = {"--batch-size": 2, "--data-on-device": 1, "--no-data-on-device": 1}
    if not data_on_device:
        skip["--cuda-graph"] = 1
    keep, index = [], 0
    while index < len(options):
        width = skip.get(options[index], 0)
        keep += [] if width else [options[index]]
        index += width or 1
    return keep


# ---- steps ------------------------------------------------------------------------------------------------------


def step_check(args, work: Path) -> bool:
    """The fast path's CUDA tests (skipped, so passing, on a CPU dry run); the result is kept in work/check.json."""
    status_file = work / "check.json"
    if args.step == "train" and status_file.is_file():  # measured by an earlier command on this machine
        return json.loads(status_file.read_text())["passed"]
    tests = ["tests/test_device_pool.py", "tests/test_train_step.py"]
    status = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-k", "cuda"],
                 work / "check.log", timeout=args.check_seconds)
    write_text_atomic(status_file, json.dumps({"passed": status == 0, "exit_status": status}) + "\n")
    return status == 0


def step_measure(args, work: Path, clock: Clock) -> None:
    seconds = min(args.bench_seconds, clock.left() - args.reserve_seconds)
    # Rows start until 80% of the share is spent; a compile row that overruns is killed at the share's end plus
    # a minute (bench.json is rewritten after every row, so the rows measured so far stay).
    command = [sys.executable, "benchmarks/bench_train.py", "--device", args.device, "--time-budget",
               str(max(0, int(0.8 * seconds))), "--json", str(work / "bench.json"), *shlex.split(args.bench_args)]
    (work / "bench.json").unlink(missing_ok=True)
    run(command, work / "bench.txt", timeout=max(30.0, min(seconds + 60, clock.left() - args.reserve_seconds)))


def train_command(args, clock: Clock, plan: list[str], options: list[str]) -> tuple[list[str], float]:
    """train.py's command line and its --time-limit in seconds (the time left less what packing and its start need)."""
    seconds = clock.left() - args.reserve_seconds - args.setup_seconds
    return [sys.executable, "train.py", "--preset", "release", "--device", args.device, *plan, *options,
            "--valid-dirs", *args.valid_dirs, "--output-dir", args.output_dir, "--run-name", args.run_name,
            "--time-limit", f"{seconds / 60:.2f}", "--validate-every", str(args.validate_every), "--num-log-images",
            "0", "--log-every", "50", *args.train_args], seconds


def step_train(args, work: Path, clock: Clock, check_ok: bool) -> Path:
    run_dir = Path(args.output_dir) / args.run_name
    last = run_dir / "checkpoints" / "last.pth"
    options, rate, why, overhead = choose_variant(work, check_ok, args.variant)
    train_seconds = clock.left() - args.reserve_seconds - args.setup_seconds
    log(f"variant ({why}): {' '.join(options)}; ~{rate:.0f} patches/s; {train_seconds:.0f} s to train")
    if train_seconds < 30:
        log(f"only {train_seconds:.0f} s left for training: skipped")
        return run_dir
    if last.is_file():
        saved = load_checkpoint(last)["config"]
        plan = saved_plan_options(saved) + ["--resume", "auto"]
        options = free_options(options, bool(saved.get("data_on_device")))
        log(f"continuing {last} with its own plan")
    else:  # a compile costs its time again in train.py's first step: the schedule is planned without it
        plan = fresh_plan(args, options, rate, train_seconds - overhead)
    stop_at = clock.deadline - args.reserve_seconds / 2
    command, _ = train_command(args, clock, plan, options)
    status = run(command, work / "train.log", stop_at=stop_at, timeout=clock.left() - 15)
    if status not in (0, 130) and clock.left() > args.reserve_seconds + args.setup_seconds + 60:
        # A capture or compile that fails on this machine must not cost the session: the same plan, eager.
        log("train.py failed; once more without --cuda-graph / --compile (same plan, resumes any checkpoint)")
        retry = plan + (["--resume", "auto"] if last.is_file() and "--resume" not in plan else [])
        command, _ = train_command(args, clock, retry, options + ["--no-cuda-graph", "--no-compile"])
        run(command, work / "train.log", stop_at=stop_at, timeout=clock.left() - 15)
    return run_dir


def step_pack(args, work: Path, out: Path, run_dir: Path, clock: Clock) -> None:
    last = run_dir / "checkpoints" / "last.pth"
    summary = [f"gpu_release {args.step} on {args.device}: {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if last.is_file():
        state = load_checkpoint(last)
        arch = state["arch"]
        # The release format: safetensors where this checkout's checkpoint.py writes it, else the older .pth.
        suffix = ".safetensors" if hasattr(checkpoint, "export_weights") else ".pth"
        weights = out / f"srdensenet_x{arch['upscale_factor']}_{arch['variant']}_{arch['layout']}{suffix}"
        run([sys.executable, "scripts/export_weights.py", "--checkpoint", str(last), "--output", str(weights)],
            work / "pack.log", timeout=max(10, clock.left() - 30))
        if clock.left() > 40:
            run([sys.executable, "validate.py", "--weights", str(weights), "--valid-dirs", *args.valid_dirs,
                 *args.extra_valid_dirs, "--device", args.device, "--json", str(work / "valid.json"), "--force"],
                work / "pack.log", timeout=clock.left() - 25)
        split(last, out, args.part_mib or max(1.0, last.stat().st_size / 2**20))  # 0: the whole file, one part
        summary += [f"run {run_dir}: step {state['step']}, epoch {state['epoch']}, best {state.get('best_psnr')}",
                    f"resume state: {last.name}.part* + {last.name}.parts.json; join with "
                    f"python scripts/state_parts.py join {out}/{last.name}.parts.json --output {last}"]
    else:
        summary.append(f"no checkpoint in {run_dir}: nothing trained")
    pack_logs(work, run_dir, out / "logs.tar.gz", args.max_file_mib)
    write_summary(work, out, summary, args.max_files, args.max_file_mib)


def pack_logs(work: Path, run_dir: Path, target: Path, max_mib: float = 0) -> None:
    """Every log in one tar.gz (the run folder without its checkpoints); TensorBoard dropped if the archive would
    exceed ``max_mib`` (0: no limit)."""
    def pack(handle: BinaryIO, with_tb: bool) -> None:
        with tarfile.open(fileobj=handle, mode="w:gz") as tar:
            for path in sorted(work.glob("*")):
                if path.is_file():
                    tar.add(path, arcname=f"work/{path.name}")
            if run_dir.is_dir():
                for path in sorted(run_dir.rglob("*")):
                    relative = path.relative_to(run_dir)
                    if path.is_file() and relative.parts[0] != "checkpoints" and (with_tb or relative.parts[0] != "tb"):
                        tar.add(path, arcname=f"run/{relative}")

    for with_tb in (True, False):
        atomic_write(target, lambda handle, with_tb=with_tb: pack(handle, with_tb))
        if not max_mib or target.stat().st_size < (max_mib - 1) * 2**20:
            return


def write_summary(work: Path, out: Path, lines: list[str], max_files: int = 0, max_mib: float = 0) -> None:
    """summary.txt: what happened and every file in ``out`` with its size and sha256; warns when ``out`` holds more
    than ``max_files`` files or a file over ``max_mib`` MiB (0: no limit)."""
    bench, valid = work / "bench.json", work / "valid.json"
    if bench.is_file():
        for row in json.loads(bench.read_text())["rows"]:
            rate = f"{row['patches_per_second']:.0f} patches/s" if row["patches_per_second"] else row["error"]
            lines.append(f"measured: {row['name']}, batch {row['batch']}: {rate}")
    if valid.is_file():
        for name, score in json.loads(valid.read_text()).get("datasets", {}).items():
            lines.append(f"validation {name}: {score['psnr']:.3f} dB / {score['ssim']:.4f} (bicubic "
                         f"{score['bicubic_psnr']:.3f} dB, gain {score['psnr'] - score['bicubic_psnr']:+.3f})")
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "summary.txt")
    lines += [f"{p.name}  {p.stat().st_size:,} bytes  sha256 {sha256_of(p)}" for p in files]
    too_big = [p.name for p in files if max_mib and p.stat().st_size > max_mib * 2**20]
    if (max_files and len(files) + 1 > max_files) or too_big:
        lines.append(f"WARNING: {len(files) + 1} files (limit {max_files or 'none'}); over {max_mib} MiB: {too_big}")
    write_text_atomic(out / "summary.txt", "\n".join(lines) + "\n")
    log("summary:\n" + "\n".join(lines))


def resume_from(folder: Path, run_dir: Path) -> None:
    """Put a previous --out folder's run back: its logs (logs.tar.gz) into the run folder, its joined state as
    ``last``."""
    logs = folder / "logs.tar.gz"
    if logs.is_file():
        with tarfile.open(logs) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("run/") and m.isfile()]
            for member in members:
                member.name = member.name[len("run/"):]
            tar.extractall(run_dir, members=members, filter="data")
    manifests = sorted(folder.glob("*.parts.json"))
    if not manifests:
        raise SystemExit(f"error: --resume-from {folder}: no *.parts.json manifest there")
    join(manifests[0], run_dir / "checkpoints" / "last.pth")
    log(f"resume state joined into {run_dir / 'checkpoints' / 'last.pth'} (sha256 verified)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("all", "measure", "train"), nargs="?", default="all")
    parser.add_argument("--started", type=float, default=time.time(), help="the command's start (time.time())")
    parser.add_argument("--budget-seconds", type=float, default=560, help="everything ends within this")
    parser.add_argument("--bench-seconds", type=float, default=200, help="the measure step's share")
    parser.add_argument("--check-seconds", type=float, default=120)
    parser.add_argument("--reserve-seconds", type=float, default=80, help="kept after training to export and pack")
    parser.add_argument("--setup-seconds", type=float, default=25, help="train.py's start before its clock runs")
    parser.add_argument("--out", default="runs/gpu_release/out", help="where the results go")
    parser.add_argument("--work", default="runs/gpu_release/work", help="kept on the machine between commands")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pool", default="data/photo_pool_pack", help="train on POOL/train, validate on POOL/valid")
    parser.add_argument("--train-dirs", nargs="+", help="image folders or LMDBs (default: POOL/train)")
    parser.add_argument("--valid-dirs", nargs="+", help="validation folders (default: POOL/valid)")
    parser.add_argument("--extra-valid-dirs", nargs="*", default=["srdensenet/golden"],
                        help="scored after training only")
    parser.add_argument("--jpeg-prescale", type=float, default=1.0, help="1 for a prescaled pool, 2 for raw photos")
    parser.add_argument("--patches-per-image", type=int, default=0, help="0: an epoch of ~--epoch-seconds")
    parser.add_argument("--epoch-seconds", type=float, default=30)
    parser.add_argument("--validate-every", type=int, default=2)
    parser.add_argument("--rate-safety", type=float, default=0.85, help="share of the measured rate planned for")
    parser.add_argument("--variant", default="", help="train.py options instead of the measured best")
    parser.add_argument("--bench-args", default="", help="extra bench_train.py options (dry runs: a small preset)")
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--run-name", default="release_x4_fast")
    parser.add_argument("--resume-from", default="", help="a previous --out (parts + logs.tar.gz) to continue from")
    parser.add_argument("--part-mib", type=float, default=0, help="split the resume state into parts of this size "
                        "(0: one part)")
    parser.add_argument("--max-files", type=int, default=0, help="warn when --out holds more files (0: no limit)")
    parser.add_argument("--max-file-mib", type=float, default=0, help="warn about larger files in --out, and leave "
                        "TensorBoard out of logs.tar.gz to stay under it (0: no limit)")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: extra train.py overrides (a tiny dry-run model)
    args = parser.parse_args(argv[:cut])
    args.train_args = argv[cut + 1:]
    args.train_dirs = args.train_dirs or [str(Path(args.pool) / "train")]
    args.valid_dirs = args.valid_dirs or [str(Path(args.pool) / "valid")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.started, args.budget_seconds)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log(f"{args.step}: {clock.left():.0f} s of budget left; results in {out}")
    check_ok = step_check(args, work)
    if args.step in ("all", "measure"):
        if check_ok:
            step_measure(args, work, clock)
        else:
            log("the fast path's CUDA tests failed (work/check.log): nothing measured")
    if args.step == "measure":
        for name in ("bench.json", "bench.txt", "check.log", "check.json"):
            if (work / name).is_file():
                write_bytes_atomic(out / name, (work / name).read_bytes())
        return 0
    run_dir = Path(args.output_dir) / args.run_name
    if args.resume_from:
        resume_from(Path(args.resume_from), run_dir)
    step_train(args, work, clock, check_ok)
    step_pack(args, work, out, run_dir, clock)
    log(f"done with {clock.left():.0f} s of the budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
