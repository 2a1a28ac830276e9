"""Hostile inputs (issue 38): refused before they cost memory, one line each, the batch goes on.

The corpus is made at run time from a few hundred bytes (helpers.hostile_folder): headers claiming 60000x60000
pixels (PNG, JPEG, TIFF) or a 65535x65535 GIF, a truncated GIF, a link to /dev/zero, a FIFO and a 2x2 image. Each
command that reads images runs once on a folder of them plus a good photo, in a subprocess whose own peak memory
is measured (helpers.run_measured). The header probe's unit tests come first.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from helpers import (
    BOMB_SIDE,
    gif_bomb,
    hostile_folder,
    jpeg_bomb,
    png_bomb,
    png_chunk,
    run_measured,
    tiff_bomb,
    train_command,
    truncated_gif,
)
from PIL import Image

from srdensenet.dataset import DatasetError, UnusableImageError, ValidationImage, ValidationSet, decode_png, encode_png
from srdensenet.image_files import ImageReadError, read_image
from srdensenet.image_header import DEFAULT_MAX_PIXELS, HeaderError, ImageHeader, probe
from srdensenet.metrics import psnr_y, smallest_scored_side, ssim_y
from srdensenet.photo_metadata import read_photo

ROOT = Path(__file__).resolve().parent.parent
GOOD = np.ascontiguousarray(skimage.data.astronaut()[100:164, 180:244])  # 64x64 colour
PEAK_LIMIT = 1 << 30  # a child that decoded a bomb would need gigabytes; Python and PyTorch take ~0.3-0.5 GiB


def _encoded() -> dict[str, bytes]:
    """Small files of every format the probe parses, as OpenCV and Pillow write them."""
    rgb = GOOD[:37, :53]

    def pillow(fmt: str, image=rgb, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **options)
        return buffer.getvalue()

    def opencv(ext: str, image=rgb, params=()) -> bytes:
        image = image[:, :, ::-1] if image.ndim == 3 else image
        return cv2.imencode(ext, np.ascontiguousarray(image), list(params))[1].tobytes()

    return {"png": opencv(".png"), "png16": opencv(".png", rgb.astype(np.uint16) * 257), "jpg": opencv(".jpg"),
            "progressive.jpg": pillow("JPEG", progressive=True), "bmp": opencv(".bmp"), "tif": opencv(".tif"),
            "bigtiff": pillow("TIFF", big_tiff=True), "webp": opencv(".webp"),
            "lossy.webp": opencv(".webp", params=[cv2.IMWRITE_WEBP_QUALITY, 80]),
            "alpha.webp": pillow("WEBP", np.dstack([rgb, rgb[:, :, 0]]), quality=80), "ppm": opencv(".ppm"),
            "pgm": opencv(".pgm", rgb[:, :, 0]), "pbm": opencv(".pbm", rgb[:, :, 0]), "pam": opencv(".pam"),
            "gif": pillow("GIF")}


def test_the_probe_reads_every_format_as_the_decoders_do():
    for name, data in _encoded().items():
        header = probe(data)
        assert (header.width, header.height, header.frames) == (53, 37, 1), name
    frames = [Image.fromarray(GOOD), Image.fromarray(GOOD[::-1].copy())]
    for fmt in ("GIF", "WEBP", "TIFF", "PNG"):  # animated GIF, WebP, APNG; multi-page TIFF
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
        assert probe(buffer.getvalue()) == ImageHeader({"WEBP": "WebP"}.get(fmt, fmt), 64, 64, 2)
    assert probe(b"not an image at all") is None and probe(b"\x00\x00\x00\x18ftypheic") is None


def test_bomb_headers_are_read_from_a_few_hundred_bytes():
    for bomb, kind in ((png_bomb(), "PNG"), (jpeg_bomb(), "JPEG"), (tiff_bomb(), "TIFF")):
        assert len(bomb) < 300 and probe(bomb) == ImageHeader(kind, BOMB_SIDE, BOMB_SIDE)
    assert probe(gif_bomb()) == ImageHeader("GIF", 65535, 65535)
    # a frame beyond the logical screen enlarges the image, as Pillow does
    small_screen = bytearray(gif_bomb())
    small_screen[6:10] = struct.pack("<HH", 1, 1)
    assert probe(bytes(small_screen)) == ImageHeader("GIF", 65535, 65535)


def test_every_cut_of_a_header_is_a_header_error_never_a_crash():
    for name, data in {**_encoded(), "png bomb": png_bomb(), "tiff bomb": tiff_bomb()}.items():
        for end in range(len(data)):
            try:
                header = probe(data[:end])
            except HeaderError as error:
                assert str(error), name
            else:
                assert header is None or header.width > 0, name
    with pytest.raises(HeaderError, match=r"truncated GIF \(cut short in frame 1\)"):
        probe(truncated_gif(GOOD))


def test_gif_frames_are_counted_without_decoding_or_allocating_them():
    """20000 frames of 65535x65535 (a canvas of 4 GiB each, were they decoded): the probe walks their blocks."""
    frame = b"\x21\xf9\x04\x08\0\0\0\0" + b"\x2c" + struct.pack("<4HB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\0"
    data = gif_bomb()[:-1] + frame * 20000 + b"\x3b"
    tracemalloc.start()
    try:
        header = probe(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header == ImageHeader("GIF", 65535, 65535, 20001) and peak < 64 << 10


@pytest.mark.parametrize("name", ["png_bomb.png", "jpeg_bomb.jpg", "tiff_bomb.tif", "gif_bomb.gif"])
def test_readers_refuse_a_bomb_by_its_header(tmp_path, name):
    hostile_folder(tmp_path, GOOD)
    side = 65535 if name.endswith(".gif") else BOMB_SIDE
    expected = (rf"{name}: {side}x{side} pixels \([\d,]+ Mpx\) is over the limit of 100 Mpx per image "
                rf"\(--max-pixels {DEFAULT_MAX_PIXELS}\); not decoded")
    with pytest.raises(ImageReadError, match=expected):
        read_photo(tmp_path / name)
    if not name.endswith(".gif"):  # OpenCV does not read GIF here
        with pytest.raises(ImageReadError, match=expected):
            read_image(tmp_path / name)
    # Above OpenCV's own limit (2**30 pixels), its error is the same one line
    if name == "png_bomb.png":
        with pytest.raises(ImageReadError, match=r"png_bomb.png: OpenCV cannot decode it \(pixels <= CV_IO_MAX"):
            read_image(tmp_path / name, max_pixels=BOMB_SIDE ** 2)


def test_non_regular_files_are_refused_unopened(tmp_path):
    hostile_folder(tmp_path, GOOD)
    errors = {}

    def read(name: str) -> None:
        try:
            read_photo(tmp_path / name)
        except ImageReadError as error:
            errors[name] = str(error)

    for name in ("pipe.png", "zero.png"):
        reader = threading.Thread(target=read, args=(name,), daemon=True)
        reader.start()
        reader.join(10)
        if reader.is_alive():  # blocked opening the FIFO: release it, then fail
            os.close(os.open(tmp_path / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"reading {name} blocked")
    assert errors == {"pipe.png": f"{tmp_path}/pipe.png: not a regular file (a FIFO); not read",
                      "zero.png": f"{tmp_path}/zero.png: not a regular file (a character device, through a link to "
                                  f"/dev/zero); not read"}


def test_a_truncated_gif_is_one_line(tmp_path):
    (tmp_path / "cut.gif").write_bytes(truncated_gif(GOOD))
    with pytest.raises(ImageReadError, match=r"cut.gif: truncated GIF \(cut short in frame 1\)$"):
        read_photo(tmp_path / "cut.gif")


def test_a_damaged_png_is_one_line_without_libpngs(tmp_path, capfd):
    data = encode_png(GOOD)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # inside IDAT: libpng would print "libpng error: ..." on fd 2
    with pytest.raises(DatasetError, match=r"^x.lmdb\[k\]: value is not a decodable PNG \(damaged PNG \(chunk IDAT at "
                                           r"byte \d+ fails its CRC check\); corrupt LMDB\?\)$"):
        decode_png(bytes(damaged), "x.lmdb[k]")
    with pytest.raises(DatasetError, match=r"truncated PNG \(chunk 'IDAT' at byte \d+ runs past the end\)"):
        decode_png(data[:len(data) // 2], "x.lmdb[k]")
    (tmp_path / "d.png").write_bytes(bytes(damaged))
    with pytest.raises(ImageReadError, match=r"d.png: damaged PNG"):
        read_image(tmp_path / "d.png")
    assert np.array_equal(decode_png(data, "x.lmdb[k]"), GOOD)
    assert capfd.readouterr().err == ""  # nothing from libpng
    bomb = png_bomb()
    with pytest.raises(DatasetError, match=r"60000x60000 pixels .* not decoded; corrupt LMDB\?"):
        decode_png(bomb, "x.lmdb[k]")
    ancillary = data[:33] + png_chunk(b"tEXt", b"k\0v")[:-1] + b"\0" + data[33:]  # a bad CRC libpng only warns about
    assert np.array_equal(decode_png(ancillary, "x.lmdb[k]"), GOOD)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_the_smallest_image_the_protocol_scores(tmp_path, scale):
    side = smallest_scored_side(scale)
    image = np.random.default_rng(scale).integers(0, 256, (side, side), np.uint8).astype(np.float64)
    assert side % scale == 0 and np.isfinite(psnr_y(image + 1, image, scale)) and ssim_y(image, image, scale) == 1
    with pytest.raises(ValueError):  # one multiple of the scale less: SSIM's window does not fit
        ssim_y(image[scale:, scale:], image[scale:, scale:], scale)
    Image.fromarray(GOOD[:side - 1, :side + 5]).save(tmp_path / "small.png")
    vset = ValidationSet("v", tmp_path, scale, (ValidationImage("small.png", tmp_path / "small.png", None),))
    with pytest.raises(UnusableImageError, match=rf"small.png: too small to score at x{scale} \(mod-cropped to "
                                                 rf"{side + 5 - (side + 5) % scale}x{side - scale} px; at least "
                                                 rf"{side}x{side}"):
        vset.load(vset.images[0])


# ---------------------------------------------------------------------------------------------------------------------
# The commands, each once on a folder of hostile files and a good photo
# ---------------------------------------------------------------------------------------------------------------------


def _named_once(stderr: str, folder: Path, names) -> None:
    """Each file named in exactly one error line; no traceback."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", stderr)]
    assert "Traceback" not in stderr
    for name in names:
        said = [line for line in lines if line.startswith("error: ") and f"{folder / name}:" in line]
        assert len(said) == 1, (name, said, stderr)


def _check_peak(command: str, peak: int) -> None:
    print(f"{command}: peak resident memory {peak / 2**20:.0f} MiB")
    assert peak < PEAK_LIMIT, f"{command} peaked at {peak / 2**20:.0f} MiB"


OPENCV_HOSTILE = ["png_bomb.png", "jpeg_bomb.jpg", "tiff_bomb.tif", "zero.png", "pipe.png"]


def test_inference_names_each_and_upscales_the_rest(tmp_path):
    hostile_folder(tmp_path / "in", GOOD)
    os.mkfifo(tmp_path / "direct.png")  # a FIFO named on the command line is refused unopened too
    code, _, stderr, peak = run_measured([sys.executable, "inference.py", str(tmp_path / "in"),
                                          str(tmp_path / "direct.png"), "-o", str(tmp_path / "out"), "--precision",
                                          "fp32"], ROOT)
    assert code == 1, stderr
    _named_once(stderr, tmp_path / "in", [*OPENCV_HOSTILE, "gif_bomb.gif", "cut.gif"])
    _named_once(stderr, tmp_path, ["direct.png"])
    assert "2 written, 0 skipped (already there), 8 failed, of 10 images" in stderr
    assert read_image(tmp_path / "out" / "good.png").shape == (256, 256, 3)  # and tiny.png, 2x2, upscaled too
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png", "tiny.png"]
    _check_peak("inference.py", peak)


def test_validate_names_each_and_scores_the_rest(tmp_path):
    hostile_folder(tmp_path / "valid", GOOD)
    code, stdout, stderr, peak = run_measured([sys.executable, "validate.py", "--weights", "bicubic",
                                               "--upscale-factor", "2", "--valid-dirs", str(tmp_path / "valid"),
                                               "--json", str(tmp_path / "r.json")], ROOT)
    assert code == 1, stderr
    _named_once(stderr, tmp_path / "valid", [*OPENCV_HOSTILE, "tiny.png"])
    assert "tiny.png: too small to score at x2" in stderr and "6 of 7 images could not be scored" in stderr
    assert re.search(r"good.png +\d+\.\d+ ", stdout) and (tmp_path / "r.json").is_file()
    _check_peak("validate.py", peak)


def test_prepare_dataset_names_each_and_cuts_the_rest(tmp_path):
    hostile_folder(tmp_path / "in", GOOD)
    code, stdout, stderr, peak = run_measured([sys.executable, "prepare_dataset.py", "subimages", "--input",
                                               str(tmp_path / "in"), "--output", str(tmp_path / "sub"), "--size",
                                               "32", "--step", "32", "--workers", "1"], ROOT)
    assert code == 1, stderr
    _named_once(stderr, tmp_path / "in", OPENCV_HOSTILE)
    assert "tiny.png (2x2)" in stdout and "5 of 7 images could not be read (named above)" in stderr
    assert sorted(p.name for p in (tmp_path / "sub").glob("*.png")) == [f"good_s00{i}.png" for i in range(1, 5)]
    _check_peak("prepare_dataset.py", peak)


def test_training_names_each_and_trains_on_the_rest(tmp_path):
    data = tmp_path / "data"
    hostile_folder(data / "train", GOOD)
    hostile_folder(data / "valid", GOOD)
    code, stdout, stderr, peak = run_measured(train_command(data, tmp_path / "runs", "--epochs", "1"), ROOT,
                                              timeout=180)
    assert code == 1, stdout + stderr
    _named_once(stderr, data / "train", OPENCV_HOSTILE)
    _named_once(stderr, data / "valid", [*OPENCV_HOSTILE, "tiny.png"])
    assert "1 training images (1 smaller than the patch skipped: tiny.png)" in stdout
    assert re.search(r"\| valid \d+\.\d+ dB", stdout) and "run complete" in stdout
    assert "11 image(s) were left out (named above)" in stderr.splitlines()[-1]
    assert (tmp_path / "runs" / "t" / "checkpoints" / "last.pth").is_file()
    _check_peak("train.py", peak)
