"""Figures for the README, from the shipped weights and the release run's log (no matplotlib needed).

    python scripts/make_figure.py                   # assets/figure_x4.png and assets/release_x4/curve.png

figure_x4.png: LR (nearest-neighbour, to scale) / bicubic / SRDenseNet / HR crops with Y-PSNR under each, for the
Set5 butterfly (srdensenet/golden) and two embedded scikit-image photos. curve.png: validation PSNR against training
steps, read from assets/release_x4/log.txt (the log train.py wrote during the release run).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from srdensenet.fileio import exit_quietly_on_broken_pipe
from srdensenet.image_files import read_image, write_image
from srdensenet.imgproc import bicubic_upscale, make_lr, mod_crop, y_channel
from srdensenet.inference import load_model, upscale
from srdensenet.metrics import psnr_y
from srdensenet.protocol_check import BUTTERFLY
from srdensenet.system_memory import enable_huge_pages

ROOT = Path(__file__).resolve().parent.parent

# (name, image loader, crop centre as fractions of height/width)
EXAMPLES = [
    ("Set5 butterfly", lambda: read_image(BUTTERFLY), (0.45, 0.55)),
    ("chelsea", skimage.data.chelsea, (0.45, 0.45)),
    ("coffee", skimage.data.coffee, (0.35, 0.45)),
]
CROP = 96  # HR pixels per panel side
PANEL = 192  # displayed pixels per panel side


def label(panel: np.ndarray, text: str) -> np.ndarray:
    """Panel with a white caption strip underneath."""
    strip = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, strip], axis=0)


def example_row(model, name: str, hr: np.ndarray, centre: tuple[float, float], scale: int) -> np.ndarray:
    hr = np.ascontiguousarray(mod_crop(hr, scale))
    lr = make_lr(hr, scale)
    bicubic = bicubic_upscale(lr, scale)
    sr = upscale(model, lr, precision="fp32")
    top = int(centre[0] * hr.shape[0]) // scale * scale - CROP // 2
    left = int(centre[1] * hr.shape[1]) // scale * scale - CROP // 2
    window = (slice(top, top + CROP), slice(left, left + CROP))
    lr_window = (slice(top // scale, (top + CROP) // scale), slice(left // scale, (left + CROP) // scale))
    hr_y = y_channel(hr)
    panels = [
        (lr[lr_window], f"{name}: LR x{scale}"),
        (bicubic[window], f"bicubic {psnr_y(y_channel(bicubic), hr_y, scale):.2f} dB"),
        (sr[window], f"SRDenseNet {psnr_y(y_channel(sr), hr_y, scale):.2f} dB"),
        (hr[window], "HR"),
    ]
    row = [label(cv2.resize(p, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST), text) for p, text in panels]
    return np.concatenate(row, axis=1)


def training_curve(log: Path, out: Path) -> None:
    """PSNR of the validation set against optimiser steps, drawn with OpenCV."""
    points = [(int(m[1]), float(m[2]), float(m[3])) for m in
              re.finditer(r"step (\d+) .*?\| \S+ ([\d.]+) dB / [\d.]+ \(bicubic ([\d.]+)\)", log.read_text())]
    if not points:
        raise SystemExit(f"{log}: no validation lines found")
    steps, psnr, bicubic = (np.array(v) for v in zip(*points))
    width, height, margin = 640, 360, 60
    image = np.full((height, width, 3), 255, np.uint8)
    lo, hi = min(psnr.min(), bicubic.min()) - 0.2, psnr.max() + 0.2
    x = lambda s: int(margin + (width - 2 * margin) * s / steps.max())  # noqa: E731
    y = lambda p: int(height - margin - (height - 2 * margin) * (p - lo) / (hi - lo))  # noqa: E731
    cv2.rectangle(image, (margin, margin), (width - margin, height - margin), (0, 0, 0), 1)
    for value in np.linspace(lo, hi, 5):
        cv2.putText(image, f"{value:.2f}", (4, y(value) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for s in np.linspace(0, steps.max(), 5):
        cv2.putText(image, f"{int(s)}", (x(s) - 15, height - margin + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.line(image, (x(0), y(bicubic[0])), (x(steps.max()), y(bicubic[0])), (128, 128, 128), 1, cv2.LINE_AA)
    curve = np.array([[x(s), y(p)] for s, p in zip(steps, psnr)], np.int32)
    cv2.polylines(image, [curve], False, (200, 60, 0), 2, cv2.LINE_AA)
    for point in curve:
        cv2.circle(image, tuple(int(v) for v in point), 3, (200, 60, 0), -1, cv2.LINE_AA)
    cv2.putText(image, "validation PSNR (Y, dB) vs optimiser steps - release x4 run; grey: bicubic",
                (margin, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    write_image(out, image[:, :, ::-1].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "weights" / "srdensenet_x4_all_paper.safetensors"))
    parser.add_argument("--output", default=str(ROOT / "assets" / "figure_x4.png"))
    parser.add_argument("--log", default=str(ROOT / "assets" / "release_x4" / "log.txt"))
    parser.add_argument("--curve", default=str(ROOT / "assets" / "release_x4" / "curve.png"))
    args = parser.parse_args()
    model = load_model(args.weights, device="cpu")
    rows = [example_row(model, name, load(), centre, model.upscale_factor) for name, load, centre in EXAMPLES]
    write_image(args.output, np.concatenate(rows, axis=0))
    print(f"wrote {args.output}")
    training_curve(Path(args.log), Path(args.curve))
    print(f"wrote {args.curve}")


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    exit_quietly_on_broken_pipe(main)
