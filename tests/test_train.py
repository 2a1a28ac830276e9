"""train.py end to end on a tiny model: loss goes down, exact resume, DDP on CPU, checkpoints, errors."""

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from helpers import TINY, losses, run_train, train_command

from srdensenet.checkpoint import load_checkpoint, model_from_checkpoint
from srdensenet.run_folder import RunLog
from srdensenet.training import warn_if_low_space


def test_training_reduces_loss_and_leaves_a_run_folder(repo_root, data, tmp_path):
    run_train(repo_root, data, tmp_path, "--epochs", "3")
    logged = losses(tmp_path)
    steps = sorted(logged)
    assert len(steps) == 15  # 2 images x 10 patches / batch 4 = 5 steps per epoch
    first, last = sum(logged[s] for s in steps[:3]), sum(logged[s] for s in steps[-3:])
    assert last < first
    run = tmp_path / "t"
    for name in ("config.json", "meta.json", "log.txt", "checkpoints/last.pth", "checkpoints/best.pth"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"]
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["epoch"] == 3 and state["step"] == 15 and state["scheduler"]["last_epoch"] == 15
    # The step schedule really runs: lr x0.1 after 2 epochs.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_stop_and_resume_reproduces_uninterrupted_losses(repo_root, data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(repo_root, data, full, "--epochs", "3", "--ema-decay", "0.9")
    run_train(repo_root, data, part, "--epochs", "3", "--ema-decay", "0.9", "--stop-at-step", "7")  # mid-epoch 2
    assert max(losses(part)) == 7
    run_train(repo_root, data, part, "--epochs", "3", "--ema-decay", "0.9", "--resume", "auto")
    assert losses(part) == losses(full)  # bit-exact on CPU
    a = model_from_checkpoint(full / "t" / "checkpoints" / "last.pth")
    b = model_from_checkpoint(part / "t" / "checkpoints" / "last.pth")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes(repo_root, data, tmp_path, sig):
    """SIGINT saves `last` and exits 130; SIGKILL leaves the previous `last` loadable. Both resume to the end."""
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(repo_root, data, full, "--epochs", "4")
    command = [sys.executable, "train.py", "--preset", "demo", "--train-dirs", str(data / "train"), "--valid-dirs",
               str(data / "valid"), "--output-dir", str(part), "--run-name", "t", *TINY, "--epochs", "4"]
    process = subprocess.Popen(command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = part / "t" / "train_log.jsonl"
    kill_after = random.randint(6, 14)  # a random step, after the first epoch's checkpoint (5 steps per epoch)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= kill_after):
        time.sleep(0.02)
    process.send_signal(sig)
    output = process.communicate(timeout=60)[0]
    if sig == signal.SIGINT:
        assert process.returncode == 130, output
        assert output.strip().splitlines()[-1].endswith(  # the last line: the command that continues the run
            f" (SIGINT); continue with: python train.py --output-dir {part} --run-name t --resume auto"), output
    assert load_checkpoint(part / "t" / "checkpoints" / "last.pth")["step"] >= 5, f"killed after {kill_after}"
    run_train(repo_root, data, part, "--epochs", "4", "--resume", "auto")
    resumed, expected = losses(part), losses(full)
    assert resumed == expected  # every logged step, including those repeated after a SIGKILL, is identical


def test_torchrun_two_processes_match_one_process(repo_root, data, tmp_path):
    run_train(repo_root, data, tmp_path / "one", "--epochs", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
               "--preset", "demo", "--train-dirs", str(data / "train"), "--valid-dirs", str(data / "valid"),
               "--output-dir", str(tmp_path / "two"), "--run-name", "t", *TINY, "--epochs", "1"]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    assert (tmp_path / "two" / "t" / "checkpoints" / "last.pth").is_file()
    assert json.loads((tmp_path / "two" / "t" / "meta.json").read_text())["world_size"] == 2


def test_checkpoint_round_trips_through_validate(repo_root, data, tmp_path):
    run_train(repo_root, data, tmp_path, "--epochs", "1")
    out = tmp_path / "v.json"
    result = subprocess.run([sys.executable, "validate.py", "--weights", str(tmp_path / "t" / "checkpoints" /
                                                                            "best.pth"),
                             "--valid-dirs", str(data / "valid"), "--json", str(out)],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    best = load_checkpoint(tmp_path / "t" / "checkpoints" / "best.pth")
    assert report["upscale_factor"] == 2
    assert report["datasets"]["valid"]["psnr"] == pytest.approx(best["valid_scores"]["psnr"], abs=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--upscale-factor", "two"], "expected int"),
    (["--train-dirs", "/nonexistent/folder"], "/nonexistent/folder: no such folder"),
    (["--hr-patch-size", "4000"], "is at least 4000x4000"),
    (["--batch-size", "1000"], "fewer than one batch"),
])
def test_bad_configuration_gives_clear_error(repo_root, data, tmp_path, extra, message):
    result = run_train(repo_root, data, tmp_path, "--epochs", "1", *extra, check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()  # a start that fails leaves no run folder behind


def start_train(repo_root, data, out, *extra):
    return subprocess.Popen(train_command(data, out, *extra), cwd=repo_root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(log, steps):
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= steps):
        time.sleep(0.05)


def assert_refused_by(result_stderr, returncode, holder_pid):
    assert returncode == 2, result_stderr
    assert "Traceback" not in result_stderr and len(result_stderr.strip().splitlines()) == 1, result_stderr
    assert f"is in use by PID {holder_pid} on " in result_stderr and "--resume auto" in result_stderr


def test_one_run_folder_has_one_owner(repo_root, data, tmp_path):
    """Two starts half a second apart: one trains, the other exits 2 naming it; a --resume auto while it trains is
    refused too; once the owner is killed (SIGKILL), --resume auto goes on."""
    long = ("--epochs", "400")  # far longer than the test: the owner is killed
    first = start_train(repo_root, data, tmp_path, *long)
    time.sleep(0.5)
    second = start_train(repo_root, data, tmp_path, *long)
    done = None
    deadline = time.time() + 120
    while done is None and time.time() < deadline:  # whichever locked second stops at once
        done = next((p for p in (first, second) if p.poll() is not None), None)
        time.sleep(0.05)
    owner = second if done is first else first
    assert_refused_by(done.communicate()[1], done.returncode, owner.pid)
    wait_for_steps(tmp_path / "t" / "train_log.jsonl", 6)
    resume = run_train(repo_root, data, tmp_path, *long, "--resume", "auto", check=False)
    assert_refused_by(resume.stderr, resume.returncode, owner.pid)
    assert owner.poll() is None  # still training
    owner.kill()
    owner.communicate()
    step = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pth")["step"]
    run_train(repo_root, data, tmp_path, *long, "--resume", "auto", "--stop-at-step", str(step + 5))
    positions = [line[20:].split(" loss")[0] for line in (tmp_path / "t" / "log.txt").read_text().splitlines()]
    assert len(positions) == len(set(positions)) >= 2  # no epoch logged twice
    assert json.loads((tmp_path / "t" / "history.jsonl").read_text().splitlines()[0])["event"] == "start"
    assert len((tmp_path / "t" / "history.jsonl").read_text().splitlines()) == 2  # the start and one resume


# train.py with a disk that has `ROOM` bytes left for the FAIL_AT-th write of last.pth (through the real torch.save).
FILLING_DISK = """
import errno, io, os, runpy, sys
from srdensenet import fileio
real_atomic_write, saves = fileio.atomic_write, []

class FillsUp(io.RawIOBase):
    def __init__(self, handle, room):
        self.handle, self.room = handle, room
    def writable(self):
        return True
    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

def atomic_write(path, write, option=""):
    if str(path).endswith("last.pth"):
        saves.append(path)
        if len(saves) == int(os.environ["FAIL_AT"]):
            return real_atomic_write(path, lambda h: write(FillsUp(h, int(os.environ["ROOM"]))), option)
    return real_atomic_write(path, write, option)

fileio.atomic_write = atomic_write
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


# train.py whose OUT_AT-th training step fails to allocate, as PyTorch's CPU allocator says it.
RUNS_OUT_OF_MEMORY = """
import os, runpy, sys
from srdensenet import training
real_make_train_step, calls = training.make_train_step, []

def make_train_step(run, trainer):
    step = real_make_train_step(run, trainer)
    def failing(batch):
        calls.append(1)
        if len(calls) == int(os.environ["OUT_AT"]):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes.")
        return step(batch)
    return failing

training.make_train_step = make_train_step
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_running_out_of_memory_keeps_the_last_checkpoint_and_says_how_to_go_on(repo_root, data, tmp_path):
    """One line, no traceback: the checkpoint kept and the command that continues with less memory; a run that
    never saved leaves no folder."""
    def run(out_at, *extra):
        command = [sys.executable, "-c", RUNS_OUT_OF_MEMORY, *train_command(data, tmp_path, *extra)[1:]]
        return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "OUT_AT": str(out_at)})

    early = run(2, "--epochs", "3", "--num-workers", "1")
    assert early.returncode == 1 and "Traceback" not in early.stderr
    assert early.stderr.strip().splitlines() == [
        "error: ran out of memory at step 1, in epoch 1/3 after batch 1/5 (DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 3221225472 bytes.); no checkpoint was saved, so nothing of the run is kept; "
        "start it again with less memory: fewer loader processes (--num-workers 0) or a smaller batch (--batch-size 2)"]
    assert not (tmp_path / "t").exists()
    late = run(7, "--epochs", "3")
    last = tmp_path / "t" / "checkpoints" / "last.pth"
    assert late.returncode == 1 and "Traceback" not in late.stderr
    lines = late.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"; kept: the last good checkpoint {last} (step 5); continue with less memory: " in lines[0]
    resume = lines[0].split("continue with less memory: ")[1]
    assert resume == f"python train.py --output-dir {tmp_path} --run-name t --resume auto --batch-size 2 " \
                     f"--resume-override"
    result = subprocess.run([sys.executable, *shlex.split(resume)[1:]], cwd=repo_root, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and load_checkpoint(last)["epoch"] == 3, result.stdout + result.stderr


@pytest.mark.parametrize("room", [0, 30_000])  # a full disk; room for about half a checkpoint
def test_disk_filling_up_mid_save_is_one_line_and_resume_continues(repo_root, data, tmp_path, room):
    run_train(repo_root, data, tmp_path / "full", "--epochs", "3")
    out = tmp_path / "part"
    command = [sys.executable, "-c", FILLING_DISK, *train_command(data, out, "--epochs", "3")[1:]]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FAIL_AT": "2", "ROOM": str(room)})
    last = out / "t" / "checkpoints" / "last.pth"
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {last}: cannot write (No space left on device); kept: the last good checkpoint {last} (step 5); "
        f"free space, then continue with --resume auto"]
    assert not [p.name for p in last.parent.iterdir() if not p.name.endswith(".pth")]  # no temporary file
    assert load_checkpoint(last)["step"] == 5
    run_train(repo_root, data, out, "--epochs", "3", "--resume", "auto")
    assert losses(out) == losses(tmp_path / "full")


def test_a_log_that_cannot_be_written_is_warned_about_once(tmp_path, capsys):
    (tmp_path / "log.txt").mkdir()  # stands for a log the disk refuses
    log = RunLog(tmp_path, 0)
    log.epoch("epoch 1/2 step 5")
    log.epoch("epoch 2/2 step 10")
    log.losses(10, 1, 0.5, 1e-3)
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: cannot write {tmp_path / 'log.txt'} (Is a directory); training goes on without it (a "
                   f"checkpoint that cannot be written stops the run)"]
    assert json.loads((tmp_path / "train_log.jsonl").read_text())["step"] == 10


def test_a_tensorboard_write_that_fails_is_warned_about_once(tmp_path, capfd):
    log = RunLog(tmp_path, 0)
    for event_file in (tmp_path / "tb").iterdir():  # the writer thread appends by name: make that fail
        event_file.unlink()
        event_file.mkdir()
    deadline = time.time() + 60
    while time.time() < deadline and (tmp_path / "tb") not in log.failed:
        log.losses(1, 0, 0.5, 1e-3)
        time.sleep(0.01)
    log.epoch("epoch 1/2 step 5")
    log.close()
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [f"warning: cannot write {tmp_path / 'tb'} (Is a directory); training goes "
                                        f"on without it (a checkpoint that cannot be written stops the run)"]
    assert "epoch 1/2 step 5" in (tmp_path / "log.txt").read_text()


def test_low_space_is_warned_at_start_and_at_the_save_that_crosses_it(tmp_path, monkeypatch, capsys):
    usage, free = shutil.disk_usage(tmp_path), iter([10_000, 5_000, 900, 800, 10_000, 900])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=next(free)))
    run = types.SimpleNamespace(folder=tmp_path, low_space=False)
    warned = []
    for _ in range(6):  # checkpoints of 1 KB: warned below 3 KB, once per crossing
        warn_if_low_space(run, 1000)
        warned.append(bool(capsys.readouterr().err))
    assert warned == [False, False, True, False, False, True]


def test_a_training_process_loads_neither_pillow_nor_the_upscaling_command(repo_root, data, tmp_path):
    code = ("import sys\nfrom srdensenet.cli import main\ncode = main(sys.argv[1:])\n"
            "unwanted = ('PIL', 'srdensenet.cli.upscale', 'srdensenet.photo_metadata')\n"
            "print('loaded:', sorted(m for m in sys.modules if m.startswith(unwanted)))\nsys.exit(code)")
    command = [sys.executable, "-c", code, "train", *train_command(data, tmp_path, "--epochs", "1",
                                                                   "--num-log-images", "2")[2:]]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_run_log_hooks_thread_errors_only_while_open_and_logs_images_without_pillow(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    before = threading.excepthook
    log = RunLog(tmp_path, 0)
    assert threading.excepthook != before
    image = np.ascontiguousarray(skimage.data.astronaut()[:24, :32])
    log.image("valid/0_bicubic|sr|hr", image, 7)
    log.close()
    log.close()  # a second close (the run's own, then the one on the way out) changes nothing
    assert threading.excepthook is before
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    [logged] = events.Images("valid/0_bicubic|sr|hr")
    assert logged.step == 7 and (logged.width, logged.height) == (32, 24)
    decoded = cv2.imdecode(np.frombuffer(logged.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded[:, :, ::-1], image)
