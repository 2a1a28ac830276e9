"""memory.py: the budget (the memory available now), the estimate against measured peaks, automatic tiling,
out-of-memory reports, and returning freed heap."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ALLOCATOR_FAILURE, BF16_TOLERANCE, FP32_TOLERANCE, fake_available

from srdensenet import inference, memory, system_memory, tiling
from srdensenet.cli import options
from srdensenet.cli.options import memory_hint
from srdensenet.model import SRDenseNet
from srdensenet.runners import FastRunner

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
GiB, MiB = 2**30, 2**20


def vm_size() -> int:
    """This process's address space in bytes (read here, not through the code under test)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


# ---- memory available now (the budget of automatic tiling) ---------------------------------------------------------


def test_format_bytes_in_the_units_parse_reads():
    assert system_memory.format_bytes(4 * GiB) == "4.0 GiB"
    assert system_memory.format_bytes(512 * MiB) == "512 MiB"
    assert options.parse_memory_size(system_memory.format_bytes(3 * GiB)) == 3 * GiB


def test_meminfo_available(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       24684092 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n")
    assert system_memory.meminfo_available(tmp_path / "meminfo") == 2048 * 1024
    assert system_memory.meminfo_available(tmp_path / "missing") is None


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
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") == 6 * GiB
    write_files(root / "a" / "b", memory_max=str(3 * GiB))
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") == 1 * GiB
    (tmp_path / "cgroup").write_text("0::/\n")  # no limit anywhere above
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") is None


def test_cgroup_v1_limit(tmp_path):
    root = tmp_path / "cg"
    write_files(root / "memory" / "job", memory_limit_in_bytes=str(4 * GiB), memory_usage_in_bytes=str(GiB),
                memory_stat=f"cache 5\ntotal_inactive_file {512 * MiB}\n")
    (tmp_path / "cgroup").write_text("5:pids:/job\n4:memory:/job\n0::/\n")
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") == 3 * GiB + 512 * MiB
    write_files(root / "memory" / "job", memory_limit_in_bytes="9223372036854771712")  # v1's "no limit"
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") is None
    (tmp_path / "cgroup").write_text("4:memory:/elsewhere\n")  # a cgroup namespace: its own root is the limit
    write_files(root / "memory", memory_limit_in_bytes=str(2 * GiB), memory_usage_in_bytes=str(GiB))
    assert system_memory.cgroup_available(root, tmp_path / "cgroup") == GiB


def test_rlimit_as_counts_the_address_space_and_the_arenas(monkeypatch, tmp_path):
    import resource

    limits = {resource.RLIMIT_AS: (6 * GiB, 6 * GiB), resource.RLIMIT_DATA: (resource.RLIM_INFINITY,) * 2}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    status = tmp_path / "status"
    status.write_text(f"Name:   python\nVmSize:  {GiB // 1024} kB\nVmData:  {2 * GiB // 1024} kB\n")
    arenas = system_memory.ARENA_BYTES * (torch.get_num_threads() + 1)
    assert system_memory.rlimit_available(status) == (5 * GiB - arenas, "RLIMIT_AS, ulimit -v")
    limits[resource.RLIMIT_DATA] = (3 * GiB, 3 * GiB)  # ulimit -d, against VmData: the smaller room wins
    assert system_memory.rlimit_available(status) == (GiB - arenas, "RLIMIT_DATA, ulimit -d")
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY,) * 2
    assert system_memory.rlimit_available(status) is None


def test_budget_is_a_fraction_of_the_smallest_source(monkeypatch):
    monkeypatch.setattr(system_memory, "meminfo_available", lambda: 20 * GiB)
    monkeypatch.setattr(system_memory, "cgroup_available", lambda: 10 * GiB)
    monkeypatch.setattr(system_memory, "rlimit_available", lambda: None)
    budget = system_memory.memory_budget(CPU)
    assert (budget.available, budget.source) == (10 * GiB, "cgroup memory limit")
    assert budget.budget == int(10 * GiB * system_memory.BUDGET_FRACTION) < budget.available
    assert "cgroup memory limit" in budget.describe() and "80%" in budget.describe()
    monkeypatch.setattr(system_memory, "rlimit_available", lambda: (4 * GiB, "RLIMIT_AS, ulimit -v"))
    assert system_memory.memory_budget(CPU).source == "RLIMIT_AS, ulimit -v"
    given = system_memory.memory_budget(CPU, max_memory=30 * GiB)  # an explicit budget is taken as it is
    assert (given.budget, given.source) == (30 * GiB, "max_memory") and "max_memory" in given.describe()
    for name in ("meminfo_available", "cgroup_available", "rlimit_available"):
        monkeypatch.setattr(system_memory, name, lambda: None)
    assert system_memory.memory_budget(CPU).budget is None  # nothing readable: no limit known


def test_a_real_ulimit_v_sets_the_budget(repo_root):
    # The kernel's own RLIMIT_AS, in a child: its room is the limit less the child's address space and arenas.
    import resource

    limit = vm_size() + GiB
    code = ("import torch; from srdensenet import system_memory; "
            "print(*system_memory.available_memory(torch.device('cpu')), sep='|'); "
            "vm = [line for line in open('/proc/self/status') if line.startswith('VmSize:')][0].split()[1]; "
            "print(int(vm) * 1024, torch.get_num_threads())")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=120,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert child.returncode == 0, child.stderr
    (room, source), (child_vm_size, threads) = (line.split("|") if "|" in line else line.split()
                                                for line in child.stdout.splitlines())
    assert source == "RLIMIT_AS, ulimit -v"
    expected = limit - int(child_vm_size) - system_memory.ARENA_BYTES * (int(threads) + 1)
    assert abs(int(room) - expected) <= 16 * MiB  # VmSize read a moment apart


# ---- the estimate and automatic tiling -------------------------------------------------------------------------------

# Wide enough that tensors, not the first call's fixed cost, make most of the peak, and still fast on a CPU.
MID = dict(upscale_factor=4, num_blocks=3, layers_per_block=4, growth_rate=16, num_features=64, bottleneck_features=128)


@pytest.mark.parametrize("cases", [[
    dict(size=96, tile=40, precision="fp32-cl"),  # upscale: bucketed tiles, the upsampler windows and the colour
    dict(size=80, tile=0, precision="fp32", y_only=True),  # the unbucketed NCHW reference, untiled
    dict(size=40, tile=0, precision="bf16"),  # small: bf16 is emulated (slow) on CPUs without native bf16
]])
def test_estimate_bounds_the_measured_peak(repo_root, cases):
    # Each case in a fresh process (benchmarks/bench_inference.py's memory child): ru_maxrss above the RSS after
    # loading the model and the image, against estimate_memory for the same call. An upper bound, and not a vacuous
    # one: within 3x (1.4-2.4x on the paper model at 128-512 px, bench_inference.py --memory).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, str(repo_root / "benchmarks" / "bench_inference.py"),
                                  "--memory-child", json.dumps(dict(arch=MID, backend="torch", **case)), ""],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo_root)
                for case in cases]
    for case, child in zip(cases, children):
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        row = json.loads(out.strip().splitlines()[-1])
        assert row["peak_bytes"] <= row["estimate_bytes"] <= 3 * row["peak_bytes"], (case, row)


@pytest.mark.parametrize("precision", ["fp32", "fp32-cl", "bf16"])
def test_auto_tiling_under_a_tight_budget_gives_the_untiled_result(tiny, monkeypatch, precision):
    x = torch.rand(1, 1, 90, 75)
    untiled = inference.predict_y(tiny, x, precision=precision, tile=0)
    needed = memory.estimate_memory(tiny, (90, 75), tile=None, precision=precision)
    fake_available(monkeypatch, (needed - 1) / system_memory.BUDGET_FRACTION)  # untiled no longer fits
    plan = memory.plan_memory(tiny, (90, 75), precision=precision)
    assert plan.tile is not None and plan.needed <= plan.budget.budget < needed
    larger = [t for t in memory.candidate_tiles(90, 75)[1:] if t > plan.tile]
    assert all(memory.estimate_memory(tiny, (90, 75), tile=t, precision=precision) > plan.budget.budget
               for t in larger)  # the largest tile that fits
    cores = []
    forward = tiling.forward_tile
    monkeypatch.setattr(tiling, "forward_tile", lambda runner, x, core, *a: cores.append(core) or
                        forward(runner, x, core, *a))
    auto = inference.predict_y(tiny, x, precision=precision)  # tile="auto" is the default
    assert len(cores) > 1 and max(y1 - y0 for y0, y1, _, _ in cores) <= plan.tile
    tolerance = FP32_TOLERANCE if precision != "bf16" else 2 * BF16_TOLERANCE * untiled.abs().max().item()
    assert (auto - untiled).abs().max().item() <= tolerance


def test_auto_with_room_runs_untiled(tiny, monkeypatch):
    fake_available(monkeypatch, 64 * 2**30)
    assert memory.plan_memory(tiny, (90, 75), precision="fp32").tile is None
    monkeypatch.setattr(system_memory, "available_memory", lambda device: (None, "unknown"))  # no limit readable
    assert memory.plan_memory(tiny, (90, 75), precision="fp32").tile is None


def test_no_tile_fits_raises_with_the_numbers(tiny):
    with pytest.raises(memory.InsufficientMemoryError) as caught:
        inference.predict_y(tiny, torch.rand(1, 1, 90, 75), precision="fp32", max_memory=2**20)
    error = caught.value
    # What would be met: the untiled estimate, and the least of the tiles worth their time.
    assert error.tile is None and error.needed == memory.estimate_memory(tiny, (1, 90, 75), precision="fp32")
    tile, needed = error.smaller
    assert tile in memory.candidate_tiles(90, 75) and needed == memory.estimate_memory(tiny, (1, 90, 75), tile=tile,
                                                                                        precision="fp32")
    assert error.size == (90, 75) and error.needed > needed > 2**20 and error.cause is None
    assert f"needs about {system_memory.format_bytes(error.needed)} untiled, " in str(error)
    assert f"{system_memory.format_bytes(needed)} in tiles of {tile} LR px" in str(error)
    assert "1 MiB (max_memory)" in str(error) and "--" not in str(error)
    with pytest.raises(ValueError, match="tile must be"):
        inference.predict_y(tiny, torch.rand(1, 1, 9, 9), tile="big")


def test_estimate_follows_the_architecture_and_the_tile():
    # The paper model at x4 on the fast path: ~5 KB per LR pixel untiled (measured 3.9-4.2 KB at 512 px), so a
    # 12-megapixel photo needs ~55 GB untiled; tiles bring it within a 24 GB machine's budget. The reference keeps the
    # growing feature stack of the "all" variant: more than twice that, and 3x the chained "h" variant's.
    model = SRDenseNet(4)
    photo = (3000, 4000)
    untiled = memory.estimate_memory(model, photo, precision="fp32-cl", channels=3)
    assert 40 * 2**30 < untiled < 80 * 2**30
    sizes = [memory.estimate_memory(model, photo, tile=t, precision="fp32-cl", channels=3) for t in (1000, 500, 64)]
    assert untiled > sizes[0] > sizes[1] > sizes[2]
    plan = memory.plan_memory(model, photo, precision="fp32-cl", channels=3, max_memory=int(0.8 * 24 * 2**30))
    assert plan.tile is not None and plan.needed <= 0.8 * 24 * 2**30
    reference = memory.estimate_memory(model, photo, precision="fp32")
    assert reference > 2 * memory.estimate_memory(model, photo, precision="fp32-cl")
    assert memory.estimate_memory(SRDenseNet(4, variant="h"), photo, precision="fp32") < reference / 3
    assert memory.estimate_memory(model, photo, tile=500, precision="fp32", backend="onnxruntime") > sizes[1]


# ---- out-of-memory reports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RuntimeError(ALLOCATOR_FAILURE), MemoryError("Unable to allocate 4.5 GiB"),
                                     torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_allocation_failure_becomes_one_clear_error(tiny, photo, monkeypatch, failure):
    def fail(self, x):
        raise failure

    monkeypatch.setattr(FastRunner, "trunk", fail)
    with pytest.raises(memory.InsufficientMemoryError) as caught:
        inference.upscale(tiny, photo, precision="fp32-cl", tile=16)
    error = caught.value
    assert error.cause.split()[0] in str(failure) and error.tile == 16 and error.size == (37, 29)
    assert "ran out of memory" in str(error) and "\n" not in str(error)
    # 37x29 px: no tile saves enough memory to be worth its time, so none is proposed
    assert error.smaller is None and "--tile" not in memory_hint(error) and "--device cpu" not in memory_hint(error)
    on_cuda = memory.InsufficientMemoryError(error.needed, dataclasses.replace(error.budget, device="cuda"),
                                             error.tile, error.size, error.cause)
    assert "--device cpu" in memory_hint(on_cuda) and "--" not in str(on_cuda)


def test_an_allocation_failure_proposes_only_a_tile_worth_its_time():
    # A wider model on 200x200: untiled failed although its estimate fitted; the tile proposed is the one worth its
    # time that needs least memory (never one below twice the receptive field).
    model = SRDenseNet(**MID)
    plan = memory.plan_memory(model, (1, 200, 200), tile=0, precision="fp32")
    with pytest.raises(memory.InsufficientMemoryError) as caught:
        with memory.reporting_out_of_memory(plan, model, (1, 200, 200), precision="fp32"):
            raise MemoryError("Unable to allocate 4.5 GiB")
    error = caught.value
    tile, needed = error.smaller
    assert error.tile is None and needed < error.needed and tile >= memory.useful_tile(model)
    assert error.needed >= needed * memory.work_factor(model, (200, 200), tile)
    assert memory_hint(error) == f"try --tile {tile} (less memory, slower) or a smaller image"


def test_other_runtime_errors_are_not_called_memory(tiny, photo, monkeypatch):
    def fail(self, x):
        raise RuntimeError("expected input to have 1 channel")

    monkeypatch.setattr(FastRunner, "trunk", fail)
    with pytest.raises(RuntimeError, match="1 channel") as caught:
        inference.upscale(tiny, photo, precision="fp32-cl")
    assert not isinstance(caught.value, MemoryError)


# ---- returning freed heap --------------------------------------------------------------------------------------------


FREED_HEAP = """
from srdensenet import system_memory
assert system_memory.release_free_heap(limit=2**62) is False  # under the limit: nothing done
pairs = [(bytearray(100_000), bytearray(4096)) for _ in range(300)]  # 30 MB of heap blocks, under 128 KiB each
keepers = [small for _, small in pairs]  # (too large for the small-block caches) hold holes open between them
del pairs
assert system_memory.free_heap_bytes() > 20_000_000, system_memory.free_heap_bytes()
assert system_memory.release_free_heap(limit=0) is True
"""


def test_release_free_heap_gives_back_freed_blocks(repo_root):
    # glibc keeps freed blocks under its mmap threshold in the heap; inference returns them after each image. In a
    # fresh process: what earlier tests left in this one's heap (and its mmap threshold) would decide the count.
    result = subprocess.run([sys.executable, "-c", FREED_HEAP], cwd=repo_root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("preset,expected", [(None, "1"), ("0", "0")])
@pytest.mark.parametrize("start", ["from srdensenet.cli import main\ntry:\n    main(['upscale', '--help'])\n"
                                   "except SystemExit:\n    pass",
                                   "import srdensenet\nsrdensenet.enable_huge_pages()"])
def test_commands_and_the_library_call_ask_torch_for_huge_pages_unless_the_user_chose(repo_root, preset, expected,
                                                                                       start):
    # PyTorch reads THP_MEM_ALLOC_ENABLE once, at the first tensor allocation: a command sets it before any tensor
    # exists (before torch is even imported), a program calls srdensenet.enable_huge_pages(); a value the user set
    # stays.
    env = {k: v for k, v in os.environ.items() if k != system_memory.HUGE_PAGES_ENV}
    if preset is not None:
        env[system_memory.HUGE_PAGES_ENV] = preset
    name = system_memory.HUGE_PAGES_ENV
    code = (f"import os, sys\nfrom srdensenet import inference\nassert os.environ.get({name!r}) == {preset!r}, "
            f"'importing changed it'\n{start}\nprint(os.environ.get({name!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-1] == expected
