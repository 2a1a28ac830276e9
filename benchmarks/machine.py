"""What the benchmarks say about the machine they ran on: CPU model and flags, the CPU class the run behaves as,
the load average, and the matmul peak of each precision (every achieved FLOP/s is compared with the peak of the
precision it computes in)."""

from __future__ import annotations

import os
import platform
import time

import torch

from srdensenet import precision_probe


def cpu_name() -> str:
    return precision_probe.cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The flags that decide the speed of fp32 and bf16 here."""
    flags = precision_probe.cpu_flags()
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx_ne_convert", "amx_bf16", "amx_tile"]
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def cpu_path() -> str:
    """What precision "auto" means on this CPU, what decided it (the probe, its cache, the override), and the
    settings that change it."""
    settings = ", ".join(f"{name}={os.environ.get(name, '-')}"
                         for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", precision_probe.FAST_BF16_ENV))
    probe = precision_probe.bf16_probe()
    return f"fast bf16 (auto = bf16): {'yes' if probe.fast else 'no'}, {probe.reason} ({settings})"


def describe_machine() -> str:
    return (f"{cpu_name()} ({cpu_flags()}), {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs; "
            f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {cpu_path()}")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", budget_s: float = 3.0) -> float:
    """Best GFLOP/s of square matmuls, growing the size until one takes ~0.3 s (emulated bf16 is ~100x slower)."""
    device = torch.device(device)
    sizes = (256, 512, 1024, 2048, 3072) if device.type == "cpu" else (1024, 4096, 8192, 16384)
    best, spent = 0.0, 0.0
    for n in sizes:
        a, b = torch.rand(n, n, dtype=dtype, device=device), torch.rand(n, n, dtype=dtype, device=device)
        a @ b
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            took = time.perf_counter() - start
            spent += took
            best = max(best, 2 * n**3 / took / 1e9)
        if took > 0.3 or spent > budget_s:
            break
    return best
