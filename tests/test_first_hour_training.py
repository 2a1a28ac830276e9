"""The first hour as a user, training side: the demo script's --help and its pauses, the demo data made when
missing, a failed start that leaves nothing behind, and a pause whose last line is a command that continues the run
by itself (the run's own configuration, only typed flags as overrides) with the epoch counts agreeing."""

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, losses, run_train, train_command

from srdensenet.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_in(cwd, *args, check=True):
    """A command of the clone (train.py, ...) run from another folder, like a user's fresh clone would."""
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def typed(command: str) -> list[str]:
    """A printed command as a user would type it, with this interpreter for `python`."""
    words = shlex.split(command)
    assert words[0] == "python"
    return [sys.executable, *words[1:]]


# ---- the demo script --------------------------------------------------------------------------------------------


def test_demo_help_says_what_it_does_and_runs_nothing(repo_root):
    result = subprocess.run([sys.executable, "scripts/demo.py", "--help"], cwd=repo_root, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "make demo" in result.stdout and "Ctrl-C" in result.stdout and "===" not in result.stdout
    wrong = subprocess.run([sys.executable, "scripts/demo.py", "--epochs", "3"], cwd=repo_root, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 2 and "unrecognized arguments: --epochs 3" in wrong.stderr


# A step that stops on SIGINT / SIGTERM as train.py does (exit 128 + signal), saying how many signals reached it.
STEP = """
import signal, sys, time
got = []
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: got.append(s))
print("step ready", flush=True)
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.3)  # a second signal, if one came, would arrive by now
print("step got", [signal.Signals(s).name for s in got], flush=True)
sys.exit(128 + got[0] if got else 0)
"""
# scripts/demo.py with its steps replaced: one that succeeds, the one above, one that must not start.
DEMO = """
import sys
import demo
demo.STEPS = (("1/3 first", ("-c", "print('first done')")), ("2/3 second", ("-c", sys.argv[1])),
              ("3/3 third", ("-c", "print('third ran')")))
demo.main([])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_pauses_on_a_signal_naming_what_is_done_and_how_to_continue(repo_root, sig):
    # Its own session: the signal goes to the demo's whole process group, as a Ctrl-C at a terminal does.
    demo = subprocess.Popen([sys.executable, "-c", DEMO, STEP], cwd=repo_root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**ENV, "PYTHONPATH": str(repo_root / "scripts")})
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if line.startswith("step ready"):
            break
    os.killpg(demo.pid, sig)
    output = "".join(seen) + demo.communicate(timeout=60)[0]
    assert demo.returncode == 128 + sig, output
    name = signal.Signals(sig).name
    assert f"step got ['{name}']" in output  # passed on once: the step stops cleanly, not twice interrupted
    assert "first done" in output and "third ran" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"demo: paused by {name} during step '2/3 second' (finished: 1/3); `make demo` (or ")
    assert last.endswith("scripts/demo.py) continues from there")


def test_demo_ends_saying_how_to_run_the_commands_yourself(repo_root, tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "valid.json").write_text('{"datasets": {"valid": {"psnr": 31.5, "bicubic_psnr": 30.0}}}')
    code = ("import demo, pathlib, sys\ndemo.RUN = pathlib.Path(sys.argv[1])\n"
            "demo.STEPS = ((\"1/1 only\", (\"-c\", \"pass\")),)\ndemo.main([])")
    result = subprocess.run([sys.executable, "-c", code, str(run)], cwd=repo_root, capture_output=True, text=True,
                            timeout=60, env={**ENV, "PYTHONPATH": str(repo_root / "scripts")})
    assert result.returncode == 0, result.stderr
    executable = Path(sys.executable)
    python = str(executable.relative_to(repo_root)) if executable.is_relative_to(repo_root) else "python"
    assert "valid: 31.500 dB vs bicubic 30.000 dB (beats bicubic)" in result.stdout
    assert f"  {python} inference.py -i photo.jpg -o out/" in result.stdout
    assert f"  {python} inference.py --weights {run / 'checkpoints' / 'best.pth'} -i photo.jpg" in result.stdout
    if python != "python":
        assert "or python after `source .venv/bin/activate`" in result.stdout


# ---- data a preset makes, and starts that fail -----------------------------------------------------------------


def test_missing_demo_data_is_made_in_one_line_and_trained_on(repo_root, tmp_path):
    result = run_in(tmp_path, str(repo_root / "train.py"), "--preset", "demo", "--output-dir", "runs", *TINY,
                    "--epochs", "1", "--max-steps", "2", "--num-log-images", "0")
    first = result.stdout.splitlines()[0]
    assert first.startswith("data/demo/train and data/demo/valid missing: made 13 photos from scikit-image's "
                            "bundled ones in "), result.stdout
    assert first.endswith(" s, as `python prepare_dataset.py --preset demo` does")
    assert sorted(p.name for p in (tmp_path / "data" / "demo" / "valid").glob("*.png")) == [
        "camera.png", "chelsea.png", "coffee.png"]
    assert "run complete: step 2, in epoch 1/1 after batch 2/25" in result.stdout


def test_missing_release_data_names_the_command_and_leaves_no_run_folder(repo_root, tmp_path):
    result = run_in(tmp_path, str(repo_root / "train.py"), "--preset", "release", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # a path that does not exist
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/photo_pool/train: no such folder; it is the release preset's data, made from the photo pool "
        "(fetched from Debian's package mirrors) by: python scripts/fetch_photo_pool.py && python prepare_dataset.py "
        "--preset release")
    assert list(tmp_path.iterdir()) == []  # no runs/, no data/


def test_a_start_that_fails_after_the_lock_leaves_no_run_folder(repo_root, data, tmp_path):
    for bad, code in ((["--batch-size", "1000"], 1), (["--train-dirs", str(tmp_path / "nowhere")], 2)):
        result = run_train(repo_root, data, tmp_path, "--epochs", "1", *bad, check=False)
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        assert list(tmp_path.iterdir()) == [], bad  # neither runs/t/checkpoints/ nor the lock file


# ---- pause, and resume from the run alone -----------------------------------------------------------------------


def test_a_pause_ends_with_a_command_that_continues_the_run_by_itself(repo_root, data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(repo_root, data, full, "--epochs", "3")
    paused = run_train(repo_root, data, part, "--epochs", "3", "--stop-at-step", "7")
    command = f"python train.py --output-dir {part} --run-name t --resume auto"
    assert paused.stdout.strip().splitlines()[-1] == (
        f"paused at step 7, in epoch 2/3 after batch 2/5 (--stop-at-step 7); continue with: {command}")
    assert "epoch 2/3 (stopped after batch 2/5) step 7" in paused.stdout  # the epoch line agrees

    # Flags typed on a resume are overrides checked against the plan; repeating the run's own preset changes nothing
    # (applied, the demo preset's model and schedule would differ from this run's in many fields).
    refused = subprocess.run([*typed(command), "--preset", "demo", "--learning-rate", "5e-4"], cwd=repo_root,
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert refused.returncode == 1, refused.stderr
    assert "the plan of this run changed, so resuming would not continue it: learning_rate: 0.001 -> 0.0005. " in (
        refused.stderr)

    done = subprocess.run(typed(command), cwd=repo_root, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {part / 't' / 'checkpoints' / 'last.pth'} at step 7, in epoch 2/3 after batch 2/5" in (
        done.stdout)
    assert done.stdout.strip().splitlines()[-1] == "run complete: step 15, after epoch 3/3"  # --stop-at-step not kept
    assert losses(part) == losses(full)  # bit-exact on CPU: the run's own configuration, the stop knob not kept
    a, b = (load_checkpoint(p / "t" / "checkpoints" / "last.pth") for p in (full, part))
    assert all(x.equal(y) for x, y in zip(a["model"].values(), b["model"].values()))


def test_epoch_counts_follow_max_steps(repo_root, data, tmp_path):
    one = run_train(repo_root, data, tmp_path / "one", "--epochs", "25", "--max-steps", "5")
    assert "epoch 1/1 step 5 " in one.stdout and one.stdout.strip().splitlines()[-1] == (
        "run complete: step 5, after epoch 1/1")
    cut = run_train(repo_root, data, tmp_path / "cut", "--epochs", "25", "--max-steps", "7")
    assert "epoch 1/2 step 5 " in cut.stdout and "epoch 2/2 (stopped after batch 2/5) step 7 " in cut.stdout
    assert cut.stdout.strip().splitlines()[-1] == "run complete: step 7, in epoch 2/2 after batch 2/5"


def test_under_torchrun_the_pause_names_torchrun_and_every_process_resumes_alike(repo_root, data, tmp_path):
    def torchrun(*args):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", *args], cwd=repo_root,
                              capture_output=True, text=True, timeout=300, env=ENV)

    paused = torchrun("--nproc_per_node", "2", *train_command(data, tmp_path, "--epochs", "2", "--stop-at-step",
                                                              "3")[1:])
    assert paused.returncode == 0, paused.stdout + paused.stderr
    command = f"torchrun --nproc_per_node 2 train.py --output-dir {tmp_path} --run-name t --resume auto"
    assert paused.stdout.strip().splitlines()[-1] == (
        f"paused at step 3, in epoch 1/2 after batch 3/5 (--stop-at-step 3); continue with: {command}")
    words = shlex.split(command)
    resumed = torchrun(*words[1:])  # both processes take the run's configuration from its folder
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resumed from") == 1 and "run complete: step 10, after epoch 2/2" in resumed.stdout
    assert load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pth")["world_size"] == 2
