"""Export a training checkpoint as a release file: one set of weights (EMA when present), fp16 by default.

    python scripts/export_weights.py --checkpoint runs/release_x4/checkpoints/best.pth --output weights/x.safetensors

The result holds the model's constructor arguments and a format version in its safetensors header (so it rebuilds
the model on its own) and no optimiser state, so it is small; fp16 storage halves it again and loads into the fp32
model unchanged in shape. An output ending in .pth writes this project's older release format instead. A release
that is already exported (e.g. an old .pth release) can be given as --checkpoint to convert it: its stored values
are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from srdensenet.checkpoint import CheckpointError, export_weights, load_checkpoint, model_from_checkpoint
from srdensenet.fileio import OutputError, exit_quietly_on_broken_pipe, hold_output
from srdensenet.folder_lock import FolderBusyError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pth) or release file to export")
    parser.add_argument("--output", required=True, help="release file to write (.safetensors; .pth: older format)")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights instead of fp16")
    args = parser.parse_args()
    try:
        with hold_output(args.output, "--output", ", or choose another --output"):
            state = load_checkpoint(args.checkpoint)
            model = export_weights(state, args.output, source=args.checkpoint, half=not args.fp32)
            written = load_checkpoint(args.output)
            model_from_checkpoint(written, source=args.output)  # prove it loads on its own
    except FolderBusyError as error:  # another process exports to the same file
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (CheckpointError, OutputError) as error:
        sys.exit(f"error: {error}")
    size = Path(args.output).stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB, {'fp32' if args.fp32 else 'fp16'}, "
          f"{'EMA' if written.get('used_ema') else 'raw'} weights, {model.arch})")


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
