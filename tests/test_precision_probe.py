"""precision_probe.py: "auto" on a CPU decided by a measured, cached probe. The timer and the CPU are faked, so every
test means the same on every machine; one test runs the real timing code on a tiny workload."""

import json
import re

import pytest
import torch

from srdensenet import hardware, precision_probe
from srdensenet.precision_probe import Bf16Probe

CPU = torch.device("cpu")
NATIVE = ("avx2", "avx512f", "avx512_bf16")  # e.g. AMD Zen 4 or an Intel Xeon without AMX
real_time_layers = precision_probe.time_layers  # before any test fakes it


class FakeTimer:
    """time_layers faked: seconds per dtype giving ``ratio`` (fp32 time / bf16 time), and how often it ran."""

    def __init__(self, ratio: float) -> None:
        self.ratio, self.calls = ratio, 0

    def __call__(self) -> dict[torch.dtype, float]:
        self.calls += 1
        return {torch.float32: 0.2 * self.ratio, torch.bfloat16: 0.2}


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with native bf16, no override, an empty cache in tmp_path and a fresh process (no memo); returns a
    function that sets the measured ratio and gives the fake timer."""
    monkeypatch.delenv(precision_probe.FAST_BF16_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(precision_probe.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(precision_probe, "cpu_flags", lambda: frozenset(NATIVE))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    precision_probe.probed.cache_clear()

    def measures(ratio: float) -> FakeTimer:
        timer = FakeTimer(ratio)
        monkeypatch.setattr(precision_probe, "time_layers", timer)
        return timer

    yield measures
    precision_probe.probed.cache_clear()  # later tests must not see this test's fake answer


def new_process() -> None:
    precision_probe.probed.cache_clear()


def never_timed() -> dict:
    raise AssertionError("bf16 must not be timed here")


# ---- the decision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,decision", [(2.1, "bf16"), (precision_probe.BF16_SPEEDUP_NEEDED, "bf16"),
                                            (1.09, "fp32"), (1.0, "fp32"), (0.89, "fp32")])
def test_bf16_only_when_clearly_faster(cpu, ratio, decision):
    cpu(ratio)
    probe = precision_probe.bf16_probe()
    assert (probe.decision, probe.source) == (decision, "measured")
    assert probe.ratio == pytest.approx(ratio, abs=1e-3)
    training, inference = ("bf16", "bf16") if decision == "bf16" else ("fp32", "fp32-cl")
    assert hardware.auto_precision(CPU) == hardware.Auto(training, inference)
    assert hardware.resolve_precision("auto", CPU) == hardware.PRECISIONS[training].dtype


@pytest.mark.parametrize("flags,isa,mkldnn", [(("avx2", "fma"), "", True),  # AVX2 only (e.g. AMD Zen 3)
                                              (NATIVE, "AVX2", True), (NATIVE, "avx512_core", True),  # capped
                                              (NATIVE, "", False)])  # a torch without oneDNN
def test_emulated_bf16_is_never_timed(cpu, monkeypatch, flags, isa, mkldnn):
    cpu(2.0)
    monkeypatch.setattr(precision_probe, "time_layers", never_timed)
    monkeypatch.setattr(precision_probe, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    probe = precision_probe.bf16_probe()
    assert (probe.decision, probe.ratio, probe.source) == ("fp32", None, "emulated")
    assert probe.reason.startswith("bf16 emulated")
    if flags != NATIVE:
        assert probe.reason == "bf16 emulated (no native bf16 instructions)"
    assert hardware.auto_precision(CPU) == hardware.Auto("fp32", "fp32-cl")


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "avx_ne_convert"])
@pytest.mark.parametrize("isa", ["", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX2_VNNI_2", "DEFAULT"])
def test_native_bf16_is_measured(cpu, monkeypatch, flag, isa):
    timer = cpu(2.0)
    monkeypatch.setattr(precision_probe, "cpu_flags", lambda: frozenset(("avx2", flag)))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert precision_probe.bf16_probe().source == "measured" and timer.calls == 1


@pytest.mark.parametrize("value,decision", [("1", "bf16"), ("on", "bf16"), ("0", "fp32"), ("no", "fp32")])
def test_the_environment_variable_wins_and_skips_the_probe(cpu, monkeypatch, tmp_path, value, decision):
    monkeypatch.setattr(precision_probe, "time_layers", never_timed)
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, value)
    probe = precision_probe.bf16_probe()
    assert (probe.decision, probe.ratio, probe.source) == (decision, None, "SRDENSENET_FAST_BF16")
    assert not (tmp_path / "cache").exists()


def test_a_bad_environment_value_names_the_variable(cpu, monkeypatch):
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match="SRDENSENET_FAST_BF16='maybe'"):
        precision_probe.bf16_probe()


# ---- once per process, once per machine ----------------------------------------------------------------------------


def test_measured_once_per_process_and_once_per_machine(cpu):
    timer = cpu(2.1)
    first = precision_probe.bf16_probe()
    assert precision_probe.bf16_probe() == first and timer.calls == 1  # the process's memo
    saved = json.loads(precision_probe.cache_file().read_text())["entries"]
    assert [entry["fp32_over_bf16"] for entry in saved.values()] == [first.ratio]
    new_process()
    again = precision_probe.bf16_probe()
    assert (again.decision, again.ratio, again.source) == ("bf16", first.ratio, "cached") and timer.calls == 1


@pytest.mark.parametrize("change", ["threads", "torch", "isa", "flags", "cpu"])
def test_a_changed_machine_key_measures_again(cpu, monkeypatch, change):
    timer = cpu(2.1)
    assert precision_probe.bf16_probe().decision == "bf16"
    timer.ratio = 0.9  # what the changed setting measures
    if change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "isa":
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    elif change == "flags":
        monkeypatch.setattr(precision_probe, "cpu_flags", lambda: frozenset((*NATIVE, "amx_bf16", "amx_tile")))
    else:
        model = precision_probe.cpuinfo_field
        monkeypatch.setattr(precision_probe, "cpuinfo_field",
                            lambda name: "Another CPU" if name == "model name" else model(name))
    new_process()
    probe = precision_probe.bf16_probe()
    assert (probe.decision, probe.source, timer.calls) == ("fp32", "measured", 2)
    assert len(json.loads(precision_probe.cache_file().read_text())["entries"]) == 2  # both machines' answers


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"entries": 3}', b"", b"\xff\xfe not UTF-8"])
def test_a_corrupt_cache_is_measured_again_and_rewritten(cpu, content):
    timer = cpu(1.5)
    path = precision_probe.cache_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert precision_probe.bf16_probe().source == "measured" and timer.calls == 1
    new_process()
    assert precision_probe.bf16_probe().source == "cached" and timer.calls == 1


@pytest.mark.parametrize("ratio", ["fast", None, -1, 0, True, float("nan")])
def test_a_malformed_entry_is_measured_again(cpu, ratio):
    timer = cpu(1.5)
    path = precision_probe.cache_file()
    entry = {precision_probe.key_id(precision_probe.probe_key()): {"fp32_over_bf16": ratio, "decision": "bf16"}}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"entries": entry}))
    assert precision_probe.bf16_probe().source == "measured" and timer.calls == 1


def test_a_cached_ratio_is_decided_with_the_current_margin(cpu):
    cpu(1.05)
    path = precision_probe.cache_file()
    key = precision_probe.key_id(precision_probe.probe_key())
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"entries": {key: {"fp32_over_bf16": 1.05, "decision": "bf16"}}}))
    assert precision_probe.bf16_probe()[:3] == ("fp32", 1.05, "cached")


def test_an_unwritable_cache_still_decides_with_one_warning(cpu, monkeypatch, tmp_path, capsys):
    timer = cpu(2.1)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(precision_probe.CACHE_DIR_ENV, str(tmp_path / "a-file" / "cache"))  # no folder can be made
    for _ in range(3):
        assert precision_probe.bf16_probe().decision == "bf16"
    assert timer.calls == 1
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "a-file" in warnings[0]


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(precision_probe.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert precision_probe.cache_file() == tmp_path / "mine" / "bf16_probe.json"
    monkeypatch.delenv(precision_probe.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert precision_probe.cache_file() == tmp_path / "xdg" / "srdensenet" / "bf16_probe.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert precision_probe.cache_file() == tmp_path / "home" / ".cache" / "srdensenet" / "bf16_probe.json"


def test_the_record_names_the_decision_the_ratio_and_the_source():
    record = precision_probe.decide(2.1, "cached").record()
    assert record == {"decision": "bf16", "fp32_over_bf16": 2.1, "source": "cached",
                      "reason": "cached: bf16 2.10x as fast as fp32, at least 1.10x"}
    assert Bf16Probe("fp32", None, "emulated").record()["fp32_over_bf16"] is None


# ---- the real thing ------------------------------------------------------------------------------------------------


def test_the_real_timing_code_runs_on_a_tiny_workload(cpu, monkeypatch):
    # The machine's answer is not asserted: only that the code path measures, decides and caches.
    tiny = ((8, 4, 6, False), (8, 8, 4, True))
    monkeypatch.setattr(precision_probe, "time_layers", lambda: real_time_layers(tiny, repeats=1))
    rng = torch.get_rng_state()
    probe = precision_probe.bf16_probe()
    assert torch.equal(torch.get_rng_state(), rng)  # the probe draws its own random numbers
    assert probe.source == "measured" and probe.ratio > 0 and probe.decision in ("bf16", "fp32")
    new_process()
    assert precision_probe.bf16_probe().source == "cached"



def test_machine_facts_in_the_key():
    flags = precision_probe.cpu_flags()
    assert isinstance(flags, frozenset)
    assert not flags or "fpu" in flags  # every x86 CPU lists fpu; other platforms may give no flags line
    key = precision_probe.probe_key()
    assert key["threads"] == torch.get_num_threads() and key["torch"] == torch.__version__
    if torch.backends.mkldnn.is_available():
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", key["onednn"])
