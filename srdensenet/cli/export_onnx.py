"""Export a checkpoint to ONNX with dynamic batch, height and width, and check it against PyTorch.

    python export_onnx.py --weights weights/srdensenet_x4_all_paper.safetensors --output srdensenet_x4.onnx [--opset 17]
    srdensenet export-onnx --output srdensenet_x4.onnx              # the released x4 weights

With onnxruntime installed, the export is run at two input sizes and the largest absolute difference to PyTorch
(fp32) is printed; above 1e-4 the command fails (onnx_export.py holds the export itself). Exit codes: docs/errors.md
(2: --weights names no file; 1: the export or its check failed, or the onnx package is missing).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..choices import ONNX_OPSET as DEFAULT_OPSET
from ..fileio import OutputError
from ..released import default_weights
from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Stopped, stoppable
from .options import missing_package


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--weights", help="checkpoint (EMA weights preferred when present); default: the released x4 "
                        "weights")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    args = parser.parse_args(argv)
    if args.weights is not None and not os.path.exists(args.weights):
        print(f"error: --weights {args.weights}: no such file or folder", file=sys.stderr)
        return EXIT_USAGE
    missing = missing_package("ONNX export", ("onnx",))
    if missing:
        print(f"error: {missing} (and onnxruntime for the parity check: pip install onnx onnxruntime)",
              file=sys.stderr)
        return EXIT_FAILED
    with stoppable():
        try:
            return _export(args)
        except Stopped as stop:  # the file is written whole or not at all (fileio.atomic_write)
            print(f"stopped by {stop.what}: nothing was written", file=sys.stderr)
            return stop.code


def _export(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError, model_from_checkpoint
    from ..onnx_export import PARITY_TOLERANCE, export_model, parity

    try:
        model = model_from_checkpoint(args.weights or default_weights())
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        export_model(model, args.output, args.opset)
    except ImportError as error:  # a package behind the exporter (the onnx one is checked before)
        name = error.name or "onnx"
        print(f"error: ONNX export needs the optional package {name} ({error}): pip install {name}", file=sys.stderr)
        return EXIT_FAILED
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, RuntimeError, ValueError) as error:
        print(f"error: {args.output}: export failed: {str(error).splitlines()[0] if str(error) else error!r}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.output} (x{model.upscale_factor}, opset {args.opset}, dynamic batch/height/width)")
    if args.no_check:
        return EXIT_OK
    try:
        diff = parity(model, args.output)
    except ImportError:
        print("onnxruntime not installed: parity check skipped (pip install onnxruntime)")
        return EXIT_OK
    print(f"ONNX Runtime vs PyTorch (fp32, inputs 1x24x24 and 2x19x33): max abs diff {diff:.2e}")
    if diff > PARITY_TOLERANCE:
        print(f"error: parity check failed ({diff:.2e} > {PARITY_TOLERANCE:g})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
