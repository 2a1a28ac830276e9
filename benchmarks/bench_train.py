"""Training-step speed: plain eager fp32 NCHW against the fast path train.py uses, measured side by side.

    python benchmarks/bench_train.py                      # paper model, batch 32, 100x100 HR (25x25 LR), x4, CPU
    python benchmarks/bench_train.py --device cuda --budget-seconds 400   # also: steps that fit in 400 s

Fast path = channels_last + autocast at precision "auto" (hardware.resolve_precision: bf16 on CPUs with native
bf16 and on CUDA, otherwise fp32), optionally torch.compile (--compile). Same model, same random batch, same
optimiser; each variant warms up, then the median of --repeats timings of --steps steps is reported, with the
achieved FLOP/s (forward + backward convolutions, counted by FlopCounterMode) as a share of the matmul peak of the
precision the variant computes in, measured in the same run.

To time the other CPU class's path on a CPU with native bf16: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``
(oneDNN then emulates bf16 and "auto" stays fp32), or ``SRDENSENET_NATIVE_BF16=0`` / ``=1`` to choose "auto" by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import describe_machine, load, matmul_peak, sync  # noqa: E402  (benchmarks/ is the script's folder)

from config import model_arch, preset_config  # noqa: E402
from hardware import autocast, precision_name, resolve_device, resolve_precision  # noqa: E402
from model import SRDenseNet  # noqa: E402


def train_step(model, optimizer, lr, hr, dtype, device) -> None:
    with autocast(device, dtype):
        sr = model(lr)
    loss = F.mse_loss(sr.float(), hr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_flops(config, lr: torch.Tensor, hr: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward; 2 per multiply-add), counted on a CPU copy of one sample."""
    model = SRDenseNet(**model_arch(config))
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(lr[:1].cpu()), hr[:1].cpu()).backward()
    return counter.get_total_flops() * lr.shape[0]


def time_steps(model, optimizer, lr, hr, dtype, device, steps: int, repeats: int) -> float:
    """Median seconds per optimiser step."""
    def step() -> None:
        train_step(model, optimizer, lr, hr, dtype, device)

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", help="config preset giving the model and patch size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the fast path")
    parser.add_argument("--bf16", action="store_true",
                        help="also time channels_last + bf16 where auto is fp32 (very slow where bf16 is emulated)")
    parser.add_argument("--budget-seconds", type=float, default=0, help="print the fast-path steps fitting in this")
    args = parser.parse_args()

    config = preset_config(args.preset)
    device = resolve_device(args.device)
    s, hr_size = config.upscale_factor, config.hr_patch_size
    torch.manual_seed(0)
    lr = torch.rand(args.batch_size, 1, hr_size // s, hr_size // s, device=device)
    hr = torch.rand(args.batch_size, 1, hr_size, hr_size, device=device)
    fast_dtype = resolve_precision("auto", device)
    variants = [("eager fp32 NCHW", False, torch.float32, False), ("channels_last + fp32", True, torch.float32, False)]
    if fast_dtype != torch.float32 or args.bf16:
        extra = fast_dtype if fast_dtype != torch.float32 else torch.bfloat16
        variants.append((f"channels_last + {precision_name(extra)}", True, extra, False))
    if args.compile:
        variants.append((f"channels_last + {precision_name(fast_dtype)} + compile", True, fast_dtype, True))

    hardware_line = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_machine()
    print(f"device {device} ({hardware_line}); load average {load()}")
    print(f"preset {args.preset}: x{s}, batch {args.batch_size}, {hr_size}x{hr_size} HR patches, "
          f"{sum(p.numel() for p in SRDenseNet(**model_arch(config)).parameters()):,} parameters")
    flops = step_flops(config, lr, hr)
    peaks = {dtype: matmul_peak(dtype, device) for dtype in {v[2] for v in variants}}
    print("matmul peaks: " + ", ".join(f"{precision_name(d)} {p:.0f} GFLOP/s" for d, p in peaks.items())
          + f"; {flops / 1e9:.0f} GFLOP per step")
    results = {}
    for name, channels_last, dtype, compiled in variants:
        torch.manual_seed(0)
        model = SRDenseNet(**model_arch(config)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        run = torch.compile(model) if compiled else model
        seconds = time_steps(run, optimizer, lr, hr, dtype, device, args.steps, args.repeats)
        results[name] = seconds
        achieved = flops / seconds / 1e9
        print(f"  {name:40s} {seconds * 1000:9.1f} ms/step  {args.batch_size / seconds:8.1f} patches/s  "
              f"x{results['eager fp32 NCHW'] / seconds:.2f} vs eager fp32  {achieved:.0f} GFLOP/s "
              f"({100 * achieved / peaks[dtype]:.0f}% of the {precision_name(dtype)} peak)")
    print(f"load average at end {load()}")
    if args.budget_seconds:
        best = min(results.values())
        print(f"max_steps for {args.budget_seconds:.0f} s: {int(args.budget_seconds / best)}")


if __name__ == "__main__":
    main()
