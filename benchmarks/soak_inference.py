"""Soak check: hundreds of images of mixed sizes and kinds through one process must not grow its memory.

    python benchmarks/soak_inference.py [--images 300] [--weights PATH]

Each image is a random crop (random size) of an embedded scikit-image photo, in a random kind: RGB uint8,
grayscale uint8, RGB uint16, RGBA uint8; every 10th goes through the file path (write, inference.upscale_file,
read back). Tiling is used on every 4th image. Resident memory (VmRSS) is read after every image. PASS when the
median over the last 20 images is within 10% of the median over images 11-30 (after the first images: allocator
pools, the prepared model, the first shapes). Medians, because a single reading swings by up to +-10% with the
large activation buffers the allocator has not yet handed back (measured with the x4 paper model).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import skimage.data

from srdensenet.fileio import write_text_atomic
from srdensenet.image_files import read_image_with_alpha, write_image
from srdensenet.inference import load_model, upscale, upscale_file
from srdensenet.model import SRDenseNet
from srdensenet.system_memory import enable_huge_pages

BASELINE = slice(10, 30)  # images 11-30
FINAL = slice(-20, None)  # the last 20 images


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or its peak (VmHWM) in MiB, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def random_image(rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    h, w = int(rng.integers(8, 97)), int(rng.integers(8, 97))
    top, left = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
    crop = np.ascontiguousarray(photo[top:top + h, left:left + w])
    kind = rng.integers(4)
    if kind == 1:
        return crop[:, :, 1].copy()
    if kind == 2:
        return crop.astype(np.uint16) * 257
    if kind == 3:
        return np.concatenate([crop, np.full((h, w, 1), 200, np.uint8)], axis=2)
    return crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--weights", default="", help="checkpoint (default: a small random x2 model)")
    parser.add_argument("--every", type=int, default=50, help="print RSS after every N images (0: never)")
    parser.add_argument("--trace", default="", help="write the RSS after each image (MiB, one per line) to this file")
    args = parser.parse_args()
    if args.images < 50:
        parser.error(f"--images must be at least 50 (baseline: images 11-30; end: the last 20), got {args.images}")
    model = load_model(args.weights) if args.weights else SRDenseNet(
        2, num_blocks=2, layers_per_block=4, growth_rate=16, num_features=32, bottleneck_features=32).eval()
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    trace = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.images):
            image = random_image(rng, photos)
            tile = 24 if index % 4 == 0 else None
            if index % 10 == 0:
                src, dst = Path(tmp) / f"in_{index}.png", Path(tmp) / f"out_{index}.png"
                write_image(src, image)
                upscale_file(model, src, dst, tile=tile)
                rgb, alpha = read_image_with_alpha(dst)
                src.unlink()
                dst.unlink()
            else:
                out = upscale(model, image, tile=tile)
                assert out.dtype == image.dtype and out.shape[0] == image.shape[0] * model.upscale_factor
            trace.append(rss_mib())
            if args.every and (index + 1) % args.every == 0:
                print(f"  {index + 1} images: RSS {rss_mib():.1f} MiB", flush=True)
    if args.trace:
        write_text_atomic(args.trace, "".join(f"{value:.1f}\n" for value in trace))
    baseline, final = statistics.median(trace[BASELINE]), statistics.median(trace[FINAL])
    growth = final / baseline - 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{args.images} images: RSS median over images 11-30 {baseline:.1f} MiB, over the last 20 {final:.1f} MiB "
          f"({growth * 100:+.1f}%) -> {'PASS' if growth <= 0.10 else 'FAIL'} (limit +10%); single readings "
          f"{min(trace[BASELINE]):.0f}-{max(trace[BASELINE]):.0f} and {min(trace[FINAL]):.0f}-{max(trace[FINAL]):.0f} "
          f"MiB, peak {peak:.0f} MiB")
    sys.exit(0 if growth <= 0.10 else 1)


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    main()
