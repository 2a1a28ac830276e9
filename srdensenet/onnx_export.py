"""ONNX export with dynamic batch, height and width, and its parity check against PyTorch (cli/export_onnx.py is
the command).

The graph maps the Y channel in [0, 1], shape (N, 1, H, W), to (N, 1, sH, sW), like ``SRDenseNet.forward``
(input "input", output "output"); the model's constructor arguments are stored as metadata ("arch", JSON). The file
is written atomically. With onnxruntime installed, the export is run at two input sizes and the largest absolute
difference to PyTorch (fp32) is measured (``parity``); the command fails above PARITY_TOLERANCE.

Exporter: the TorchScript-based one (``dynamo=False``). The torch.export-based default needs ``onnxscript``, which this
project does not depend on; the legacy exporter handles this model (convolutions, transposed convolutions,
concatenations) with dynamic spatial axes.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings

import numpy as np
import torch
from torch import nn

from .choices import ONNX_OPSET
from .fileio import write_bytes_atomic

DEFAULT_OPSET = ONNX_OPSET
PARITY_TOLERANCE = 1e-4


def onnx_bytes(module: nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET,
               metadata: dict[str, str] | None = None) -> bytes:
    """Serialized ONNX model of ``module`` (one NCHW input "input", one output "output", dynamic N, H and W)."""
    import onnx

    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": {0: "batch", 2: "out_height", 3: "out_width"}})
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def model_onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """The export of an SRDenseNet (fp32, CPU), its constructor arguments as metadata, as ``export_model`` writes it."""
    cpu = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays as it is
    arch = getattr(cpu, "arch", None)
    metadata = {"arch": json.dumps(arch)} if arch else {}
    return onnx_bytes(cpu, torch.rand(1, 1, 16, 16), opset, metadata)


def export_model(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> None:
    """Export an SRDenseNet (fp32, CPU) to ``path`` atomically."""
    write_bytes_atomic(path, model_onnx_bytes(model, opset))


def parity(model: nn.Module, path: str | os.PathLike, sizes=((1, 24, 24), (2, 19, 33)), seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over random inputs of the given (N, H, W) sizes (fp32, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n, h, w in sizes:
        x = torch.rand(n, 1, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} for input {(n, 1, h, w)}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
