"""Convert a checkpoint of the reference port (Lornatang/SRDenseNet-PyTorch) into this project's format.

    python scripts/convert_port_weights.py --input port_x4.pth.tar --output weights/port_x4.pth

The port's layers map one to one onto SRDenseNet(layout="port", variant="all"); its concatenation order
(newest block first) is ours too, so no channel is permuted. Both of the port's upsampling layouts are read:
``upsampling.{i}.upsample_block.0.*`` (later versions) and ``upsampling.{2i}.*`` (a Sequential with ReLUs).
The input is opened with ``weights_only=True``: a file that needs more than that is refused.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path

import torch

from srdensenet.checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint, strip_prefixes
from srdensenet.fileio import OutputError, exit_quietly_on_broken_pipe
from srdensenet.limits import ArchError
from srdensenet.model import SRDenseNet
from srdensenet.weights_checks import pickle_verdict, strip_ansi

_RENAMES = [
    (re.compile(r"^conv1\.0\.(weight|bias)$"), lambda m: f"low_level.{m[1]}"),
    (re.compile(r"^dcb(\d+)\.0\.conv(\d+)\.(weight|bias)$"),
     lambda m: f"blocks.{int(m[1]) - 1}.convs.{int(m[2]) - 1}.{m[3]}"),
    (re.compile(r"^conv2\.(weight|bias)$"), lambda m: f"bottleneck.{m[1]}"),
    (re.compile(r"^upsampling\.(\d+)\.upsample_block\.0\.(weight|bias)$"), lambda m: f"upsample.{m[1]}.{m[2]}"),
    (re.compile(r"^upsampling\.(\d+)\.(weight|bias)$"), lambda m: f"upsample.{int(m[1]) // 2}.{m[2]}"),
    (re.compile(r"^conv3\.(weight|bias)$"), lambda m: f"reconstruction.{m[1]}"),
]


def rename_port_key(key: str) -> str:
    for pattern, rename in _RENAMES:
        match = pattern.match(key)
        if match:
            return rename(match)
    raise CheckpointError(f"unexpected tensor {key!r}: not a layer of the reference port's SRDenseNet")


def convert_port_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (arch, state_dict) for SRDenseNet(**arch) from the port's state dict."""
    ours = {rename_port_key(k): v for k, v in strip_prefixes(state_dict).items()}
    upsample = sorted({int(k.split(".")[1]) for k in ours if k.startswith("upsample.")})
    if not upsample:
        raise CheckpointError("no upsampling layers found: not an SRDenseNet checkpoint of the port")
    kernel = ours["upsample.0.weight"].shape[-1]
    upscale_factor = 3 if (len(upsample) == 1 and kernel == 3) else 2 ** len(upsample)
    num_blocks = len({k.split(".")[1] for k in ours if k.startswith("blocks.")})
    layers = len({k.split(".")[3] for k in ours if k.startswith("blocks.0.convs.")})
    arch = dict(upscale_factor=upscale_factor, variant="all", layout="port", num_blocks=num_blocks,
                layers_per_block=layers, growth_rate=ours["blocks.0.convs.0.weight"].shape[0],
                num_features=ours["low_level.weight"].shape[0],
                bottleneck_features=ours["bottleneck.weight"].shape[0])
    return arch, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the port's .pth / .pth.tar file")
    parser.add_argument("--output", required=True, help="where to write the converted checkpoint")
    args = parser.parse_args()
    try:
        try:
            raw = torch.load(args.input, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{args.input}: no such file") from None
        except pickle.UnpicklingError as error:  # code in its pickle is named; torch's advice is not repeated
            verdict = pickle_verdict(Path(args.input), strip_ansi(str(error)))
            raise CheckpointError(f"{args.input}: {verdict or 'not readable as tensors and plain data (corrupt?)'}"
                                  ) from None
        except Exception as error:  # a corrupt file: say so, never unpickle objects
            raise CheckpointError(f"{args.input}: cannot be read with weights_only=True: "
                                  f"{strip_ansi(str(error)).strip().splitlines()[0][:200]}") from None
        state_dict = raw.get("state_dict", raw) if isinstance(raw, dict) else None
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{args.input}: holds no state dict")
        arch, weights = convert_port_state_dict(state_dict)
        try:
            model = SRDenseNet(**arch)  # sizes read from the tensors' shapes: checked before anything is built
        except ArchError as error:
            raise CheckpointError(f"{args.input}: {error}") from None
        model.load_state_dict(weights, strict=True)
        save_checkpoint(args.output, model, converted_from=str(args.input))
        model_from_checkpoint(args.output)  # prove it loads on its own
    except (CheckpointError, OutputError) as error:
        sys.exit(f"error: {error}")
    print(f"converted {args.input} -> {args.output} ({arch})")


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
