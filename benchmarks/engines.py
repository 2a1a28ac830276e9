"""OpenVINO, an engine a user might pick instead of this project's paths, run on the project's own ONNX export of
the model (``export_onnx.model_onnx_bytes``, what export_onnx.py writes), for the benchmarks' side-by-side rows.

Optional: ``pip install -r requirements-bench.txt``. ONNX Runtime is timed through the project's own backend
(``predict_y(..., backend="onnxruntime")``: the same exporter, trunk and upsampler as two graphs).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from srdensenet.model import SRDenseNet
from srdensenet.onnx_export import model_onnx_bytes

# OpenVINO's inference-precision hints, by the name the benchmarks give their rows.
OPENVINO_HINTS = {"OpenVINO f32": "f32", "OpenVINO bf16 hint": "bf16"}
OPENVINO_MISSING = "OpenVINO rows skipped: openvino is not installed (pip install -r requirements-bench.txt)."


def openvino_available() -> bool:
    """Whether OpenVINO and the ONNX exporter's package are installed (requirements-bench.txt)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoModel:
    """An ONNX export of the model compiled by OpenVINO for the CPU: (N, 1, H, W) float32 Y -> (N, 1, sH, sW).

    ``hint``: the inference-precision hint, "f32" or "bf16"; OpenVINO decides what it runs and ``runs_in`` says what
    it chose ("bf16" or "f32"; without native bf16 it runs f32). Latency mode, on as many threads as torch uses, so
    that both engines get the same cores. ``compile_s``: reading the export and compiling, which calls do not repeat.
    """

    def __init__(self, graph: bytes, hint: str, threads: int | None = None) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        start = time.perf_counter()
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(graph), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.compile_s = time.perf_counter() - start
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.runs_in = "bf16" if chosen == ov.Type.bf16 else "f32" if chosen == ov.Type.f32 else str(chosen)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: np.ascontiguousarray(y.detach().cpu().numpy(), dtype=np.float32)})
        # The output tensor is the request's own buffer, overwritten by the next call: copy it out.
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def openvino_models(model: SRDenseNet) -> dict[str, OpenVinoModel]:
    """OpenVINO in f32 and under its bf16 hint, compiled, by row name; a name says what OpenVINO runs where that is
    not the hint. Empty where OpenVINO is not installed; a hint it cannot compile here is left out, with one line."""
    if not openvino_available():
        return {}
    graph, models = model_onnx_bytes(model), {}
    for name, hint in OPENVINO_HINTS.items():
        try:
            engine = OpenVinoModel(graph, hint)
        except RuntimeError as error:
            # e.g. under ONEDNN_MAX_CPU_ISA=AVX2, which OpenVINO's oneDNN obeys, its bf16 hint finds no
            # deconvolution and compiling fails instead of falling back to f32: that row is left out, the others run.
            print(f"{name} row skipped: OpenVINO could not compile the model here "
                  f"({str(error).strip().splitlines()[-1][:160]})")
            continue
        models[name if engine.runs_in == hint else f"{name} (runs {engine.runs_in} here)"] = engine
    return models
