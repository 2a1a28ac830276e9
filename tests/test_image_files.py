"""Tests for image_files: reading (channel order, alpha, 16-bit, broken files), writing (atomic, errors), encoding,
and the one list of image extensions."""

from __future__ import annotations

import errno
import os

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from srdensenet import image_files, imgproc
from srdensenet.fileio import OutputError


def test_read_grayscale_is_replicated(tmp_path):
    gray = skdata.camera()[:64, :48]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = image_files.read_image(tmp_path / "g.png")
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], gray) for c in range(3))
    np.testing.assert_allclose(imgproc.y_channel(rgb), 16 + 219 * gray.astype(np.float64) / 255.0, atol=1e-12)


def test_read_rgb_order_and_rgba(tmp_path):
    rgb = skdata.astronaut()[:32, :40]
    alpha = np.arange(32 * 40, dtype=np.uint32).reshape(32, 40).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb[..., ::-1], alpha]))  # OpenCV writes BGRA
    got, got_alpha = image_files.read_image_with_alpha(tmp_path / "a.png")
    np.testing.assert_array_equal(got, rgb)
    np.testing.assert_array_equal(got_alpha, alpha)
    np.testing.assert_array_equal(image_files.read_image(tmp_path / "a.png"), rgb)
    cv2.imwrite(str(tmp_path / "c.bmp"), rgb[..., ::-1])
    color, no_alpha = image_files.read_image_with_alpha(tmp_path / "c.bmp")
    np.testing.assert_array_equal(color, rgb)
    assert no_alpha is None


def test_read_16bit_png(tmp_path):
    img16 = skdata.astronaut()[:20, :30].astype(np.uint16) * 257 + 3
    image_files.write_image(tmp_path / "w.png", img16)
    got = image_files.read_image(tmp_path / "w.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, img16)
    np.testing.assert_allclose(imgproc.to_float01(got), img16 / 65535.0)


def test_read_errors(tmp_path):
    with pytest.raises(image_files.ImageReadError, match="no such file"):
        image_files.read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(image_files.ImageReadError, match="empty"):
        image_files.read_image(tmp_path / "empty.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image" * 10)
    with pytest.raises(image_files.ImageReadError, match="junk.jpg"):
        image_files.read_image(tmp_path / "junk.jpg")
    ok, jpg = cv2.imencode(".jpg", skdata.astronaut()[:, :, ::-1])
    full = jpg.tobytes()
    (tmp_path / "full.jpg").write_bytes(full + b"\x00" * 16)  # trailing padding after EOI is legal
    assert image_files.read_image(tmp_path / "full.jpg").shape == (512, 512, 3)
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    with pytest.raises(image_files.ImageReadError, match="truncated JPEG"):
        image_files.read_image(tmp_path / "cut.jpg")
    ok, png = cv2.imencode(".png", skdata.astronaut())
    (tmp_path / "cut.png").write_bytes(png.tobytes()[: len(png) // 2])
    with pytest.raises(image_files.ImageReadError, match="cut.png"):
        image_files.read_image(tmp_path / "cut.png")
    cv2.imwrite(str(tmp_path / "f.tif"), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(image_files.ImageReadError, match="pixel type"):
        image_files.read_image(tmp_path / "f.tif")
    assert issubclass(image_files.ImageReadError, ValueError)


def test_write_image_atomic_and_errors(tmp_path):
    rgb = skdata.chelsea()[:16, :24]
    for ext in ("png", "bmp", "tif", "webp"):
        path = tmp_path / f"out.{ext}"
        image_files.write_image(path, rgb)
        if ext != "webp":  # webp default quality is lossy
            np.testing.assert_array_equal(image_files.read_image(path), rgb)
    gray = rgb[..., 0]
    image_files.write_image(tmp_path / "gray.png", gray)
    np.testing.assert_array_equal(image_files.read_image(tmp_path / "gray.png")[..., 1], gray)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(image_files.ImageWriteError, match="does not exist"):
        image_files.write_image(tmp_path / "nope" / "x.png", rgb)
    with pytest.raises(image_files.ImageWriteError, match="x.unknownext"):
        image_files.write_image(tmp_path / "x.unknownext", rgb)
    with pytest.raises(TypeError):
        image_files.write_image(tmp_path / "f.png", rgb / 255.0)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_failed_write_names_the_image_and_keeps_the_old_one(tmp_path, monkeypatch):
    rgb = skdata.chelsea()[:16, :24]
    image_files.write_image(tmp_path / "out.png", rgb)
    old = (tmp_path / "out.png").read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(image_files.ImageWriteError, match=r"out\.png: cannot write \(No space left on device\)"):
        image_files.write_image(tmp_path / "out.png", rgb[::-1])
    assert (tmp_path / "out.png").read_bytes() == old and os.listdir(tmp_path) == ["out.png"]
    assert issubclass(image_files.ImageWriteError, OutputError)


def test_encode_image_takes_opencv_parameters():
    rgb = skdata.astronaut()[:64, :64]
    small, large = (image_files.encode_image(rgb, ".webp", [cv2.IMWRITE_WEBP_QUALITY, q]) for q in (20, 95))
    assert len(small) < len(large)
    decoded = cv2.imdecode(np.frombuffer(large, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.abs(decoded.astype(int) - rgb).mean() < 3  # RGB in, RGB back: the channels were not swapped
    with pytest.raises(ValueError, match="tile.webp: expected HxW"):
        image_files.encode_image(np.zeros((4, 4, 5), np.uint8), ".webp", name="tile.webp")


@pytest.mark.parametrize("ext", image_files.IMAGE_EXTENSIONS)
def test_every_listed_extension_round_trips(tmp_path, ext):
    rgb = skdata.chelsea()[:16, :24]
    if ext == ".pgm":  # a grey format: written from one channel, read back as three
        image_files.write_image(tmp_path / f"x{ext}", rgb[:, :, 0])
        rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
    else:
        image_files.write_image(tmp_path / f"x{ext}", rgb)
    got = image_files.read_image(tmp_path / f"x{ext}")
    assert got.shape == rgb.shape
    if ext in image_files.LOSSLESS_EXTENSIONS:
        np.testing.assert_array_equal(got, rgb)
    assert set(image_files.LOSSLESS_EXTENSIONS) <= set(image_files.IMAGE_EXTENSIONS)
