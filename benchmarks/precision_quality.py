"""What the fast paths cost in quality: Y-PSNR of each precision against the fp32 reference, photo by photo.

    python benchmarks/precision_quality.py --photos data/photo_pool/images --limit 24
    python benchmarks/precision_quality.py --photos DIR --precisions bf16 fp32-cl --crop 480

Each photo (the centre crop of ``--crop`` HR pixels, or the whole photo with --crop 0) goes through the evaluation
protocol (docs/protocol.md: mod-crop, MATLAB-bicubic LR, Y, uint8 SR, border crop) with the given weights, once per
precision; the table gives PSNR(precision) - PSNR(fp32) in dB. Issue target for the fast paths: at most 0.02 dB on
every photo and 0.01 dB on average. No download: point --photos at any folder of photos (the photo pool, your own).

With OpenVINO installed (``pip install -r requirements-bench.txt``), OpenVINO f32 and OpenVINO under its bf16
inference-precision hint, on the project's ONNX export, are scored the same way beside the project's paths: the
bf16 hint also rounds the first and last layers, so its loss reads beside the speed comparison of bench_inference.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import engines
import numpy as np
import torch

from srdensenet import image_files, imgproc, inference, metrics
from srdensenet.cli.upscale import images_under
from srdensenet.system_memory import enable_huge_pages


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return image
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[top:top + size, left:left + size]


def scores(model, hr: np.ndarray, precisions: list[str], others: dict | None = None) -> dict[str, float]:
    """Y-PSNR of the model at each precision, "fp32" first, and of each of ``others`` (name -> a callable mapping an
    (N, 1, H, W) Y tensor to its SR, such as an engines.OpenVinoModel)."""
    scale = model.upscale_factor
    hr = imgproc.mod_crop(hr, scale)
    lr_y = (imgproc.y_channel(imgproc.make_lr(hr, scale)) / 255.0).astype(np.float32)
    hr_y = imgproc.y_channel(hr)
    out = {}
    for precision in ["fp32", *precisions]:
        sr_y = imgproc.quantize_uint8(inference.predict_y(model, lr_y, precision=precision))  # as evaluation.py
        out[precision] = metrics.psnr_y(sr_y, hr_y, scale)
    for name, run in (others or {}).items():
        sr_y = imgproc.quantize_uint8(run(torch.from_numpy(lr_y)[None, None])[0, 0].numpy())
        out[name] = metrics.psnr_y(sr_y, hr_y, scale)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--weights", default="weights/srdensenet_x4_all_paper.safetensors")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32-cl"], help="paths compared with fp32")
    parser.add_argument("--crop", type=int, default=480, help="centre crop in HR pixels (0: whole photos)")
    parser.add_argument("--limit", type=int, default=0, help="at most N photos, spread over the sorted list")
    args = parser.parse_args()

    photos = images_under(Path(args.photos), None)
    if not photos:
        sys.exit(f"error: {args.photos}: no photos found")
    if args.limit and len(photos) > args.limit:
        photos = [photos[round(i * (len(photos) - 1) / (args.limit - 1))] for i in range(args.limit)]
    model = inference.load_model(args.weights, "cpu")
    others = engines.openvino_models(model)
    if not others:
        print(engines.OPENVINO_MISSING, file=sys.stderr)
    compared = [*args.precisions, *others]
    rows = []
    for path in photos:
        hr = centre_crop(image_files.read_image(path), args.crop)
        result = scores(model, np.ascontiguousarray(hr), args.precisions, others)
        rows.append((path.name, result))
        deltas = ", ".join(f"{p} {result[p] - result['fp32']:+.4f}" for p in compared)
        print(f"  {path.name}: fp32 {result['fp32']:.3f} dB; {deltas}", file=sys.stderr, flush=True)

    print(f"{len(rows)} photos from {args.photos}, centre crops of {args.crop or 'whole'} HR px, x"
          f"{model.upscale_factor}, weights {args.weights}; PSNR(precision) - PSNR(fp32 reference), Y, dB.\n")
    print("| path | worst abs | mean abs | mean (signed) |\n|---|---|---|---|")
    for precision in compared:
        deltas = [r[precision] - r["fp32"] for _, r in rows]
        print(f"| {precision} | {max(abs(d) for d in deltas):.4f} | {statistics.mean(abs(d) for d in deltas):.4f} | "
              f"{statistics.mean(deltas):+.4f} |")


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    main()
