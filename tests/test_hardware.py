"""hardware.py: the precision table -- what "auto" means on each device, for training and for inference -- and the CPU
class that decides the CPU row; it can be faked, chosen by hand, or capped."""

import pytest
import torch

import hardware
import inference

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
    assert inference.resolve_plan("auto", CPU) == ("torch", auto[1])


def test_other_devices_compute_in_fp32():
    meta = torch.device("meta")
    assert hardware.auto_precision(meta) == ("fp32", "fp32-cl")
    assert hardware.resolve_precision("auto", meta) == torch.float32


def test_training_and_inference_follow_a_replaced_rule(monkeypatch):
    # A rule is one function: replacing the CPU row (e.g. by a measured rule) changes "auto" everywhere.
    monkeypatch.setitem(hardware.AUTO_PRECISION, "cpu", lambda: hardware.Auto(training="bf16", inference="fp32-cl"))
    assert hardware.resolve_precision("auto", CPU) == torch.bfloat16
    assert inference.resolve_plan("auto", CPU) == ("torch", "fp32-cl")


# ---- memory available now (the budget of automatic tiling) ---------------------------------------------------------

GiB, MiB = 2**30, 2**20


@pytest.mark.parametrize("text,size", [("4GB", 4 * GiB), ("512MB", 512 * MiB), ("1.5G", 3 * GiB // 2),
                                       ("2GiB", 2 * GiB), ("800000k", 800000 * 1024), ("4 gb", 4 * GiB),
                                       ("1073741824", GiB), ("100B", 100)])
def test_parse_memory_size(text, size):
    assert hardware.parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1GB", "0", "0MB", "4XB", "nan", "inf", "1e9", "4iB", "GB", "4 G B"])
def test_bad_memory_size_says_what_is_expected(text):
    with pytest.raises(ValueError, match=r"expected a (positive )?size such as 4GB, 512MB or 1.5G, got"):
        hardware.parse_memory_size(text)


def test_format_bytes_in_the_units_parse_reads():
    assert hardware.format_bytes(4 * GiB) == "4.0 GiB"
    assert hardware.format_bytes(512 * MiB) == "512 MiB"
    assert hardware.parse_memory_size(hardware.format_bytes(3 * GiB)) == 3 * GiB


def test_meminfo_available(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       24684092 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n")
    assert hardware.meminfo_available(tmp_path / "meminfo") == 2048 * 1024
    assert hardware.meminfo_available(tmp_path / "missing") is None


def write_files(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_limit_at_every_level(tmp_path):
    # A limit on the parent cgroup binds its children; page cache (inactive_file) can be reclaimed, so it is room.
    root = tmp_path / "cg"
    write_files(root / "a", memory_max=str(8 * GiB), memory_current=str(3 * GiB),
                memory_stat=f"anon 100\ninactive_file {GiB}\n")
    write_files(root / "a" / "b", memory_max="max", memory_current=str(2 * GiB), memory_stat="inactive_file 0\n")
    (tmp_path / "cgroup").write_text("0::/a/b\n")
    assert hardware.cgroup_available(root, tmp_path / "cgroup") == 6 * GiB
    write_files(root / "a" / "b", memory_max=str(3 * GiB))
    assert hardware.cgroup_available(root, tmp_path / "cgroup") == 1 * GiB
    (tmp_path / "cgroup").write_text("0::/\n")  # no limit anywhere above
    assert hardware.cgroup_available(root, tmp_path / "cgroup") is None


def test_cgroup_v1_limit(tmp_path):
    root = tmp_path / "cg"
    write_files(root / "memory" / "job", memory_limit_in_bytes=str(4 * GiB), memory_usage_in_bytes=str(GiB),
                memory_stat=f"cache 5\ntotal_inactive_file {512 * MiB}\n")
    (tmp_path / "cgroup").write_text("5:pids:/job\n4:memory:/job\n0::/\n")
    assert hardware.cgroup_available(root, tmp_path / "cgroup") == 3 * GiB + 512 * MiB
    write_files(root / "memory" / "job", memory_limit_in_bytes="9223372036854771712")  # v1's "no limit"
    assert hardware.cgroup_available(root, tmp_path / "cgroup") is None
    (tmp_path / "cgroup").write_text("4:memory:/elsewhere\n")  # a cgroup namespace: its own root is the limit
    write_files(root / "memory", memory_limit_in_bytes=str(2 * GiB), memory_usage_in_bytes=str(GiB))
    assert hardware.cgroup_available(root, tmp_path / "cgroup") == GiB


def test_rlimit_as_counts_the_address_space_and_the_arenas(monkeypatch):
    import resource

    limits = {resource.RLIMIT_AS: (6 * GiB, 6 * GiB), resource.RLIMIT_DATA: (resource.RLIM_INFINITY,) * 2}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    monkeypatch.setattr(hardware, "_status_bytes", lambda name: {"VmSize": GiB, "VmData": 2 * GiB}[name])
    arenas = hardware.ARENA_BYTES * (torch.get_num_threads() + 1)
    assert hardware.rlimit_available() == (5 * GiB - arenas, "RLIMIT_AS, ulimit -v")
    limits[resource.RLIMIT_DATA] = (3 * GiB, 3 * GiB)  # ulimit -d, against VmData: the smaller room wins
    assert hardware.rlimit_available() == (GiB - arenas, "RLIMIT_DATA, ulimit -d")
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY,) * 2
    assert hardware.rlimit_available() is None


def test_budget_is_a_fraction_of_the_smallest_source(monkeypatch):
    monkeypatch.setattr(hardware, "meminfo_available", lambda: 20 * GiB)
    monkeypatch.setattr(hardware, "cgroup_available", lambda: 10 * GiB)
    monkeypatch.setattr(hardware, "rlimit_available", lambda: None)
    budget = hardware.memory_budget(CPU)
    assert (budget.available, budget.source) == (10 * GiB, "cgroup memory limit")
    assert budget.budget == int(10 * GiB * hardware.BUDGET_FRACTION) < budget.available
    assert "cgroup memory limit" in budget.describe() and "80%" in budget.describe()
    monkeypatch.setattr(hardware, "rlimit_available", lambda: (4 * GiB, "RLIMIT_AS, ulimit -v"))
    assert hardware.memory_budget(CPU).source == "RLIMIT_AS, ulimit -v"
    given = hardware.memory_budget(CPU, max_memory=30 * GiB)  # an explicit budget is taken as it is
    assert (given.budget, given.source) == (30 * GiB, "max_memory") and "--max-memory" in given.describe()
    for name in ("meminfo_available", "cgroup_available", "rlimit_available"):
        monkeypatch.setattr(hardware, name, lambda: None)
    assert hardware.memory_budget(CPU).budget is None  # nothing readable: no limit known


def test_a_real_ulimit_v_sets_the_budget(repo_root):
    # The kernel's own RLIMIT_AS, in a child: its room is the limit less the child's address space and arenas.
    import resource
    import subprocess
    import sys

    limit = hardware._status_bytes("VmSize") + GiB
    code = ("import hardware, torch; print(*hardware.available_memory(torch.device('cpu')), sep='|'); "
            "print(hardware._status_bytes('VmSize'), torch.get_num_threads())")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=120,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert child.returncode == 0, child.stderr
    (room, source), (vm_size, threads) = (line.split("|") if "|" in line else line.split()
                                          for line in child.stdout.splitlines())
    assert source == "RLIMIT_AS, ulimit -v"
    expected = limit - int(vm_size) - hardware.ARENA_BYTES * (int(threads) + 1)
    assert abs(int(room) - expected) <= 16 * MiB  # VmSize read a moment apart


def test_release_free_heap_gives_back_freed_blocks():
    # glibc keeps freed blocks under its mmap threshold in the heap; inference returns them after each image.
    assert hardware.release_free_heap(limit=2**62) is False  # under the limit: nothing done
    pairs = [(bytearray(100_000), bytearray(4096)) for _ in range(300)]  # 30 MB of heap blocks, under 128 KiB each
    keepers = [small for _, small in pairs]  # (too large for the small-block caches) hold holes open between them
    del pairs
    assert hardware.free_heap_bytes() > 20_000_000
    assert hardware.release_free_heap(limit=0) is True
    del keepers
