"""layout_probe.py: --channels-last auto, decided by a measured, cached probe of the run's own training pass, and what a
run records of it. The timer is faked, so every test means the same on every machine (which layout is really faster
here is never asserted); one test runs the real timing code on the tiny model."""

import dataclasses
import json

import pytest
import torch
from helpers import TINY

from srdensenet import layout_probe, precision_probe
from srdensenet.checkpoint import load_checkpoint
from srdensenet.config import Config, parse_config
from srdensenet.layout_probe import FAST_CHANNELS_LAST_ENV, TrainingLayout
from srdensenet.run_status import Command
from srdensenet.training import train

CPU = torch.device("cpu")
ARCH = dict(upscale_factor=2, variant="all", layout="paper", num_blocks=2, layers_per_block=2, growth_rate=4,
            num_features=8, bottleneck_features=8)
ARCH_FLAGS = ["--num-blocks", "2", "--layers-per-block", "2", "--growth-rate", "4", "--num-features", "8",
              "--bottleneck-features", "8", "--upscale-factor", "2", "--hr-patch-size", "16"]
real_time_training_pass = layout_probe.time_training_pass  # before any test fakes it


class FakeTimer:
    """time_training_pass faked: seconds per layout giving ``ratio`` (NCHW time / channels_last time), and what it
    was asked to time."""

    def __init__(self, ratio: float) -> None:
        self.ratio, self.calls = ratio, []

    def __call__(self, arch, lr_side, dtype, batch=layout_probe.PROBE_BATCH, repeats=layout_probe.PROBE_REPEATS):
        self.calls.append((arch, lr_side, dtype, batch))
        return {False: 0.2 * self.ratio, True: 0.2}


def never_timed(*args, **kwargs) -> dict:
    raise AssertionError("the layouts must not be timed here")


@pytest.fixture
def measures(monkeypatch, tmp_path):
    """No override, an empty cache in tmp_path; returns a function that sets the measured ratio and gives the timer."""
    monkeypatch.delenv(FAST_CHANNELS_LAST_ENV, raising=False)
    monkeypatch.setenv(precision_probe.CACHE_DIR_ENV, str(tmp_path / "cache"))

    def timer(ratio: float) -> FakeTimer:
        fake = FakeTimer(ratio)
        monkeypatch.setattr(layout_probe, "time_training_pass", fake)
        return fake

    return timer


def auto(arch=ARCH, hr_patch=16, batch=4, dtype=torch.float32, device=CPU) -> TrainingLayout:
    return layout_probe.auto_layout(device, arch, hr_patch, batch, dtype)


def cache_entries() -> dict:
    return json.loads(precision_probe.cache_file(layout_probe.CACHE_NAME).read_text())["entries"]


# ---- the decision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,channels_last", [(1.6, True), (layout_probe.CHANNELS_LAST_SPEEDUP_NEEDED, True),
                                                 (1.09, False), (1.0, False), (0.84, False)])
def test_nchw_unless_channels_last_is_clearly_faster(measures, ratio, channels_last):
    timer = measures(ratio)
    layout = auto()
    assert (layout.channels_last, layout.source, layout.auto) == (channels_last, "measured", True)
    assert layout.ratio == pytest.approx(ratio, abs=1e-3)
    compared = "at least" if channels_last else "below"
    assert layout.words() == (f"{layout.name} (auto: measured: channels_last {ratio:.2f}x as fast as NCHW, "
                              f"{compared} 1.10x)")
    assert timer.calls == [(ARCH, 8, torch.float32, 2)]  # the run's model, its LR patch (16 / x2) and precision


def test_the_probe_batch_is_small_and_never_larger_than_the_runs(measures):
    timer = measures(1.0)
    assert [auto(batch=batch).source for batch in (32, 2, 1)] == ["measured", "cached", "measured"]
    assert [call[3] for call in timer.calls] == [layout_probe.PROBE_BATCH, 1]


@pytest.mark.parametrize("value,channels_last", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_the_environment_variable_decides_without_a_probe(measures, monkeypatch, tmp_path, value, channels_last):
    monkeypatch.setattr(layout_probe, "time_training_pass", never_timed)
    monkeypatch.setenv(FAST_CHANNELS_LAST_ENV, value)
    for device in (CPU, torch.device("cuda")):
        layout = auto(device=device)
        said = f"{FAST_CHANNELS_LAST_ENV}={value}"
        assert layout == TrainingLayout(channels_last, None, FAST_CHANNELS_LAST_ENV, said)
    assert not (tmp_path / "cache").exists()


def test_a_bad_environment_value_names_the_variable(measures, monkeypatch):
    monkeypatch.setenv(FAST_CHANNELS_LAST_ENV, "maybe")
    with pytest.raises(ValueError, match="SRDENSENET_FAST_CHANNELS_LAST='maybe'"):
        auto()


def test_off_the_cpu_auto_is_channels_last_unmeasured(measures, monkeypatch):
    monkeypatch.setattr(layout_probe, "time_training_pass", never_timed)
    layout = auto(device=torch.device("cuda"), dtype=torch.bfloat16)
    assert (layout.channels_last, layout.ratio, layout.source) == (True, None, "rule")
    assert layout.words() == "channels_last (auto: channels_last on cuda, not measured)"


# ---- cached per machine, model, patch, batch and precision ---------------------------------------------------------


def test_the_same_key_is_measured_once(measures):
    timer = measures(1.3)
    first = auto()
    again = auto()
    assert (again.channels_last, again.ratio, again.source) == (True, first.ratio, "cached") and len(timer.calls) == 1
    (entry,) = cache_entries().values()
    assert entry["nchw_over_channels_last"] == first.ratio and entry["channels_last"] is True
    key = entry["key"]
    assert (key["arch"], key["lr_patch"], key["batch"], key["precision"]) == (ARCH, 8, 2, "fp32")
    assert {name: key[name] for name in precision_probe.probe_key()} == precision_probe.probe_key()  # the machine


@pytest.mark.parametrize("change", ["arch", "patch", "precision", "batch", "threads"])
def test_what_changes_the_answer_measures_again(measures, monkeypatch, change):
    timer = measures(1.3)
    assert auto().channels_last
    timer.ratio = 0.9  # what the changed setting measures
    if change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    changed = {"arch": dict(arch={**ARCH, "num_blocks": 3}), "patch": dict(hr_patch=24),
               "precision": dict(dtype=torch.bfloat16), "batch": dict(batch=1)}.get(change, {})
    layout = auto(**changed)
    assert (layout.channels_last, layout.source, len(timer.calls)) == (False, "measured", 2)
    assert len(cache_entries()) == 2  # both answers kept
    assert auto().source == "cached"


def test_a_cached_ratio_is_decided_with_the_current_margin(measures):
    measures(1.05)
    path = precision_probe.cache_file(layout_probe.CACHE_NAME)
    key = precision_probe.key_id(layout_probe.probe_key(ARCH, 8, 2, torch.float32))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"entries": {key: {"nchw_over_channels_last": 1.05, "channels_last": True}}}))
    assert auto()[:3] == (False, 1.05, "cached")


def test_the_layout_cache_sits_beside_the_bf16_one(measures):
    measures(1.3)
    auto()
    assert precision_probe.cache_file(layout_probe.CACHE_NAME).parent == precision_probe.cache_file().parent
    assert not precision_probe.cache_file().exists()  # the bf16 probe's file is its own


# ---- a run's layout, and why ---------------------------------------------------------------------------------------


def test_a_run_takes_the_typed_layout_the_runs_own_on_resume_or_auto(measures, monkeypatch):
    monkeypatch.setattr(layout_probe, "time_training_pass", never_timed)
    new, _ = parse_config(["--no-channels-last"])
    assert layout_probe.training_layout(new, frozenset({"channels_last"}), CPU, torch.float32) == TrainingLayout(
        False, None, "typed", "--no-channels-last")
    resumed, _ = parse_config(["--channels-last", "true", "--resume", "auto"])
    assert layout_probe.training_layout(resumed, frozenset({"resume"}), CPU, torch.float32) == TrainingLayout(
        True, None, "run", "the run's memory format")
    assert layout_probe.training_layout(resumed, None, CPU, torch.float32).source == "config"  # the Python API
    timer = measures(1.5)
    auto_config, _ = parse_config(["--channels-last", "auto", "--batch-size", "2", *ARCH_FLAGS])
    assert layout_probe.training_layout(auto_config, frozenset(), CPU, torch.bfloat16, world_size=2).source == (
        "measured")
    assert timer.calls == [(ARCH, 8, torch.bfloat16, 1)]  # the per-process batch: 2 over 2 processes


def test_the_record_names_the_layout_the_ratio_and_the_source():
    assert layout_probe.decide(0.84, "cached").record() == {
        "channels_last": False, "nchw_over_channels_last": 0.84, "source": "cached",
        "reason": "cached: channels_last 0.84x as fast as NCHW, below 1.10x"}
    assert TrainingLayout(True, None, "typed", "--channels-last").words() == "channels_last (--channels-last)"


# ---- training in it ------------------------------------------------------------------------------------------------

AUTO_TINY = [flag for flag in TINY if flag != "--no-channels-last"]  # TINY's layout is NCHW by hand


def start(data, out, *extra: str) -> list[str]:
    return ["--preset", "demo", "--train-dirs", str(data / "train"), "--valid-dirs", str(data / "valid"),
            "--output-dir", str(out), "--run-name", "t", *AUTO_TINY, "--epochs", "2", *extra]


def train_here(argv: list[str], capsys) -> str:
    """train.py's work in this process, with what the command line typed; returns the run's first line."""
    config, args = parse_config(argv)
    typed = frozenset(f.name for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None)
    train(config, Command("train.py", typed, None))
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))


@pytest.mark.parametrize("ratio,channels_last", [(1.5, True), (0.9, False)])
def test_auto_trains_in_the_measured_layout_and_records_it(measures, data, tmp_path, capsys, ratio, channels_last):
    timer = measures(ratio)
    line = train_here(start(data, tmp_path, "--stop-at-step", "2"), capsys)
    reason = f"measured: channels_last {ratio:.2f}x as fast as NCHW, {'at least' if channels_last else 'below'} 1.10x"
    name = "channels_last" if channels_last else "NCHW"
    assert line.endswith(f"fp32, {name} (auto: {reason})") and len(timer.calls) == 1
    run = tmp_path / "t"
    assert json.loads((run / "config.json").read_text())["channels_last"] is channels_last  # never null ("auto")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["auto_channels_last"] == {"channels_last": channels_last, "nchw_over_channels_last": ratio,
                                          "source": "measured", "reason": reason}
    assert load_checkpoint(run / "checkpoints" / "last.pth")["config"]["channels_last"] is channels_last


def test_a_resume_keeps_the_runs_layout_and_a_typed_one_wins(measures, monkeypatch, data, tmp_path, capsys):
    measures(1.5)
    train_here(start(data, tmp_path, "--stop-at-step", "2"), capsys)
    monkeypatch.setattr(layout_probe, "time_training_pass", never_timed)  # a resume measures nothing
    monkeypatch.setenv(FAST_CHANNELS_LAST_ENV, "0")  # nor reads what auto would say now
    resume = ["--output-dir", str(tmp_path), "--run-name", "t", "--resume", "auto"]
    kept = train_here([*resume, "--stop-at-step", "4"], capsys)
    assert "fp32, channels_last (the run's memory format), resumed" in kept
    run = tmp_path / "t"
    assert load_checkpoint(run / "checkpoints" / "last.pth")["config"]["channels_last"] is True
    assert "NCHW (--no-channels-last), resumed" in train_here([*resume, "--no-channels-last"], capsys)
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["step"] == 10 and state["config"]["channels_last"] is False
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["config"]["channels_last"], "auto_channels_last" in h["meta"]) for h in history] == [
        (True, True), (True, False), (False, False)]
    assert json.loads((run / "config.json").read_text())["channels_last"] is True  # the run's start, kept


# ---- the real thing ------------------------------------------------------------------------------------------------


def test_the_real_timing_code_times_both_layouts_of_the_tiny_model(measures, monkeypatch):
    # The machine's answer is not asserted: only that both layouts are timed, decided, cached, and that the run's
    # random numbers (its initial weights) are untouched.
    monkeypatch.setattr(layout_probe, "time_training_pass",
                        lambda *args, **kwargs: real_time_training_pass(*args, **{**kwargs, "repeats": 1}))
    rng = torch.get_rng_state()
    layout = auto()
    assert torch.equal(torch.get_rng_state(), rng)
    assert layout.source == "measured" and layout.ratio > 0
    assert auto().source == "cached"
    seconds = real_time_training_pass(ARCH, 8, torch.bfloat16, batch=1, repeats=1)
    assert set(seconds) == {False, True} and all(0 < s < 60 for s in seconds.values())
