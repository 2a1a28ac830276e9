"""Inference speed of SRDenseNet on this machine: eager fp32 NCHW vs the ``auto`` path, the stock-PyTorch anchor,
ONNX Runtime and OpenVINO, side by side, and a fresh process's first image.

    python benchmarks/bench_inference.py            # full run: 64, 256, 512 LR (~8 min on 2 idle cores)
    python benchmarks/bench_inference.py --quick    # 64 and 128, one repeat (~1 min)
    python benchmarks/bench_inference.py --sizes 256 --bf16   # chosen sizes; also the paths auto did not pick
    python benchmarks/bench_inference.py --memory   # x4 peak RSS beside memory.estimate_memory, tiled and untiled
    python benchmarks/bench_inference.py --mixed 24 # a stream of 24 LR sizes: shape buckets on vs off

``auto`` against OpenVINO's faster mode (f32 or its bf16 inference-precision hint), shipped x4 weights, best of 2
(``--repeats 3``: best of 3):

    python benchmarks/bench_inference.py --sizes 128 256 --weights weights/srdensenet_x4_all_paper.safetensors

Everything is measured in one process, methods interleaved (best of the repeats) on the Y channel of a real photo
(scikit-image's astronaut, downscaled), with the paper model at random initialisation unless ``--weights`` is given.
Achieved FLOP/s use the convolution FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add) against this machine's fp32 and bf16 matmul peaks measured in the same run; each row is compared with
the peak of the precision it computes in. The stock anchor is the channels_last model called directly, under plain
bf16 autocast when auto is bf16. Where the CPU emulates bf16, the optional bf16 rows (``--bf16``) are not timed.
OpenVINO (``pip install -r requirements-bench.txt``; its rows are skipped without it) runs the project's ONNX export
with the same thread count, in f32 and under the bf16 hint, which it follows only where it runs bf16 natively; only
its inference is timed, its compile time is printed once. The cold-start rows (cold_start.py) run ``inference.py`` in
a new process on one photo, beside a fresh ``import torch`` and the first photo's time step by step. Time only on an
idle machine: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engines
import numpy as np
import torch
from cold_start import cold_start_rows
from machine import describe_machine, load, matmul_peak
from soak_inference import rss_mib
from torch.utils.flop_counter import FlopCounterMode

from srdensenet import (
    hardware,
    image_files,
    imgproc,
    inference,
    memory,
    precision_probe,
    runners,
    system_memory,
    tiling,
)
from srdensenet.fileio import atomic_write
from srdensenet.model import SCALES, SRDenseNet, count_parameters
from srdensenet.system_memory import enable_huge_pages

ROOT = Path(__file__).resolve().parent.parent


def conv_flops(model: SRDenseNet, size: int = 16) -> float:
    """FLOPs per LR pixel (exact: convolution FLOPs are proportional to the number of pixels)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, size, size))
    return counter.get_total_flops() / size**2


def photo_lr(size: int) -> np.ndarray:
    """A real photo as LR input: scikit-image's astronaut (512x512) MATLAB-bicubic downscaled to size x size."""
    from skimage import data

    hr = data.astronaut()
    return hr if size == 512 else imgproc.make_lr(hr, 512 // size)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stock_run(model: SRDenseNet, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Stock PyTorch: the channels_last model on a channels_last input, under plain bf16 autocast if asked."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(y)


EAGER = "eager fp32 NCHW `model(y)`"
UPSCALE = "`upscale(model, rgb)` auto, with colour"
STOCK = {"fp32": "stock fp32 channels_last `model(y)`", "bf16": "stock bf16 autocast channels_last `model(y)`"}


def speed_methods(model: SRDenseNet, with_bf16: bool) -> tuple[dict, dict[str, str], dict[str, float]]:
    """The speed table's rows: name -> how it is called (None: eager; "stock"/"stock-bf16": the channels_last model;
    a dict: predict_y's options; an engines.OpenVinoModel), name -> the precision whose matmul peak the row is compared
    with, and OpenVINO's compile time per row. A row that cannot run here is left out with one printed line."""
    backend, precision = runners.resolve_plan("auto", torch.device("cpu"))
    auto_peak = "bf16" if precision == "bf16" else "fp32"
    auto_name = f"`predict_y` auto ({backend} {hardware.PRECISIONS[precision].inference})"
    # The stock-PyTorch anchor in auto's precision: what a user gets from channels_last (+ autocast) alone.
    methods = {EAGER: None, auto_name: {}, STOCK[auto_peak]: "stock"}
    extra_bf16, emulated = with_bf16 and precision != "bf16", precision_probe.bf16_emulated()
    if extra_bf16 and emulated:
        print(f"Not timed: stock bf16 autocast and `predict_y` bf16 ({emulated}).")
    elif extra_bf16:
        methods[STOCK["bf16"]] = "stock-bf16"
    if runners.onnxruntime_available():
        methods["ONNX Runtime fp32"] = dict(precision="fp32", backend="onnxruntime")
    else:
        print("ONNX Runtime row skipped: onnxruntime is not installed (pip install -r requirements-bench.txt).")
    if extra_bf16 and not emulated:
        methods["`predict_y` fast path bf16"] = dict(precision="bf16")
    if with_bf16 and precision != "fp32-cl":
        methods["`predict_y` fast path fp32 (`fp32-cl`)"] = dict(precision="fp32-cl")
    # Each row is compared with the matmul peak of the precision its convolutions run in.
    peak_of = {name: "bf16" if "bf16" in name else "fp32" for name in methods}
    peak_of[auto_name] = peak_of[UPSCALE] = auto_peak
    compile_s = {}
    openvino = engines.openvino_models(model)
    if not openvino:
        print(engines.OPENVINO_MISSING)
    for name, engine in openvino.items():  # compared with the peak of what OpenVINO chose to run
        methods[name], compile_s[name] = engine, engine.compile_s
        peak_of[name] = "bf16" if engine.runs_in == "bf16" else "fp32"
    return methods, peak_of, compile_s


def time_rows(model: SRDenseNet, methods: dict, sizes: list[int], repeats: dict[int, int]) -> dict[int, dict]:
    """Best time of every row at every size, rows interleaved on the Y of the same photo."""
    stock = copy.deepcopy(model).to(memory_format=torch.channels_last)
    results = {}
    for size in sizes:
        rgb = photo_lr(size)
        y = torch.from_numpy((imgproc.y_channel(rgb) / 255.0).astype(np.float32))[None, None]
        calls = {}
        y_cl = y.contiguous(memory_format=torch.channels_last)
        for name, options in methods.items():
            if options is None:
                calls[name] = lambda y=y: model(y)
            elif options in ("stock", "stock-bf16"):
                calls[name] = lambda y=y_cl, bf16=options == "stock-bf16": stock_run(stock, y, bf16)
            elif isinstance(options, dict):
                calls[name] = lambda y=y, o=options: inference.predict_y(model, y, **o)
            else:  # an engine: only its inference is timed (compiled before)
                calls[name] = lambda y=y, engine=options: engine(y)
        if size <= 256:  # the speed target is defined on the whole call, colour included
            # Right after predict_y auto, which it is compared with, and not after OpenVINO: its worker threads keep
            # spinning for a while after a call, and the next row pays for them (+60% at 128x128 here).
            names = list(calls)
            names.insert(names.index(list(methods)[1]) + 1, UPSCALE)
            calls[UPSCALE] = lambda rgb=rgb: inference.upscale(model, rgb)
            calls = {name: calls[name] for name in names}
        best = {name: float("inf") for name in calls}
        with torch.inference_mode():
            if size <= 64:
                for fn in calls.values():  # warm-up (allocator, oneDNN primitive caches); larger sizes: best of 2
                    fn()
            for _ in range(repeats[size]):
                for name, fn in calls.items():  # interleaved: a load spike hits every method alike
                    best[name] = min(best[name], timed(fn, 1))
        results[size] = best
        print(f"  {size}x{size} done (load {load()})", file=sys.stderr, flush=True)
    return results


def speed_table(model: SRDenseNet, sizes: list[int], repeats: dict[int, int], with_bf16: bool
                ) -> tuple[list[str], dict]:
    """The speed table's lines and its measurements (times by size, peaks, preparation and compile times)."""
    flops_px = conv_flops(model)
    methods, peak_of, compile_s = speed_methods(model, with_bf16)
    # Peaks before and after the timings (the best of both): another process on the machine lowers either.
    results: dict = {"fp32_peak": matmul_peak(torch.float32), "bf16_peak": matmul_peak(torch.bfloat16)}
    # Prepare every path once (exports, caches) so no timing includes it.
    start = time.perf_counter()
    for options in methods.values():
        if isinstance(options, dict):
            inference.predict_y(model, torch.rand(1, 1, 24, 24), **options)
    results["prepare_s"] = time.perf_counter() - start
    results.update(time_rows(model, methods, sizes, repeats))
    results["fp32_peak"] = max(results["fp32_peak"], matmul_peak(torch.float32))
    results["bf16_peak"] = max(results["bf16_peak"], matmul_peak(torch.bfloat16))
    header = "| LR input | " + " | ".join(f"{s}x{s}" for s in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    for name in results[sizes[0]]:
        cells = []
        for size in sizes:
            if name not in results[size]:
                cells.append("-")
                continue
            t, peak = results[size][name], peak_of[name]
            gflops = flops_px * size * size / t / 1e9
            cells.append(f"{t:.2f} s, **{results[size][EAGER] / t:.2f}x**, {gflops:.0f} GFLOP/s "
                         f"({100 * gflops / results[f'{peak}_peak']:.0f}% of {peak})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    results.update(flops_per_px=flops_px, openvino_compile_s=compile_s, auto_row=list(methods)[1])
    return lines, results


def engine_ratio_lines(results: dict, sizes: list[int]) -> list[str]:
    """The project's auto paths against OpenVINO's faster mode at each size (speed ratio: OpenVINO's time / ours)."""
    engine_rows = list(results["openvino_compile_s"])
    if not engine_rows:
        return []
    auto = results["auto_row"]
    lines = [f"| LR input | {auto} | " + " | ".join(engine_rows) + " | OpenVINO's faster mode | `predict_y` auto "
             "/ faster OpenVINO (target >= 1.0x) | `upscale` auto / faster OpenVINO | the colour's cost: `upscale` "
             "/ `predict_y` - 1 (target <= 5%) |", "|---" * (len(engine_rows) + 6) + "|"]
    for size in sizes:
        times = results[size]
        fastest = min(engine_rows, key=times.__getitem__)
        upscale = f"{times[fastest] / times[UPSCALE]:.2f}x" if UPSCALE in times else "-"
        colour = f"{100 * (times[UPSCALE] / times[auto] - 1):+.0f}%" if UPSCALE in times else "-"
        lines.append(f"| {size}x{size} | {times[auto]:.2f} s | " + " | ".join(f"{times[r]:.2f} s" for r in engine_rows)
                     + f" | {fastest} | **{times[fastest] / times[auto]:.2f}x** | {upscale} | {colour} |")
    return lines


def cold_first_image(size: int, weights: str | None = None) -> list[str]:
    """A fresh ``inference.py`` process on one LR photo of size x size against a fresh ``import torch`` and a warm
    ``predict_y``, with the split of the first photo's time (cold_start.py). ``weights``: the checkpoint (default: the
    random x4 model, saved first)."""
    from srdensenet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if weights is None:
            weights = str(Path(tmp) / "model.pth")
            save_checkpoint(weights, SRDenseNet(4).eval())
        image_files.write_image(Path(tmp) / "lr.png", photo_lr(size))
        return cold_start_rows(Path(tmp) / "lr.png", weights)


def scale_table(size: int) -> list[str]:
    lines = ["| scale | parameters | MFLOP / LR px | GFLOP at 256x256 LR | receptive field (LR px) |"
             f" auto latency at {size}x{size} LR |", "|---|---|---|---|---|---|"]
    rgb = photo_lr(512)[:size, :size]
    y = torch.from_numpy((imgproc.y_channel(np.ascontiguousarray(rgb)) / 255.0).astype(np.float32))[None, None]
    for scale in SCALES:
        torch.manual_seed(0)
        model = SRDenseNet(scale).eval()
        flops_px = conv_flops(model)
        inference.predict_y(model, y[..., :24, :24])  # prepare (export / copy) outside the timing
        latency = timed(lambda m=model: inference.predict_y(m, y), 1)
        lines.append(f"| x{scale} | {count_parameters(model):,} | {flops_px / 1e6:.2f} | "
                     f"{flops_px * 256 * 256 / 1e9:.0f} | {tiling.receptive_field(model)} | {latency:.2f} s |")
    return lines


# ---- memory: each configuration in its own process, so ru_maxrss is that configuration's peak ------------------------


def photo_of_size(size: int) -> np.ndarray:
    """The astronaut photo MATLAB-bicubic resized to size x size (any size), uint8 RGB."""
    from skimage import data

    hr = data.astronaut()
    return hr if size == 512 else imgproc.imresize(hr, output_shape=(size, size))


def memory_child(options: dict, out_path: str) -> None:
    """One measurement: the peak RSS of one upscale (or predict_y, ``"y_only"``) above the RSS after loading the
    model and the image, beside memory.estimate_memory for the same call.

    The peak is VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across fork and exec
    (a child of a 460 MiB pytest process read 216 MiB "extra" where it used 75), but VmHWM belongs to the new image.
    """
    torch.manual_seed(0)
    model = SRDenseNet(**options.get("arch", {})).eval()
    rgb = photo_of_size(options["size"])
    y = (imgproc.y_channel(rgb) / 255.0).astype(np.float32)
    run = dict(precision=options["precision"], backend=options["backend"], tile=options["tile"])
    channels = 0 if options.get("y_only") else 3
    estimate = memory.estimate_memory(model, rgb.shape[:2], tile=options["tile"] or None, channels=channels,
                                         precision=options["precision"], backend=options["backend"])
    baseline = rss_mib() * 2**20
    with contextlib.suppress(OSError):  # reset VmHWM to the RSS now: a peak while importing is not the call's
        Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    sr = inference.predict_y(model, y, **run) if channels == 0 else inference.upscale(model, rgb, **run)
    took = time.perf_counter() - start
    peak = rss_mib("VmHWM") * 2**20
    if out_path:
        atomic_write(out_path, lambda handle: np.save(handle, sr))
    print(json.dumps({"peak_bytes": peak - baseline, "estimate_bytes": estimate, "seconds": took}))


def measure_memory(options: dict, out_path: str = "") -> dict:
    """memory_child in a fresh process (tests/test_memory.py uses it too)."""
    proc = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(options), out_path],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_report(sizes: list[int], tiles: list[int], backends: list[str]) -> list[str]:
    lines = ["| path | LR size | tile (LR px) | estimate | measured peak | estimate / measured | time | "
             "PSNR vs untiled (Y) |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            precision = "fp32" if backend == "onnxruntime" else "auto"
            path = f"{backend} {runners.resolve_plan(precision, torch.device('cpu'), backend)[1]}"
            for size in sizes:
                outputs = {}
                for tile in [0, *(t for t in tiles if t < size)]:
                    out = os.path.join(tmp, f"{backend}_{size}_{tile}.npy")
                    row = measure_memory(dict(size=size, tile=tile, backend=backend, precision=precision), out)
                    outputs[tile] = np.load(out)
                    match = "-"
                    if tile:
                        mse = float(np.mean((imgproc.y_channel(outputs[tile]) - imgproc.y_channel(outputs[0])) ** 2))
                        match = "identical" if mse == 0 else f"{10 * np.log10(255**2 / mse):.2f} dB"
                    estimate, peak = row["estimate_bytes"] / 2**20, row["peak_bytes"] / 2**20
                    lines.append(f"| {path} | {size}x{size} | {tile or 'untiled'} | {estimate:.0f} MiB | "
                                 f"{peak:.0f} MiB | {estimate / peak:.2f} | {row['seconds']:.1f} s | {match} |")
                    print(f"  {backend} {size} tile {tile}: estimate {estimate:.0f} MiB, peak {peak:.0f} MiB "
                          f"(load {load()})", file=sys.stderr, flush=True)
    return lines


def photo_estimates() -> list[str]:
    """The estimate (not a measurement) for common photo sizes at x4 with the default options, and auto's tile."""
    model = SRDenseNet(4).eval()
    lines = ["| LR photo | auto's tile here | estimated peak | untiled estimate |", "|---|---|---|---|"]
    for w, h in [(1024, 768), (2000, 1500), (4000, 3000)]:
        plan = memory.plan_memory(model, (h, w), channels=3)
        untiled = memory.estimate_memory(model, (h, w), channels=3)
        lines.append(f"| {w}x{h} ({w * h / 1e6:.1f} MP) | {plan.tile or 'untiled'} | "
                     f"{system_memory.format_bytes(plan.needed)} | {system_memory.format_bytes(untiled)} |")
    lines.append(f"\nOn this machine now {system_memory.memory_budget(torch.device('cpu')).describe()}.")
    return lines


# ---- mixed sizes: the auto path with and without shape buckets, each in its own process ------------------------


def mixed_sizes(count: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(0)
    return [(int(rng.integers(40, 161)), int(rng.integers(40, 161))) for _ in range(count)]


def mixed_child(bucketed: bool, count: int) -> None:
    torch.manual_seed(0)
    model = SRDenseNet(4).eval()
    inference.predict_y(model, np.zeros((8, 8), np.float32))  # prepares the fast path's copy
    backend, precision = runners.resolve_plan("auto", torch.device("cpu"))
    runners.prepared_runner(model, backend, precision).bucketed = bucketed
    y = imgproc.y_channel(photo_lr(256)) / 255.0
    start, rss = time.perf_counter(), []
    for h, w in mixed_sizes(count):
        inference.predict_y(model, y[:h, :w].astype(np.float32))
        rss.append(rss_mib())
    print(json.dumps({"seconds": time.perf_counter() - start, "rss_first": rss[0], "rss_end": rss[-1]}))


def mixed_report(count: int) -> list[str]:
    sizes = mixed_sizes(count)
    pixels = sum(h * w for h, w in sizes)
    padded = sum(runners.shape_bucket(h) * runners.shape_bucket(w) for h, w in sizes)
    rows = {}
    for bucketed in (False, True, False, True):  # interleaved, best of 2
        proc = subprocess.run([sys.executable, __file__, "--mixed-child", str(int(bucketed)), str(count)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if bucketed not in rows or row["seconds"] < rows[bucketed]["seconds"]:
            rows[bucketed] = row
        print(f"  buckets {'on' if bucketed else 'off'}: {row['seconds']:.1f} s (load {load()})", file=sys.stderr,
              flush=True)
    lines = [f"x4 paper model, auto path, {count} LR crops of astronaut, random sizes in 40..160 "
             f"(each side); buckets add {100 * (padded / pixels - 1):.1f}% pixels. Best of 2 processes each.\n",
             "| shape buckets | time | images/s | speed-up | RSS after 1st image -> after last |",
             "|---|---|---|---|---|"]
    for bucketed in (False, True):
        row = rows[bucketed]
        lines.append(f"| {'on' if bucketed else 'off'} | {row['seconds']:.1f} s | {count / row['seconds']:.2f} | "
                     f"{rows[False]['seconds'] / row['seconds']:.2f}x | {row['rss_first']:.0f} -> "
                     f"{row['rss_end']:.0f} MiB |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64x64 and 128x128 only, one repeat")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the CPU path auto did not pick: bf16 autocast (very slow without native "
                             "bf16) or fp32 channels_last")
    parser.add_argument("--memory", action="store_true",
                        help="only the memory measurement: x4 peak RSS beside the estimate, untiled and tiled")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="LR sizes (square): the speed table's (default 64 256 512, --quick 64 128) or --memory's "
                             "(default 512)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128], help="tile sizes for --memory")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per size, best kept (default 1-3 by size)")
    parser.add_argument("--weights", help="a checkpoint to time (default: the x4 paper model, random weights)")
    parser.add_argument("--mixed", type=int, metavar="N", help="only a stream of N mixed sizes, buckets on/off")
    parser.add_argument("--memory-child", nargs=2, metavar=("OPTIONS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--mixed-child", nargs=2, type=int, metavar=("BUCKETED", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child[0]), args.memory_child[1])
        return
    if args.mixed_child:
        mixed_child(bool(args.mixed_child[0]), args.mixed_child[1])
        return

    print(f"**Hardware:** {describe_machine()}. Load average at start: {load()}.\n")
    if args.mixed:
        print("\n".join(mixed_report(args.mixed)))
        print(f"\nLoad average at end: {load()}.")
        return
    if args.memory:
        backends = ["torch", "onnxruntime"] if runners.onnxruntime_available() else ["torch"]
        print("x4 paper model; estimate: memory.estimate_memory; measured: peak RSS (VmHWM) above the RSS "
              "after loading the model and the image, one process per row; upscale with colour.\n")
        print("\n".join(memory_report(args.sizes or [512], args.tiles, backends)))
        print("\n" + "\n".join(photo_estimates()))
        print(f"\nLoad average at end: {load()}.")
        return
    sizes = args.sizes or ([64, 128] if args.quick else [64, 256, 512])
    repeats = {size: args.repeats or (1 if args.quick or size > 256 else 3 if size <= 64 else 2) for size in sizes}
    torch.manual_seed(0)
    model = inference.load_model(args.weights, "cpu") if args.weights else SRDenseNet(4).eval()
    what = f"{args.weights} (x{model.upscale_factor})" if args.weights else "x4 paper model (random initialisation)"
    lines, results = speed_table(model, sizes, repeats, args.bf16)
    print(f"{what}, {results['flops_per_px'] / 1e6:.2f} MFLOP per LR pixel, LR: the Y of the astronaut photo, best "
          "of the interleaved repeats; each cell: best time, speed-up over eager fp32 NCHW, achieved FLOP/s (% of "
          "the matmul peak of the precision the row computes in: fp32 or bf16).\n")
    print("\n".join(lines))
    print(f"\nMatmul peaks (square, best of before and after the timings): fp32 {results['fp32_peak']:.0f} GFLOP/s, "
          f"bf16 {results['bf16_peak']:.1f} GFLOP/s. Preparing the fast paths (copies, ONNX export): "
          f"{results['prepare_s']:.1f} s once per model.")
    for name, seconds in results["openvino_compile_s"].items():
        print(f"{name}: read and compile {seconds:.1f} s once (not in the rows' times).")
    print()
    ratios = engine_ratio_lines(results, sizes)
    if ratios:
        print("\n".join(ratios) + "\n")
    cold = 256 if 256 in sizes else sizes[-1]
    print(f"A fresh process, first photo ({cold}x{cold} LR):\n")
    print("\n".join(cold_first_image(cold, args.weights)) + "\n")
    print("\n".join(scale_table(64 if args.quick else 128)))
    print(f"\nLoad average at end: {load()}.")


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    main()
