"""hardware.py: the precision table -- what "auto" means on each device, for training and for inference -- and the CPU
class that decides the CPU row; it can be faked, chosen by hand, or capped."""

import pytest
import torch

import hardware
import runners

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    # Whatever the machine running the tests says, each test sets the answer it needs.
    monkeypatch.delenv(hardware.FAST_BF16_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)


def fake_flags(monkeypatch, *flags):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize("flags,fast", [(("avx2", "fma"), False),  # AMD EPYC class: bf16 emulated
                                        (("avx2", "avx512f", "avx512_bf16"), False),  # bf16 dot products, no AMX
                                        (("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"), True)])
def test_auto_follows_the_cpu_class(monkeypatch, flags, fast):
    fake_flags(monkeypatch, *flags)
    assert hardware.cpu_bf16_is_fast() is fast
    assert hardware.resolve_precision("auto", CPU) == (torch.bfloat16 if fast else torch.float32)


def test_cpu_flags_reads_this_machine():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    assert not flags or "fpu" in flags  # every x86 CPU lists fpu; other platforms may give no flags line


@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_environment_variable_chooses_the_class_by_hand(monkeypatch, amx, value, expected):
    fake_flags(monkeypatch, "avx2", *(["amx_bf16"] if amx else []))
    monkeypatch.setenv(hardware.FAST_BF16_ENV, value)
    assert hardware.cpu_bf16_is_fast() is expected
    assert hardware.resolve_precision("auto", CPU) == (torch.bfloat16 if expected else torch.float32)


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(hardware.FAST_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match="SRDENSENET_FAST_BF16='maybe'"):
        hardware.cpu_bf16_is_fast()


@pytest.mark.parametrize("isa,expected", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", False),
                                          ("AVX512_CORE_AMX", True), ("avx10_1_512_amx", True), ("DEFAULT", True)])
def test_onednn_isa_cap_below_amx_keeps_auto_in_fp32(monkeypatch, isa, expected):
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 even on an AMX CPU: "auto" must then stay in fp32.
    fake_flags(monkeypatch, "avx2", "avx512_bf16", "amx_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert hardware.cpu_bf16_is_fast() is expected


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
    assert hardware.TRAINING_PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert hardware.INFERENCE_PRECISIONS == ("auto", "fp32", "fp32-cl", "bf16", "fp16")
    assert [hardware.precision_name(hardware.PRECISIONS[name].dtype) for name in hardware.TRAINING_PRECISIONS[1:]] \
        == list(hardware.TRAINING_PRECISIONS[1:])


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
