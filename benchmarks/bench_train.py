"""Training-step speed: plain eager fp32 NCHW against the fast paths train.py uses, measured side by side.

    python benchmarks/bench_train.py                      # paper model, batch 32, 100x100 HR (25x25 LR), x4, CPU
    python benchmarks/bench_train.py --device cuda --budget-seconds 400   # also: steps that fit in 400 s
    python benchmarks/bench_train.py --device cuda --time-budget 180 --json bench.json   # all GPU rows, self-limited
    python benchmarks/bench_train.py --device cpu --preset demo --fast --steps 1 --repeats 1 --batches 8  # dry run

Classic rows (model + Adam on a random batch already on the device): eager fp32 NCHW, channels_last + fp32, + the
"auto" precision (hardware.resolve_precision: bf16 on CUDA and on CPUs where the probe measured it faster) in both
layouts, optionally torch.compile (--compile). Each variant warms up, then the median of --repeats timings of --steps
steps is reported, with the achieved FLOP/s (forward + backward convolutions, counted by FlopCounterMode) as a share
of the matmul peak of the precision the variant computes in, measured in the same run. A last line sets channels_last
against NCHW in the "auto" precision beside what ``train.py --channels-last auto`` picks here (layout_probe.py), to
check the probe against the full step.

End-to-end rows (--fast; on by default on CUDA) time train.py's own step (train_step.py) with the release recipe's
clipping (1.0) and EMA (0.999), data included, channels_last + the "auto" precision:

* ``loader-path step``: a pinned uint8 batch crosses to the device and prepare_batch makes the LR there, Adam with
  torch's defaults: the ops of train.py's loader path (without its CPU workers' crops).
* ``+ fused Adam``: the fast path's optimiser flags, same host batch.
* ``+ device pool``: ``--data-on-device``: crops, flips and LR made on the device (device_pool.py).
* ``+ CUDA graph``: ``--cuda-graph``, the whole step replayed as one graph (CUDA only).
* ``+ compile`` / ``+ compile reduce-overhead`` / ``+ compile + CUDA graph``: torch.compile modes (CUDA, or --compile).
* the best trainable row again at each of --batches (larger batches; the learning rate is the recipe's business:
  scripts/gpu_release.py scales it).

Rows run in that order until --time-budget seconds have passed; a row that fails prints why and the rest go on.
--json writes every row with the train.py options that reproduce it (scripts/gpu_release.py reads it).

To time the other CPU class's path on a CPU with native bf16: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``
(oneDNN then emulates bf16 and "auto" stays fp32), or ``SRDENSENET_FAST_BF16=0`` / ``=1`` to choose "auto" by hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from machine import describe_machine, load, matmul_peak, sync
from torch.utils.flop_counter import FlopCounterMode

from srdensenet.config import model_arch, preset_config
from srdensenet.dataset import LR_CONTEXT, TrainDataset, prepare_batch
from srdensenet.device_pool import DevicePool
from srdensenet.fileio import write_text_atomic
from srdensenet.hardware import autocast, precision_name, resolve_device, resolve_precision
from srdensenet.layout_probe import auto_layout
from srdensenet.model import SRDenseNet
from srdensenet.system_memory import enable_huge_pages
from srdensenet.train_step import ModelEma, PoolBatches, adam_options, compile_model, make_adam, make_step

RECIPE = {"grad_clip": 1.0, "ema_decay": 0.999, "learning_rate": 2e-4}  # the release preset's step


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


def median_seconds(step, device, steps: int, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call of step(index) after warm-up calls (compilation and graph capture happen there)."""
    index = 0
    for _ in range(warmup):
        step(index)
        index += 1
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(index)
            index += 1
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def time_steps(model, optimizer, lr, hr, dtype, device, steps: int, repeats: int) -> float:
    """Median seconds per optimiser step."""
    return median_seconds(lambda _: train_step(model, optimizer, lr, hr, dtype, device), device, steps, repeats)


# ---- end-to-end rows: train.py's step (train_step.py) ----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    batch: int
    fused: bool = False  # the fast path's Adam flags (else torch's defaults, as on the loader path)
    pool: bool = False  # batches from the DevicePool (else a pinned host batch through prepare_batch)
    graph: bool = False
    compile_mode: str = ""  # "" = eager

    def train_options(self) -> list[str]:
        """The train.py options of this row (meaningful for pool rows: the ones train.py can run)."""
        options = ["--batch-size", str(self.batch), "--channels-last"]
        options += ["--data-on-device"] if self.pool else []
        options += ["--cuda-graph"] if self.graph else []
        options += ["--compile", "--compile-mode", self.compile_mode] if self.compile_mode else []
        return options


class HostBatches:
    """A batch source with the loader path's data movement: a pinned uint8 batch of context crops crosses to the
    device every step and prepare_batch makes the LR there (the CPU workers' crop time is not included)."""

    def __init__(self, config, batch: int, device: torch.device) -> None:
        side = config.hr_patch_size + 2 * LR_CONTEXT * config.upscale_factor
        crops = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        self.crops = crops.pin_memory() if device.type == "cuda" else crops
        self.device, self.scale = device, config.upscale_factor

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch({"hr": self.crops}, self.scale, self.device)


def synthetic_pool(config, device: torch.device, samples: int) -> DevicePool:
    """Random photos-sized images (content does not change the speed), at least `samples` patches an epoch."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (384, 512, 3), dtype=np.uint8) for _ in range(16)]
    return DevicePool(images, config.upscale_factor, config.hr_patch_size, max(1, -(-samples // 16)), True, 0, device)


def make_row_step(row: Row, config, device: torch.device, dtype: torch.dtype, pool: DevicePool | None):
    """train_step's step for the row, built as train.py builds it; returns step(index)."""
    torch.manual_seed(0)
    model = SRDenseNet(**model_arch(config)).to(device).to(memory_format=torch.channels_last)
    optimizer = make_adam(model, RECIPE["learning_rate"], (0.9, 0.999), 0.0, adam_options(device, row.fused, row.graph))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0)
    ema = ModelEma(model, RECIPE["ema_decay"])
    train_model = compile_model(model, row.compile_mode) if row.compile_mode else model
    batches = PoolBatches(pool, row.batch) if row.pool else HostBatches(config, row.batch, device)
    if row.pool:
        steps_per_epoch = len(batches.epoch(0, 0))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = row.pool  # as train.py does on the fast path
    step = make_step(model, train_model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=False), ema,
                     batches, dtype=dtype, grad_clip=RECIPE["grad_clip"], cuda_graph=row.graph)
    return (lambda index: step(index % steps_per_epoch)) if row.pool else step


def fast_rows(args, device: torch.device, dtype: torch.dtype) -> list[Row]:
    """The end-to-end rows in the order they run (cheapest and most telling first; compiles last)."""
    cuda, b, label = device.type == "cuda", args.batch_size, f"cl + {precision_name(dtype)}"
    rows = [Row(f"loader-path step ({label})", b), Row("+ fused Adam", b, fused=True),
            Row("+ device pool (--data-on-device)", b, fused=True, pool=True)]
    if cuda:
        rows.append(Row("+ CUDA graph (--cuda-graph)", b, fused=True, pool=True, graph=True))
    if cuda or args.compile:
        rows += [Row("+ compile", b, fused=True, pool=True, compile_mode="default"),
                 Row("+ compile reduce-overhead", b, fused=True, pool=True, compile_mode="reduce-overhead")]
    if cuda:
        rows.append(Row("+ compile + CUDA graph", b, fused=True, pool=True, graph=True, compile_mode="default"))
    return rows


@dataclass
class Result:
    row: Row
    seconds: float = float("nan")
    memory_gib: float = float("nan")
    error: str = ""
    extra: dict = field(default_factory=dict)


def run_row(row: Row, config, device, dtype, args) -> Result:
    result, began = Result(row), time.monotonic()
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pool = synthetic_pool(config, device, row.batch * 4) if row.pool and not args.train_dirs else None
        if row.pool and args.train_dirs:
            pool = DevicePool.from_dataset(TrainDataset(args.train_dirs, config.upscale_factor,
                                                        config.hr_patch_size, args.patches_per_image,
                                                        jpeg_prescale=args.jpeg_prescale), device)
        step = make_row_step(row, config, device, dtype, pool)
        result.seconds = median_seconds(step, device, args.steps, args.repeats, args.warmup)
        if device.type == "cuda":
            result.memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as error:  # one failing variant (a compile, a capture, memory) must not stop the others
        result.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"[:200]
    finally:
        if row.compile_mode:
            torch._dynamo.reset()
        result.extra["wall_seconds"] = time.monotonic() - began  # compilation and capture included
    return result


def print_result(result: Result, per_patch_flops: float, peak: float, baseline_pps: float, dtype) -> None:
    row = result.row
    if result.error:
        print(f"  {row.name:36s} {row.batch:5d}  failed: {result.error}", flush=True)
        return
    pps = row.batch / result.seconds
    achieved = per_patch_flops * pps / 1e9
    memory = f"  {result.memory_gib:5.1f} GiB" if result.memory_gib == result.memory_gib else ""
    print(f"  {row.name:36s} {row.batch:5d} {result.seconds * 1000:9.2f} ms/step {pps:10.1f} patches/s  "
          f"x{pps / baseline_pps:5.2f}  {achieved:8.0f} GFLOP/s ({100 * achieved / peak:4.1f}% of the "
          f"{precision_name(dtype)} peak){memory}", flush=True)


def run_fast_rows(args, config, device, dtype, per_patch_flops: float, peak: float, baseline_pps: float,
                  started: float) -> list[Result]:
    """Run the rows in order within --time-budget; --json is rewritten after each row (a killed run keeps it)."""
    print(f"end to end (train.py's step; clip {RECIPE['grad_clip']}, EMA {RECIPE['ema_decay']}, data "
          f"included):\n  {'variant':36s} {'batch':>5s}")
    results: list[Result] = []
    queue = fast_rows(args, device, dtype)
    swept = False
    while queue:
        row = queue.pop(0)
        left = args.time_budget - (time.monotonic() - started)
        if left <= 0 or (row.compile_mode and left < args.compile_seconds):
            print(f"  {row.name:36s} {row.batch:5d}  skipped: {left:.0f} s left of --time-budget "
                  f"{args.time_budget:.0f}{' (a compile needs --compile-seconds)' if row.compile_mode else ''}")
            continue
        result = run_row(row, config, device, dtype, args)
        gc.collect()  # frees the row's model, optimiser and graph pool before the next row allocates
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(result)
        print_result(result, per_patch_flops, peak, baseline_pps, dtype)
        if args.json:
            write_json(args.json, device, dtype, per_patch_flops, peak, results)
        if not swept and (not queue or queue[0].compile_mode):  # before the compiles: the best eager row, bigger
            swept = True
            best = best_trainable(results)
            if best is not None:
                queue[:0] = [replace(best.row, name=f"{best.row.name.split(' (')[0]}, larger batch", batch=size)
                             for size in args.batches if size != best.row.batch]
    return results


def best_trainable(results: list[Result]) -> Result | None:
    """The fastest row train.py can run (a device-pool row) by patches/s."""
    ok = [r for r in results if r.row.pool and not r.error]
    return max(ok, key=lambda r: r.row.batch / r.seconds) if ok else None


def write_json(path: str, device, dtype, per_patch_flops: float, peak: float, results: list[Result]) -> None:
    best = best_trainable(results)
    rows = [{**asdict(r.row), "seconds_per_step": None if r.error else r.seconds,
             "patches_per_second": None if r.error else r.row.batch / r.seconds,
             "memory_gib": r.memory_gib if r.memory_gib == r.memory_gib else None, "error": r.error,
             "trainable": r.row.pool, "train_options": r.row.train_options(), **r.extra} for r in results]
    report = {"device": str(device), "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
              else describe_machine(), "torch": torch.__version__, "precision": precision_name(dtype),
              "gflop_per_patch": per_patch_flops / 1e9, "matmul_peak_gflops": peak, "rows": rows,
              "best": rows[results.index(best)] if best else None}
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")  # a reader (or a kill) never meets half a file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", help="config preset giving the model and patch size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each end-to-end row's timing")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the fast path")
    parser.add_argument("--bf16", action="store_true",
                        help="also time channels_last + bf16 where auto is fp32 (very slow where bf16 is emulated)")
    parser.add_argument("--budget-seconds", type=float, default=0, help="print the fast-path steps fitting in this")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="end-to-end rows of train.py's fast path (default: on CUDA only)")
    parser.add_argument("--batches", type=int, nargs="*", default=None,
                        help="batch sizes for the best trainable row (default on CUDA: 64 128 256 512)")
    parser.add_argument("--time-budget", type=float, default=float("inf"), help="start no row after this many s")
    parser.add_argument("--compile-seconds", type=float, default=150,
                        help="start a compile row only with this much of --time-budget left")
    parser.add_argument("--json", default="", help="write every row (and train.py's options for it) here")
    parser.add_argument("--train-dirs", nargs="*", default=[], help="real images for the pool rows (else random)")
    parser.add_argument("--patches-per-image", type=int, default=16)
    parser.add_argument("--jpeg-prescale", type=float, default=1.0)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    started = time.monotonic()

    config = preset_config(args.preset)
    device = resolve_device(args.device)
    args.fast = device.type == "cuda" if args.fast is None else args.fast
    args.batches = ([64, 128, 256, 512] if device.type == "cuda" else []) if args.batches is None else args.batches
    s, hr_size = config.upscale_factor, config.hr_patch_size
    torch.manual_seed(0)
    lr = torch.rand(args.batch_size, 1, hr_size // s, hr_size // s, device=device)
    hr = torch.rand(args.batch_size, 1, hr_size, hr_size, device=device)
    fast_dtype = resolve_precision("auto", device)
    variants = [("eager fp32 NCHW", False, torch.float32, False), ("channels_last + fp32", True, torch.float32, False)]
    if fast_dtype != torch.float32 or args.bf16:
        extra = fast_dtype if fast_dtype != torch.float32 else torch.bfloat16
        variants += [(f"NCHW + {precision_name(extra)}", False, extra, False)] if extra == fast_dtype else []
        variants.append((f"channels_last + {precision_name(extra)}", True, extra, False))
    if args.compile:
        variants.append((f"channels_last + {precision_name(fast_dtype)} + compile", True, fast_dtype, True))

    hardware_line = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_machine()
    print(f"device {device} ({hardware_line}); torch {torch.__version__}; load average {load()}")
    print(f"preset {args.preset}: x{s}, batch {args.batch_size}, {hr_size}x{hr_size} HR patches, "
          f"{sum(p.numel() for p in SRDenseNet(**model_arch(config)).parameters()):,} parameters")
    flops = step_flops(config, lr, hr)
    peaks = {dtype: matmul_peak(dtype, device) for dtype in {v[2] for v in variants} | {fast_dtype}}
    print("matmul peaks: " + ", ".join(f"{precision_name(d)} {p:.0f} GFLOP/s" for d, p in peaks.items())
          + f"; {flops / 1e9:.0f} GFLOP per step ({flops / args.batch_size / 1e9:.1f} per patch)", flush=True)
    results = {}
    for name, channels_last, dtype, compiled in variants:
        torch.manual_seed(0)
        model = SRDenseNet(**model_arch(config)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_adam(model, 1e-4)
        run = torch.compile(model) if compiled else model
        seconds = time_steps(run, optimizer, lr, hr, dtype, device, args.steps, args.repeats)
        results[name] = seconds
        achieved = flops / seconds / 1e9
        print(f"  {name:40s} {seconds * 1000:9.1f} ms/step  {args.batch_size / seconds:8.1f} patches/s  "
              f"x{results['eager fp32 NCHW'] / seconds:.2f} vs eager fp32  {achieved:.0f} GFLOP/s "
              f"({100 * achieved / peaks[dtype]:.0f}% of the {precision_name(dtype)} peak)", flush=True)
    auto_name = precision_name(fast_dtype)
    nchw = results["eager fp32 NCHW" if fast_dtype == torch.float32 else f"NCHW + {auto_name}"]
    layout = auto_layout(device, model_arch(config), hr_size, args.batch_size, fast_dtype)
    print(f"channels_last {nchw / results[f'channels_last + {auto_name}']:.2f}x as fast as NCHW in {auto_name} at "
          f"batch {args.batch_size}; train.py --channels-last auto here: {layout.words()}", flush=True)
    if args.fast:
        baseline = args.batch_size / results["eager fp32 NCHW"]
        rows = run_fast_rows(args, config, device, fast_dtype, flops / args.batch_size, peaks[fast_dtype], baseline,
                             started)
        best = best_trainable(rows)
        if best is not None:
            print(f"best trainable: {best.row.name}, batch {best.row.batch}, "
                  f"{best.row.batch / best.seconds:.0f} patches/s: train.py {' '.join(best.row.train_options())}")
    print(f"load average at end {load()}; {time.monotonic() - started:.0f} s in all")
    if args.budget_seconds:
        best = min(results.values())
        print(f"max_steps for {args.budget_seconds:.0f} s: {int(args.budget_seconds / best)}")


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    main()
