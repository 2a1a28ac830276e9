"""hardware.py: the precision table -- what "auto" means on each device, for training and for inference. On a CPU it
follows precision_probe.py (tested in test_precision_probe.py); here the probe's answer is faked or chosen by hand."""

import pytest
import torch

from srdensenet import choices, hardware, precision_probe, runners

CPU = torch.device("cpu")


def fake_probe(monkeypatch, decision):
    monkeypatch.setattr(precision_probe, "bf16_probe", lambda: precision_probe.Bf16Probe(decision, 1.0, "measured"))


@pytest.mark.parametrize("decision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_auto_on_a_cpu_follows_the_probe(monkeypatch, decision, dtype):
    fake_probe(monkeypatch, decision)
    assert hardware.cpu_bf16_is_fast() is (decision == "bf16")
    assert hardware.resolve_precision("auto", CPU) == dtype
    assert hardware.auto_probe(CPU).decision == decision


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_environment_variable_chooses_by_hand(monkeypatch, value, expected):
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, value)
    assert hardware.cpu_bf16_is_fast() is expected
    assert hardware.resolve_precision("auto", CPU) == (torch.bfloat16 if expected else torch.float32)


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match="SRDENSENET_FAST_BF16='maybe'"):
        hardware.resolve_precision("auto", CPU)


def test_only_the_cpu_row_is_measured(monkeypatch):
    monkeypatch.setattr(precision_probe, "bf16_probe", lambda: pytest.fail("no probe off the CPU"))
    assert hardware.auto_probe(torch.device("cuda")) is None
    assert hardware.auto_probe(torch.device("meta")) is None


def test_explicit_precisions_do_not_depend_on_the_cpu_class(monkeypatch):
    for fast in (True, False):
        monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda fast=fast: fast)
        assert hardware.resolve_precision("fp32", CPU) == torch.float32
        assert hardware.resolve_precision("bf16", CPU) == torch.bfloat16
        with pytest.raises(ValueError, match="fp16 needs a CUDA"):
            hardware.resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.resolve_precision("int8", CPU)


# ---- the precision table ---------------------------------------------------------------------------------------------


def test_one_list_of_precision_names_per_purpose():
    assert choices.TRAINING_PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert choices.INFERENCE_PRECISIONS == ("auto", "fp32", "fp32-cl", "bf16", "fp16")
    assert tuple(hardware.PRECISIONS) == choices.INFERENCE_PRECISIONS[1:]  # the table gives every name a meaning
    assert [hardware.precision_name(hardware.PRECISIONS[name].dtype) for name in choices.TRAINING_PRECISIONS[1:]] \
        == list(choices.TRAINING_PRECISIONS[1:])


@pytest.mark.parametrize("bf16_supported,training", [(True, "bf16"), (False, "fp16")])
def test_cuda_trains_in_bf16_and_infers_in_fp16(monkeypatch, bf16_supported, training):
    # The CUDA row, checked without a GPU: bf16 training where the GPU supports it (else fp16), fp16 inference.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    cuda = torch.device("cuda")
    assert hardware.auto_precision(cuda) == hardware.Auto(training=training, inference="fp16")
    assert hardware.resolve_precision("auto", cuda) == hardware.PRECISIONS[training].dtype


@pytest.mark.parametrize("fast,auto", [(True, ("bf16", "bf16")), (False, ("fp32", "fp32-cl"))])
def test_the_cpu_row_follows_the_cpu_class(monkeypatch, fast, auto):
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: fast)
    assert hardware.auto_precision(CPU) == auto
    assert runners.resolve_plan("auto", CPU) == ("torch", auto[1])


def test_other_devices_compute_in_fp32():
    meta = torch.device("meta")
    assert hardware.auto_precision(meta) == ("fp32", "fp32-cl")
    assert hardware.resolve_precision("auto", meta) == torch.float32


def test_training_and_inference_follow_a_replaced_rule(monkeypatch):
    # A rule is one function: replacing the CPU row (e.g. by a measured rule) changes "auto" everywhere.
    monkeypatch.setitem(hardware.AUTO_PRECISION, "cpu", lambda: hardware.Auto(training="bf16", inference="fp32-cl"))
    assert hardware.resolve_precision("auto", CPU) == torch.bfloat16
    assert runners.resolve_plan("auto", CPU) == ("torch", "fp32-cl")
