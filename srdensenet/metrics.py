"""PSNR and SSIM on the Y channel, exactly as the SR literature reports them (docs/protocol.md, steps 4-5).

Typical use, with ``sr`` a model's Y output in [0, 1] and ``hr`` the mod-cropped uint8 RGB ground truth::

    psnr, ssim = score_image(imgproc.quantize_uint8(sr), hr, scale)
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from . import imgproc

# Written into every results JSON so a number can always be traced to the protocol that produced it.
PROTOCOL = {
    "name": "matlab-bicubic-y",
    "version": 1,
    "hr": "RGB (grayscale replicated to 3 channels), mod-cropped to a multiple of the scale",
    "lr": "MATLAB imresize bicubic (Keys a=-0.5, antialiased) of HR as doubles in [0,1] by 1/scale, quantised to uint8",
    "model_input": "Y of the uint8 LR, MATLAB rgb2ycbcr on doubles (65.481/128.553/24.966), not rounded, fed as Y/255",
    "sr_output": "clamped to [0,1] and quantised to uint8 (floor(255*x+0.5)) before scoring",
    "channel": "Y only (SR: the quantised uint8 Y, or Y of a uint8 RGB SR image; HR: unrounded Y of the uint8 HR)",
    "crop_border": "scale pixels on every side",
    "psnr": "10*log10(255^2/MSE), float64",
    "ssim": "skimage structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, "
    "data_range=255): 11x11 Gaussian, K1=0.01, K2=0.03, mean over the valid region",
    "bicubic_baseline": "uint8 RGB LR upscaled with the same MATLAB imresize, quantised to uint8, then Y",
    "set_score": "mean of the per-image scores",
}


# The side of SSIM's Gaussian window: 2 * round(3.5 sigma) + 1 with sigma 1.5 (PROTOCOL["ssim"]).
SSIM_WINDOW = 11


def smallest_scored_side(scale: int) -> int:
    """The smallest HR side (a multiple of ``scale``, as mod-cropped) the protocol can score at x``scale``: ``scale``
    pixels are cropped from each side, and SSIM's window must fit in what is left."""
    return -(-(2 * scale + SSIM_WINDOW) // scale) * scale


def _crop_pair(sr_y: np.ndarray, hr_y: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    sr_y = np.asarray(sr_y, dtype=np.float64)
    hr_y = np.asarray(hr_y, dtype=np.float64)
    if sr_y.shape != hr_y.shape or sr_y.ndim != 2:
        raise ValueError(f"expected two HxW Y images of the same size, got {sr_y.shape} and {hr_y.shape}")
    if crop_border < 0 or 2 * crop_border >= min(sr_y.shape):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {sr_y.shape} image")
    if crop_border:
        c = crop_border
        sr_y, hr_y = sr_y[c:-c, c:-c], hr_y[c:-c, c:-c]
    return sr_y, hr_y


def psnr_y(sr_y: np.ndarray, hr_y: np.ndarray, crop_border: int) -> float:
    """PSNR in dB of two Y images on the [0, 255] scale, peak 255, after cropping ``crop_border`` from each side.

    Identical images give ``inf``.
    """
    sr_y, hr_y = _crop_pair(sr_y, hr_y, crop_border)
    mse = float(np.mean((sr_y - hr_y) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def ssim_y(sr_y: np.ndarray, hr_y: np.ndarray, crop_border: int) -> float:
    """SSIM (Wang et al. 2004) of two Y images on the [0, 255] scale after cropping ``crop_border`` from each side."""
    sr_y, hr_y = _crop_pair(sr_y, hr_y, crop_border)
    # These arguments make scikit-image compute exactly MATLAB's ssim.m reference: 11x11 Gaussian window (truncate
    # 3.5 sigma), population covariances, and the mean over the region where the window fits.
    return float(
        structural_similarity(
            sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0
        )
    )


def score_image(sr_uint8: np.ndarray, hr_rgb_uint8: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of one SR result against its mod-cropped HR, with crop = ``scale``.

    ``sr_uint8`` is either a uint8 RGB image (HxWx3, e.g. the bicubic baseline or a colour SR output) or the
    model's quantised uint8 Y (HxW). Float input is refused on purpose: the protocol scores quantised outputs, and
    a float Y could be on either the [0, 1] or the [0, 255] scale — quantise with ``imgproc.quantize_uint8`` first.
    """
    sr = np.asarray(sr_uint8)
    if sr.dtype != np.uint8:
        raise TypeError(f"score_image: expected a uint8 SR image (quantise it first), got {sr.dtype}")
    if sr.ndim == 3:
        sr_y = imgproc.y_channel(sr)
    elif sr.ndim == 2:
        sr_y = sr.astype(np.float64)
    else:
        raise ValueError(f"score_image: expected HxW (Y) or HxWx3 (RGB), got shape {sr.shape}")
    hr_y = imgproc.y_channel(hr_rgb_uint8)
    return psnr_y(sr_y, hr_y, scale), ssim_y(sr_y, hr_y, scale)
