"""Tests for metrics: PSNR/SSIM definitions (against a hand-written MATLAB-style SSIM), cropping and score_image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skdata

from srdensenet import imgproc, metrics


def _ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m: 11x11 Gaussian (sigma 1.5) window, 'valid' filtering, K1 0.01, K2 0.03, L 255."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def test_psnr_known_value_and_crop():
    hr = np.full((20, 20), 100.0)
    sr = hr + 5.0
    assert metrics.psnr_y(sr, hr, 0) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    sr[:2, :] = 0  # border damage is cropped away
    assert metrics.psnr_y(sr, hr, 2) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    assert metrics.psnr_y(hr, hr, 2) == math.inf
    with pytest.raises(ValueError):
        metrics.psnr_y(hr, hr[:-1], 0)
    with pytest.raises(ValueError):
        metrics.psnr_y(hr, hr, 10)


def test_ssim_matches_reference_implementation():
    hr = imgproc.y_channel(skdata.astronaut()[100:150, 200:246])
    sr = np.floor(hr + np.random.default_rng(0).normal(0, 6, hr.shape) + 0.5)
    assert metrics.ssim_y(sr, hr, 3) == pytest.approx(_ref_ssim(sr[3:-3, 3:-3], hr[3:-3, 3:-3]), abs=1e-10)
    assert metrics.ssim_y(hr, hr, 3) == pytest.approx(1.0)


def test_score_image_rgb_and_y():
    hr = imgproc.mod_crop(skdata.chelsea(), 3)
    sr = imgproc.bicubic_upscale(imgproc.make_lr(hr, 3), 3)
    psnr, ssim = metrics.score_image(sr, hr, 3)
    y_hr, y_sr = imgproc.y_channel(hr), imgproc.y_channel(sr)
    assert psnr == pytest.approx(metrics.psnr_y(y_sr, y_hr, 3))
    assert ssim == pytest.approx(metrics.ssim_y(y_sr, y_hr, 3))
    assert 20 < psnr < 45 and 0.5 < ssim < 1
    # A model's Y output in [0, 1], quantised as the protocol requires
    y_model = imgproc.quantize_uint8(y_sr / 255.0)
    psnr_y_only, _ = metrics.score_image(y_model, hr, 3)
    assert psnr_y_only == pytest.approx(metrics.psnr_y(y_model.astype(np.float64), y_hr, 3))
    with pytest.raises(TypeError):
        metrics.score_image(y_sr / 255.0, hr, 3)


def test_protocol_is_json():
    text = json.dumps(metrics.PROTOCOL)
    assert "matlab" in text.lower() and json.loads(text)["version"] == 1
