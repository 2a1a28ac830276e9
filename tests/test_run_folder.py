"""run_folder.py and train.py together: runs cannot be lost or mixed (refused starts, plan checks on resume, finished
runs left alone, stop knobs outside the plan)."""

import dataclasses
import json
import shutil

import pytest
from helpers import losses, run_train

from srdensenet import run_folder
from srdensenet.checkpoint import load_checkpoint
from srdensenet.config import config_to_dict, parse_config, preset_config
from srdensenet.layout_probe import FAST_CHANNELS_LAST_ENV
from srdensenet.precision_probe import FAST_BF16_ENV
from srdensenet.run_folder import LOW_SPACE_CHECKPOINTS, space_warning


def snapshot(folder):
    """Every file under folder with its size and modification time: equal snapshots = nothing touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the plan ---------------------------------------------------------------------------------------------------


def test_plan_changes_ignore_fields_an_older_config_lacks():
    config = preset_config("demo")
    plan = run_folder.make_plan(config, "fp32")
    assert run_folder.plan_changes(plan, plan) == {}
    older = {k: v for k, v in plan.items() if k not in ("ema_decay", run_folder.RESOLVED_PRECISION)}
    assert run_folder.plan_changes(older, run_folder.make_plan(config, "bf16")) == {}
    assert run_folder.plan_changes(plan, run_folder.make_plan(config, "bf16")) == {
        run_folder.RESOLVED_PRECISION: ("fp32", "bf16")}
    saved = json.loads(json.dumps(plan))  # lists where the config has lists, as a checkpoint stores them
    assert run_folder.plan_changes(saved, plan) == {}


def test_plan_and_free_fields_cover_the_whole_config_exactly_once():
    names = set(preset_config("paper").__dataclass_fields__)
    plan, free = set(run_folder.PLAN_FIELDS), set(run_folder.FREE_FIELDS)
    assert plan | free == names and not plan & free


def test_saved_plan_of_an_old_checkpoint_comes_from_its_config():
    config = preset_config("demo").__dict__
    plan = run_folder.saved_plan({"config": config})
    assert plan["learning_rate"] == config["learning_rate"] and plan[run_folder.FIRST_VALID_SET] == "data/demo/valid"
    assert run_folder.RESOLVED_PRECISION not in plan  # unknown, so never a difference


def test_keep_log_until_drops_later_and_torn_lines(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert run_folder.keep_log_until(log, 5) == 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert run_folder.keep_log_until(log, 5) == 0


def test_a_resume_takes_the_runs_configuration_with_only_typed_fields_on_top(tmp_path):
    saved = dataclasses.replace(preset_config("demo"), epochs=3, stop_at_step=7, output_dir=str(tmp_path),
                                run_name="t")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps(config_to_dict(saved)))  # stopped before a checkpoint
    (tmp_path / "t" / "history.jsonl").write_text(json.dumps(
        {"event": "start", "command": ["train.py", "--preset=demo", "--epochs", "3", "--stop-at-step", "7"]}) + "\n")
    argv = ["--output-dir", str(tmp_path), "--run-name", "t", "--resume", "auto", "--num-workers", "0"]
    typed = frozenset({"output_dir", "run_name", "resume", "num_workers"})
    config = parse_config(argv)[0]
    resumed = run_folder.resumed_config(config, typed, None)
    assert resumed == dataclasses.replace(saved, resume="auto", stop_at_step=0, num_workers=0)  # no stop knob kept
    demo_again = parse_config(["--preset", "demo", *argv])[0]  # the run's own preset, typed again: no change
    assert run_folder.resumed_config(demo_again, typed, "demo") == resumed
    paper = parse_config(["--preset", "paper", *argv])[0]  # another preset counts in full (the plan check refuses it)
    assert run_folder.resumed_config(paper, typed, "paper") is paper
    assert run_folder.resumed_config(config, None, None) is config  # every field given: the Python API
    assert run_folder.preset_in(["train.py", "--preset", "demo", "--preset=release"]) == "release"
    assert run_folder.run_preset(tmp_path / "nowhere") == "paper"


# ---- starting a run ---------------------------------------------------------------------------------------------


def test_new_run_into_a_folder_holding_one_is_refused_and_changes_nothing(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path, "--epochs", "1")
    before = snapshot(tmp_path / "t")
    result = run_train(repo_root, data, tmp_path, "--epochs", "1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(tmp_path / "t") in result.stderr and "--resume auto" in result.stderr and "--run-name" in result.stderr
    assert snapshot(tmp_path / "t") == before


def test_same_run_stopped_before_its_first_checkpoint_starts_again(repo_root, data, tmp_path):  # noqa: F811
    full = tmp_path / "full"
    run_train(repo_root, data, full, "--epochs", "2")
    part = tmp_path / "part"
    run_train(repo_root, data, part, "--epochs", "2")
    run = part / "t"
    for checkpoint in (run / "checkpoints").glob("*.pth"):  # as if killed before the first checkpoint
        checkpoint.unlink()
    run_train(repo_root, data, part, "--epochs", "2")
    assert losses(part) == losses(full)
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the lost attempt's lines are gone, no step twice
    other = run_train(repo_root, data, part, "--epochs", "2", "--learning-rate", "5e-4", check=False)
    assert other.returncode == 2 and "holds a run" in other.stderr  # refused before anything is touched


def test_other_plan_into_a_folder_with_only_a_config_is_refused(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path, "--epochs", "1")
    for checkpoint in (tmp_path / "t" / "checkpoints").glob("*.pth"):
        checkpoint.unlink()
    result = run_train(repo_root, data, tmp_path, "--epochs", "1", "--seed", "3", check=False)
    assert result.returncode == 2 and "seed: 0 -> 3" in result.stderr


# ---- resuming ---------------------------------------------------------------------------------------------------


def test_resume_with_a_changed_plan_is_refused_then_accepted_with_override(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path, "--epochs", "3", "--lr-schedule", "cosine", "--stop-at-step", "6")
    run = tmp_path / "t"
    before = snapshot(run)
    refused = run_train(repo_root, data, tmp_path, "--epochs", "3", "--lr-schedule", "cosine", "--max-steps", "12",
                        "--resume", "auto", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "max_steps: 0 -> 12" in refused.stderr and "--resume-override" in refused.stderr
    assert snapshot(run) == before

    config_before = (run / "config.json").read_bytes()
    run_train(repo_root, data, tmp_path, "--epochs", "3", "--lr-schedule", "cosine", "--max-steps", "12",
              "--resume", "auto", "--resume-override")
    assert (run / "config.json").read_bytes() == config_before  # the run's start is never rewritten
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["plan_changes"] == {"max_steps": [0, 12]} and history[1]["step"] == 6
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["step"] == 12 and state["plan"]["max_steps"] == 12


@pytest.mark.parametrize("started,now", [("fp32", "bf16"), ("bf16", "fp32")])
def test_resume_with_auto_keeps_the_runs_precision(repo_root, data, tmp_path, started, now):  # noqa: F811
    # "auto" decided one way when the run started (another CPU, or the flag rule before the probe) and the other way
    # now: the run continues in its own precision, and only a precision typed by name is a plan change.
    said = {"fp32": {FAST_BF16_ENV: "0"}, "bf16": {FAST_BF16_ENV: "1"}}
    run_train(repo_root, data, tmp_path, "--epochs", "2", "--stop-at-step", "3", "--precision", "auto",
              env=said[started])
    run = tmp_path / "t"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["precision"] == started
    assert meta["auto_precision"] == {"decision": started, "fp32_over_bf16": None, "source": FAST_BF16_ENV,
                                      "reason": f"{FAST_BF16_ENV}={said[started][FAST_BF16_ENV]}",
                                      "kept_from_plan": False}

    refused = run_train(repo_root, data, tmp_path, "--epochs", "2", "--precision", now, "--resume", "auto",
                        env=said[now], check=False)
    assert refused.returncode == 1 and f"precision (resolved): '{started}' -> '{now}'" in refused.stderr

    resumed = run_train(repo_root, data, tmp_path, "--epochs", "2", "--precision", "auto", "--resume", "auto",
                        env=said[now])
    assert f"resuming in {started}, the precision this run started with" in resumed.stdout
    assert f"{started} (auto: the run's precision)" in resumed.stdout
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["step"] == 10 and state["plan"][run_folder.RESOLVED_PRECISION] == started
    resume = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()][-1]
    assert resume["event"] == "resume" and resume["plan_changes"] == {}
    assert resume["meta"]["precision"] == started
    assert resume["meta"]["auto_precision"]["decision"] == now and resume["meta"]["auto_precision"]["kept_from_plan"]


def test_free_fields_may_change_on_resume(repo_root, data, tmp_path):  # noqa: F811
    # --channels-last auto as told by the environment (tests/conftest.py: 0), then typed on the resume.
    started = run_train(repo_root, data, tmp_path, "--epochs", "2", "--stop-at-step", "3", "--channels-last", "auto")
    assert f"fp32, NCHW (auto: {FAST_CHANNELS_LAST_ENV}=0)" in started.stdout
    assert json.loads((tmp_path / "t" / "config.json").read_text())["channels_last"] is False
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["auto_channels_last"]["source"] == (
        FAST_CHANNELS_LAST_ENV)
    resumed = run_train(repo_root, data, tmp_path, "--epochs", "2", "--resume", "auto", "--log-every", "2",
                        "--validate-every", "2", "--num-log-images", "1", "--channels-last")
    assert "fp32, channels_last (--channels-last), resumed from" in resumed.stdout
    state = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pth")
    assert state["step"] == 10 and state["config"]["channels_last"] is True


def test_resuming_a_finished_run_says_so_and_touches_nothing(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path, "--epochs", "1")
    before = snapshot(tmp_path / "t")
    result = run_train(repo_root, data, tmp_path, "--epochs", "1", "--resume", "auto")
    assert "complete" in result.stdout and "dB" in result.stdout and "nan" not in result.stdout
    assert snapshot(tmp_path / "t") == before


@pytest.mark.parametrize("knob", [["--stop-at-step", "2"], ["--time-limit", "1e-6"]])
def test_stop_knobs_pause_without_changing_the_plan(repo_root, data, tmp_path, knob):  # noqa: F811
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(repo_root, data, full, "--epochs", "2", "--log-every", "20")
    paused = run_train(repo_root, data, part, "--epochs", "2", "--log-every", "20", *knob)
    assert "paused at step" in paused.stdout and "loss nan" not in paused.stdout
    step = load_checkpoint(part / "t" / "checkpoints" / "last.pth")["step"]
    assert 1 <= step < 10
    again = run_train(repo_root, data, part, "--epochs", "2", "--log-every", "20", "--stop-at-step", str(step),
                      "--resume", "auto")
    assert "nothing to do" in again.stdout
    run_train(repo_root, data, part, "--epochs", "2", "--log-every", "20", "--resume", "auto")
    a, b = (load_checkpoint(p / "t" / "checkpoints" / "last.pth") for p in (full, part))
    assert a["step"] == b["step"] == 10
    assert all(x.equal(y) for x, y in zip(a["model"].values(), b["model"].values()))  # the same trajectory


def test_low_free_space_is_warned(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=250_000))
    assert space_warning(tmp_path, 50_000) == ""
    warning = space_warning(tmp_path, 100_000)
    assert warning == (f"warning: 244 KiB free at {tmp_path}, less than {LOW_SPACE_CHECKPOINTS} checkpoints of 98 KiB; "
                       f"a checkpoint that does not fit stops the run (the last good one is kept)")

