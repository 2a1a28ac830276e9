"""The two halves of `auto`'s fast path timed apart, each beside OpenVINO on the same half: where the path gains or
loses against that engine.

    python benchmarks/bench_parts.py                        # 256x256 LR, the shipped x4 weights
    python benchmarks/bench_parts.py --sizes 128 256 --repeats 6

The trunk (LR Y -> features) and the upsampler (features -> HR Y, over the windows ``tiling.forward_tile`` cuts, so
with their margins) of the runner ``auto`` resolves to here. OpenVINO compiles the project's ONNX export of the same
half (as the ONNX Runtime backend exports them), under its bf16 hint where `auto` is bf16 and f32 otherwise, and
runs the whole half at once. Interleaved, best of the repeats, on the Y of scikit-image's astronaut photo. Without
OpenVINO (``pip install -r requirements-bench.txt``) only the project's rows are timed. Under
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2`` both engines run AVX2 kernels.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import engines
import torch
from bench_inference import photo_lr
from machine import describe_machine, load

from srdensenet import imgproc, inference, runners, tiling
from srdensenet.model import SRDenseNet
from srdensenet.onnx_export import onnx_bytes
from srdensenet.system_memory import enable_huge_pages

SHIPPED_X4 = Path(__file__).resolve().parent.parent / "weights" / "srdensenet_x4_all_paper.safetensors"


class _GivenFeatures:
    """A runner whose trunk returns features computed beforehand: forward_tile then runs only the upsampler."""

    def __init__(self, runner, features: torch.Tensor) -> None:
        self.runner, self.features, self.bucketed = runner, features, runner.bucketed

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.features

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        return self.runner.upsampler(features, padded)


def part_functions(model: SRDenseNet, size: int) -> tuple[str, dict]:
    """(auto's precision, {row name: a function computing that half}) for a size x size LR photo."""
    y = torch.from_numpy(imgproc.y_channel(photo_lr(size)) / 255.0).float()[None, None]
    precision = runners.resolve_plan("auto", torch.device("cpu"))[1]
    runner = runners.prepared_runner(model, "torch", precision)
    with torch.no_grad():
        features = runner.trunk(y)
    out = torch.empty(1, 1, size * model.upscale_factor, size * model.upscale_factor)
    given = _GivenFeatures(runner, features)
    rows = {f"trunk, `auto` ({precision})": lambda: runner.trunk(y),
            f"upsampler, `auto` ({precision})": lambda: tiling.forward_tile(given, y, (0, size, 0, size), out, model)}
    if not engines.openvino_available():
        print(engines.OPENVINO_MISSING)
        return precision, rows
    cpu = copy.deepcopy(model).float().cpu().eval()
    hint = "bf16" if runner.reduced else "f32"
    for name, method, example in (("trunk", "trunk", y), ("upsampler", "upsample_features", features.float())):
        engine = engines.OpenVinoModel(onnx_bytes(runners.ModelPart(cpu, method), example), hint)
        rows[f"{name}, OpenVINO {hint} hint (runs {engine.runs_in})"] = lambda e=engine, x=example: e(x)
    return precision, rows


def part_times(model: SRDenseNet, size: int, repeats: int) -> dict[str, float]:
    """Best seconds of every row, rows interleaved (the first call of each, which prepares, is not timed)."""
    _, rows = part_functions(model, size)
    best = {}
    with torch.no_grad():
        for function in rows.values():
            function()
        for _ in range(repeats):
            for name, function in rows.items():
                start = time.perf_counter()
                function()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="LR sides (default 256)")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved repeats, best kept (default 4)")
    parser.add_argument("--weights", default=str(SHIPPED_X4), help="weights to time (default: the shipped x4)")
    args = parser.parse_args()
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    print(f"**Hardware:** {describe_machine()}. Load average at start: {load()}.\n")
    model = inference.load_model(args.weights, "cpu")
    print("| half | " + " | ".join(f"{size}x{size} LR" for size in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    times = {size: part_times(model, size, args.repeats) for size in args.sizes}
    for name in times[args.sizes[0]]:
        print(f"| {name} | " + " | ".join(f"{times[size][name]:.3f} s" for size in args.sizes) + " |")
    print(f"\nLoad average at end: {load()}.")


if __name__ == "__main__":
    main()
