"""Export a training checkpoint as a release file: one set of weights (EMA when present), fp16 by default.

    python scripts/export_weights.py --checkpoint runs/release_x4/checkpoints/best.pth --output weights/x.pth

The result is a normal checkpoint of this project (loads with weights_only=True, knows its architecture) without
optimiser state, so it is small; fp16 storage halves it again and loads into the fp32 model unchanged in shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402

KEEP = ("epoch", "step", "best_psnr", "valid_scores", "config", "world_size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights instead of fp16")
    args = parser.parse_args()
    try:
        state = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(state, prefer_ema=True, source=args.checkpoint)
        extra = {k: state[k] for k in KEEP if k in state}
        save_checkpoint(args.output, model, half=not args.fp32, exported_from=str(args.checkpoint),
                        used_ema=bool(state.get("ema")) or state.get("used_ema", False), **extra)
        model_from_checkpoint(args.output)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    size = Path(args.output).stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB, {'fp32' if args.fp32 else 'fp16'}, "
          f"{'EMA' if state.get('ema') or state.get('used_ema') else 'raw'} weights, {model.arch})")


if __name__ == "__main__":
    main()
