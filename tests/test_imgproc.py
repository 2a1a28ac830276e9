"""Tests for imgproc: MATLAB imresize against an independent loop-based reference, the golden bicubic numbers of the
evaluation protocol, colour conversion, and the crop/augment helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata

from srdensenet import image_files, imgproc, metrics
from srdensenet.protocol_check import BUTTERFLY

# ---------------------------------------------------------------------------------------------------------------------
# Reference imresize: a deliberately naive transcription of MATLAB's algorithm, one output sample at a time, sharing no
# code with imgproc. Slow (pure Python), so only used on small crops.
# ---------------------------------------------------------------------------------------------------------------------


def _ref_cubic(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _ref_mirror(j: int, n: int) -> int:
    """1-based index j folded into 1..n by MATLAB's symmetric padding (edge sample repeated)."""
    m = (j - 1) % (2 * n)
    return m + 1 if m < n else 2 * n - m


def _ref_resize_line(line: list[float], out_len: int, scale: float) -> list[float]:
    n = len(line)
    width = 4.0 / scale if scale < 1 else 4.0
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = []
        for j in range(left, left + math.ceil(width) + 2):
            w = scale * _ref_cubic(scale * (u - j)) if scale < 1 else _ref_cubic(u - j)
            taps.append((w, _ref_mirror(j, n)))
        total = sum(w for w, _ in taps)
        out.append(sum(w / total * line[j - 1] for w, j in taps))
    return out


def ref_imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None):
    is_int = img.dtype == np.uint8
    a = img.astype(np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    if scale is not None:
        scales = [scale, scale]
        out_hw = [math.ceil(h * scale), math.ceil(w * scale)]
    else:
        out_hw = list(output_shape)
        scales = [out_hw[0] / h, out_hw[1] / w]
    dims = [0, 1] if scales[0] <= scales[1] else [1, 0]
    for d in dims:
        if d == 0:
            new = np.zeros((out_hw[0], a.shape[1], c))
            for col in range(a.shape[1]):
                for ch in range(c):
                    new[:, col, ch] = _ref_resize_line(list(a[:, col, ch]), out_hw[0], scales[0])
        else:
            new = np.zeros((a.shape[0], out_hw[1], c))
            for row in range(a.shape[0]):
                for ch in range(c):
                    new[row, :, ch] = _ref_resize_line(list(a[row, :, ch]), out_hw[1], scales[1])
        if is_int:  # MATLAB: each pass returns uint8, rounded half away from zero and saturated
            new = np.array([min(255, max(0, math.floor(v + 0.5))) for v in new.ravel()]).reshape(new.shape)
        a = new
    if img.ndim == 2:
        a = a[:, :, 0]
    return a.astype(np.uint8) if is_int else a


# ---------------------------------------------------------------------------------------------------------------------
# imresize
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_crop() -> np.ndarray:
    return skdata.astronaut()[100:124, 180:200]  # 24x20x3 uint8, face and background: real texture


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.7, 1.5])
def test_imresize_float_matches_reference(astronaut_crop, scale):
    img = imgproc.to_float01(astronaut_crop)
    out = imgproc.imresize(img, scale)
    ref = ref_imresize(img, scale)
    assert out.dtype == np.float64
    assert out.shape == ref.shape == (math.ceil(24 * scale), math.ceil(20 * scale), 3)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(10, 31), (30, 9), (7, 7), (24, 20)])
def test_imresize_output_shape_matches_reference(shape):
    img = imgproc.to_float01(skdata.camera()[200:224, 240:260])  # grayscale HxW
    out = imgproc.imresize(img, output_shape=shape)
    np.testing.assert_allclose(out, ref_imresize(img, output_shape=shape), rtol=0, atol=1e-12)
    assert out.shape == shape


@pytest.mark.parametrize("scale", [1 / 3, 1 / 4, 2, 3])
def test_imresize_uint8_matches_reference(scale):
    img = skdata.chelsea()[120:141, 200:218]  # 21x18x3
    out = imgproc.imresize(img, scale)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref_imresize(img, scale))


@pytest.mark.parametrize("kwargs", [dict(scale=4), dict(scale=3), dict(scale=1 / 3), dict(output_shape=(31, 9))])
def test_imresize_rows_equal_the_rows_of_the_whole_result(kwargs):
    # What upscale's strips rely on: each output row is the same sum of the same taps, so bit-identical.
    rng = np.random.default_rng(0)
    for image in (rng.random((13, 17, 2)), skdata.chelsea()[120:141, 200:218], rng.random((20, 7))):
        whole = imgproc.imresize(image, **kwargs)
        n = whole.shape[0]
        for rows in [(0, 1), (0, n), (n // 3, n // 2 + 1), (n - 2, n)]:
            part = imgproc.imresize(image, rows=rows, **kwargs)
            assert part.dtype == whole.dtype
            np.testing.assert_array_equal(part, whole[rows[0]:rows[1]])
    with pytest.raises(ValueError, match="rows"):
        imgproc.imresize(image, rows=(5, 5), **kwargs)


def test_imresize_hand_computed_matlab_weights():
    # Worked by hand from MATLAB's contributions(): x2 up, first output sample: u = 0.75, taps at distance
    # 1.75/0.75/0.25/1.25 with indices 2,1,1,2 after mirroring -> 1.09375 v1 - 0.09375 v2.
    v = np.arange(1.0, 9.0)[None, :] ** 2  # 1x8 row, non-linear so every weight matters
    up = imgproc.imresize(v, 2)
    assert up.shape == (2, 16)
    assert up[0, 0] == pytest.approx(1.09375 * v[0, 0] - 0.09375 * v[0, 1], abs=1e-12)
    # x1/2 down, antialiased: kernel 0.5*cubic(0.5 d), 8 taps. First output (u = 1.5) after mirroring:
    down = imgproc.imresize(v, 0.5)
    expected0 = 0.546875 * 1 + 0.3984375 * 4 + 0.1015625 * 9 - 0.03515625 * 16 - 0.01171875 * 25
    assert down[0, 0] == pytest.approx(expected0, abs=1e-12)
    # Interior output 3 (u = 5.5): symmetric weights on v2..v9 -- but v has 8 samples, so v9 mirrors to v8.
    w = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])
    samples = v[0, [1, 2, 3, 4, 5, 6, 7, 7]]
    assert down[0, 2] == pytest.approx(float(w @ samples), abs=1e-12)


def test_imresize_properties():
    const = np.full((13, 17, 3), 0.37)
    for s in (1 / 4, 1 / 3, 0.5, 2, 3):
        out = imgproc.imresize(const, s)
        assert out.shape == (math.ceil(13 * s), math.ceil(17 * s), 3)
        np.testing.assert_allclose(out, 0.37, atol=1e-14)  # weights sum to one
    img = np.random.default_rng(0).random((9, 11))
    np.testing.assert_allclose(imgproc.imresize(img, 1), img, atol=1e-14)  # scale 1: cubic(integer) is a delta
    assert imgproc.imresize(img.astype(np.float32), 2).dtype == np.float64
    with pytest.raises(ValueError):
        imgproc.imresize(img)
    with pytest.raises(ValueError):
        imgproc.imresize(img, 2, output_shape=(3, 3))
    with pytest.raises(TypeError):
        imgproc.imresize(img.astype(np.int32), 2)


def test_imresize_torch_matches_numpy():
    rng = np.random.default_rng(1)
    batch = rng.random((2, 3, 24, 20))
    for s in (1 / 2, 1 / 3, 1 / 4, 2, 3, 4):
        expected = np.stack([imgproc.imresize(im.transpose(1, 2, 0), s).transpose(2, 0, 1) for im in batch])
        out32 = imgproc.imresize_torch(torch.from_numpy(batch).float(), s)
        assert out32.dtype == torch.float32 and tuple(out32.shape) == expected.shape
        assert np.abs(out32.numpy() - expected).max() <= 1e-5
        out64 = imgproc.imresize_torch(torch.from_numpy(batch), s)
        assert np.abs(out64.numpy() - expected).max() <= 1e-12
    with pytest.raises(TypeError):
        imgproc.imresize_torch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_imresize_torch_ignores_reduced_precision_switches():
    # bf16 autocast or "medium" float32 matmul precision must not leak into LR generation.
    x = torch.rand(4, 1, 40, 36)
    exact = imgproc.imresize_torch(x.double(), 0.25)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = imgproc.imresize_torch(x, 0.25)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert out.dtype == torch.float32
    assert (out.double() - exact).abs().max().item() <= 1e-6


def test_imresize_torch_gradient():
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imgproc.imresize_torch(t, 0.5), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_imresize_torch_cuda_matches_numpy():
    rng = np.random.default_rng(5)
    batch = rng.random((3, 3, 40, 36))
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as many training scripts set it: must not matter
        for s in (1 / 4, 1 / 3, 2, 3):
            expected = np.stack([imgproc.imresize(im.transpose(1, 2, 0), s).transpose(2, 0, 1) for im in batch])
            for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
                out = imgproc.imresize_torch(torch.from_numpy(batch).to("cuda", dtype), s)
                assert out.device.type == "cuda" and out.dtype == dtype
                assert np.abs(out.double().cpu().numpy() - expected).max() <= tol
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


# ---------------------------------------------------------------------------------------------------------------------
# The protocol: golden bicubic numbers on Set5 butterfly (docs/protocol.md)
# ---------------------------------------------------------------------------------------------------------------------

# Published (2 decimals) and our exact values. x2 measures 27.4386, which rounds to 27.44 against the table's 27.43:
# every variant of the protocol lands at 27.436-27.440 and only rounding Y to integers (forbidden) gives 27.43, so the
# table value is taken to be within its stated +-0.01.
GOLDEN = {2: (27.43, 27.4386, 0.9160), 3: (24.04, 24.0383, 0.8222), 4: (22.10, 22.0998, 0.7374)}


@pytest.fixture(scope="module")
def butterfly() -> np.ndarray:
    return image_files.read_image(BUTTERFLY)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_baseline_butterfly(butterfly, scale):
    hr = imgproc.mod_crop(butterfly, scale)
    lr = imgproc.make_lr(hr, scale)
    assert lr.dtype == np.uint8 and lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
    sr = imgproc.bicubic_upscale(lr, scale)
    assert sr.dtype == np.uint8 and sr.shape == hr.shape
    psnr, ssim = metrics.score_image(sr, hr, scale)
    published, exact_psnr, exact_ssim = GOLDEN[scale]
    assert abs(psnr - published) <= 0.01
    assert psnr == pytest.approx(exact_psnr, abs=1e-4)
    assert ssim == pytest.approx(exact_ssim, abs=1e-4)


def test_make_lr_matches_reference_on_real_photo():
    hr = skdata.astronaut()[200:224, 300:324]
    lr = imgproc.make_lr(hr, 4)
    expected = np.floor(np.clip(ref_imresize(hr / 255.0, 1 / 4), 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(lr, expected)
    with pytest.raises(ValueError, match="mod_crop"):
        imgproc.make_lr(skdata.astronaut()[:10, :12], 4)
    with pytest.raises(TypeError):
        imgproc.make_lr(hr / 255.0, 4)


def test_y_channel_range():
    y = imgproc.y_channel(skdata.astronaut())
    assert y.dtype == np.float64 and y.ndim == 2
    assert y.min() >= 16 and y.max() <= 235
    assert not np.allclose(y, np.round(y))  # not rounded


# ---------------------------------------------------------------------------------------------------------------------
# Colour and quantisation
# ---------------------------------------------------------------------------------------------------------------------


def test_ycbcr_known_values():
    rgb = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0], [0.5, 0.5, 0.5]]], dtype=np.float64)
    ycc = imgproc.rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycc[0, 0], [16, 128, 128], atol=1e-12)
    np.testing.assert_allclose(ycc[0, 1], [235, 128, 128], atol=1e-12)
    np.testing.assert_allclose(ycc[0, 2], [16 + 65.481, 128 - 37.797, 240], atol=1e-12)
    np.testing.assert_allclose(ycc[0, 3], [125.5, 128, 128], atol=1e-12)
    np.testing.assert_allclose(imgproc.rgb_to_ycbcr(rgb, y_only=True), ycc[..., 0], atol=1e-12)
    bgr = rgb[..., ::-1]
    np.testing.assert_allclose(imgproc.bgr_to_ycbcr(bgr), ycc, atol=1e-12)
    # uint8 input is taken as 0..255 and scaled to [0, 1] first
    np.testing.assert_allclose(imgproc.rgb_to_ycbcr(np.full((1, 1, 3), 255, np.uint8)), [[[235, 128, 128]]])


def test_ycbcr_round_trip():
    rgb = imgproc.to_float01(skdata.astronaut()[::8, ::8])
    back = imgproc.ycbcr_to_rgb(imgproc.rgb_to_ycbcr(rgb))
    np.testing.assert_allclose(back, rgb, atol=1e-12)
    assert np.array_equal(imgproc.quantize_uint8(back), skdata.astronaut()[::8, ::8])


def test_quantize_uint8_rounds_half_up():
    # Find values whose 255*x is exactly k + 0.5 with k even: np.round would give k, MATLAB (and we) give k + 1.
    halves = [(k + 0.5) / 255 for k in range(0, 254, 2) if (k + 0.5) / 255 * 255 == k + 0.5]
    assert halves
    q = imgproc.quantize_uint8(np.array(halves))
    np.testing.assert_array_equal(q.astype(int), np.floor(np.array(halves) * 255) + 1)
    np.testing.assert_array_equal(imgproc.quantize_uint8(np.array([-0.2, 0, 1, 1.7])), [0, 0, 255, 255])
    with pytest.raises(ValueError):
        imgproc.quantize_uint8(np.array([0.5, np.nan]))


# ---------------------------------------------------------------------------------------------------------------------
# Tensors, crops, augmentation
# ---------------------------------------------------------------------------------------------------------------------


def test_tensor_round_trip():
    img = np.random.default_rng(2).random((5, 7, 3))
    t = imgproc.image_to_tensor(img)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    np.testing.assert_allclose(imgproc.tensor_to_image(t), img, atol=1e-7)
    y = img[..., 0]
    ty = imgproc.image_to_tensor(y)
    assert ty.shape == (1, 1, 5, 7)
    assert imgproc.tensor_to_image(ty).shape == (5, 7)
    with pytest.raises(TypeError):
        imgproc.image_to_tensor(np.zeros((3, 3), np.uint8))


def test_mod_crop():
    img = np.zeros((255, 130, 3))
    assert imgproc.mod_crop(img, 4).shape == (252, 128, 3)
    assert imgproc.mod_crop(img, 3).shape == (255, 129, 3)
    assert imgproc.mod_crop(img[..., 0], 2).shape == (254, 130)


def _nearest_up(lr: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(lr, s, axis=0), s, axis=1)


def test_paired_random_crop_aligned():
    rng = np.random.default_rng(3)
    lr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    hr = _nearest_up(lr, 4)
    for _ in range(20):
        lp, hp = imgproc.paired_random_crop(lr, hr, 8, 4, rng)
        assert lp.shape == (8, 8, 3) and hp.shape == (32, 32, 3)
        np.testing.assert_array_equal(_nearest_up(lp, 4), hp)
    with pytest.raises(ValueError):
        imgproc.paired_random_crop(lr, hr[:-1], 8, 4, rng)
    with pytest.raises(ValueError):
        imgproc.paired_random_crop(lr, hr, 31, 4, rng)


def test_paired_augment_identical_and_all_eight():
    rng = np.random.default_rng(4)
    lr = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    hr = _nearest_up(lr, 3)
    seen = set()
    for _ in range(200):
        la, ha = imgproc.paired_augment(lr, hr, rng)
        np.testing.assert_array_equal(_nearest_up(la, 3), ha)
        assert la.flags.c_contiguous and ha.flags.c_contiguous
        seen.add(la.tobytes())
    assert len(seen) == 8
    la, ha = imgproc.paired_augment(lr, hr, rng, hflip=False, rot90=False)
    np.testing.assert_array_equal(la, lr)
