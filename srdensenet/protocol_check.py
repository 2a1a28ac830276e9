"""The protocol's self-check (``validate.py --self-check``): MATLAB-exact Y, quantisation, the bicubic baseline on the
Set5 butterfly against the published numbers, and SSIM against an independent implementation; PASS/FAIL per line.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import image_files, imgproc, metrics
from .dataset import ValidationImage, ValidationSet
from .evaluation import evaluate, evaluate_predictor

# The Set5 butterfly, shipped with the package (golden/README.md: its source and licence).
BUTTERFLY = Path(__file__).resolve().parent / "golden" / "butterfly.png"
# Bicubic baseline on Set5 butterfly, Y channel, crop = scale, as published (2 decimals; docs/protocol.md,
# Golden numbers).
GOLDEN_BUTTERFLY = {2: 27.43, 3: 24.04, 4: 22.10}


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m written out independently of scikit-image: 11x11 Gaussian window (sigma 1.5,
    normalised), 'valid' filtering, K1 = 0.01, K2 = 0.03, L = 255, mean of the SSIM map."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def filt(x: np.ndarray) -> np.ndarray:  # separable 'valid' Gaussian filter
        x = sliding_window_view(x, 11, axis=0) @ g
        return sliding_window_view(x, 11, axis=1) @ g

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def self_check() -> int:
    results: list[bool] = []

    def report(ok: bool, text: str) -> None:
        results.append(bool(ok))
        print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)

    # MATLAB rgb2ycbcr on doubles (65.481, not 64.738), unrounded; grey is replicated to RGB, so Y = 16 + 219 g/255.
    grey = np.array([[[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0]]], dtype=np.uint8)
    y = imgproc.y_channel(grey)[0]
    report(np.allclose(y, [16.0, 235.0, 16 + 219 * 128 / 255, 16 + 65.481]),
           f"Y = MATLAB rgb2ycbcr on doubles, unrounded: black {y[0]:.3f}, white {y[1]:.3f}, grey128 {y[2]:.4f}, "
           f"red {y[3]:.3f}")
    q = imgproc.quantize_uint8(np.array([0.5 / 255, 1.5 / 255, -0.1, 1.2]))
    report(q.tolist() == [1, 2, 0, 255], f"SR quantisation clamps and rounds half up like MATLAB: {q.tolist()}")

    if not BUTTERFLY.is_file():
        report(False, f"{BUTTERFLY} is missing (the Set5 butterfly the package ships, see docs/protocol.md): "
                      "cannot check the golden numbers")
        print("self-check: FAIL")
        return 1
    for scale, golden in GOLDEN_BUTTERFLY.items():
        vset = ValidationSet("butterfly", BUTTERFLY.parent, scale, (ValidationImage(BUTTERFLY.name, BUTTERFLY, None),))
        bicubic = evaluate(None, [vset], device="cpu").sets["butterfly"]
        psnr = bicubic["bicubic_psnr"]
        report(abs(psnr - golden) <= 0.01 + 1e-9, f"bicubic x{scale} on Set5 butterfly: {psnr:.4f} dB, published "
                                                  f"{golden:.2f} (+-0.01)  [SSIM {bicubic['bicubic_ssim']:.4f}]")
        # The model path (Y in, Y out, quantised) must line up with the baseline: a bicubic-Y "model" scores within
        # the Y-vs-RGB upscaling difference (docs/protocol.md, step 6: up to ~0.015 dB); a one-pixel shift costs
        # decibels.
        model = evaluate_predictor(functools.partial(imgproc.imresize, scale=float(scale)), scale,
                                   [vset]).sets["butterfly"]
        gap = model["psnr"] - psnr
        report(abs(gap) <= 0.02, f"model path x{scale}: bicubic-Y model {model['psnr']:.4f} dB, "
                                 f"{gap:+.4f} dB from the baseline (|gap| <= 0.02)")

    hr = imgproc.mod_crop(image_files.read_image(BUTTERFLY), 4)
    sr_y = imgproc.y_channel(imgproc.bicubic_upscale(imgproc.make_lr(hr, 4), 4))
    hr_y = imgproc.y_channel(hr)
    ours, ref = metrics.ssim_y(sr_y, hr_y, 4), reference_ssim(sr_y[4:-4, 4:-4], hr_y[4:-4, 4:-4])
    report(abs(ours - ref) <= 1e-6, f"SSIM = Wang et al. (11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L 255, valid "
                                    f"mean): {ours:.8f} vs independent {ref:.8f}")
    ok = all(results)
    print(f"self-check: {'PASS' if ok else 'FAIL'} ({sum(results)}/{len(results)} checks)")
    return 0 if ok else 1
