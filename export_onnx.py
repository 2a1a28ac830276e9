"""Export a checkpoint to ONNX with dynamic batch, height and width, and check it against PyTorch.

    python export_onnx.py --weights weights/srdensenet_x4_all_paper.safetensors --output srdensenet_x4.onnx [--opset 17]

The graph maps the Y channel in [0, 1], shape (N, 1, H, W), to (N, 1, sH, sW), like ``SRDenseNet.forward``
(input "input", output "output"); the model's constructor arguments are stored as metadata ("arch", JSON). The file
is written atomically. With onnxruntime installed, the export is run at two input sizes and the largest absolute
difference to PyTorch (fp32) is printed; above 1e-4 the script fails.

Exporter: the TorchScript-based one (``dynamo=False``). The torch.export-based default needs ``onnxscript``, which this
project does not depend on; the legacy exporter handles this model (convolutions, transposed convolutions,
concatenations) with dynamic spatial axes.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn

from checkpoint import CheckpointError, model_from_checkpoint
from fileio import OutputError, exit_quietly_on_broken_pipe, write_bytes_atomic

DEFAULT_OPSET = 17
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--weights", required=True, help="checkpoint (EMA weights preferred when present)")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    args = parser.parse_args(argv)
    try:
        model = model_from_checkpoint(args.weights)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        export_model(model, args.output, args.opset)
    except ImportError as error:
        print(f"error: ONNX export needs the onnx package ({error}); pip install -r requirements-dev.txt",
              file=sys.stderr)
        return 1
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as error:
        print(f"error: {args.output}: export failed: {str(error).splitlines()[0] if str(error) else error!r}",
              file=sys.stderr)
        return 1
    print(f"wrote {args.output} (x{model.upscale_factor}, opset {args.opset}, dynamic batch/height/width)")
    if args.no_check:
        return 0
    try:
        diff = parity(model, args.output)
    except ImportError:
        print("onnxruntime not installed: parity check skipped")
        return 0
    print(f"ONNX Runtime vs PyTorch (fp32, inputs 1x24x24 and 2x19x33): max abs diff {diff:.2e}")
    if diff > PARITY_TOLERANCE:
        print(f"error: parity check failed ({diff:.2e} > {PARITY_TOLERANCE:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
