"""Helpers shared by several test modules (plain functions and constants; fixtures live in conftest.py)."""

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import zlib

import numpy as np
import resource_archives
import skimage.data
import torch
from PIL import ExifTags, Image, ImageCms

from srdensenet import imgproc, system_memory
from srdensenet.imgproc import imresize, rgb_to_ycbcr

# ---------------------------------------------------------------------------------------------- resource archives

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body"


def rcc_name(name: str) -> bytes:
    """A name entry of a Qt resource file: length, hash (unused by the reader), UTF-16 characters."""
    encoded = name.encode("utf-16-be")
    return struct.pack(">HI", len(name), 0) + encoded


def make_rcc(files: dict[str, bytes], compressed: frozenset[str] = frozenset(), version: int = 2) -> bytes:
    """A Qt resource file holding files under one folder ("dir/name"), as rcc lays it out."""
    folder = {path.split("/")[0] for path in files}
    assert len(folder) == 1
    folder_name = folder.pop()
    names, payload, nodes = b"", b"", []

    def add_name(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += rcc_name(name)
        return offset

    node_size = 14 if version == 1 else 22
    extra = b"" if version == 1 else b"\0" * 8
    nodes.append(struct.pack(">IHII", 0, 2, 1, 1) + extra)  # root: one child, the folder, at index 1
    nodes.append(struct.pack(">IHII", add_name(folder_name), 2, len(files), 2) + extra)
    for path, data in sorted(files.items()):
        stored = struct.pack(">I", len(data)) + zlib.compress(data) if path in compressed else data
        nodes.append(struct.pack(">IHHHI", add_name(path.split("/", 1)[1]), 1 if path in compressed else 0, 0, 0,
                                 len(payload)) + extra)
        payload += struct.pack(">I", len(stored)) + stored
    header = 4 + 16
    tree = b"".join(nodes)
    assert all(len(n) == node_size for n in nodes)
    tree_offset, payload_offset = header, header + len(tree)
    names_offset = payload_offset + len(payload)
    return b"qres" + struct.pack(">IIII", version, tree_offset, payload_offset, names_offset) + tree + payload + names


def make_eet(entries: dict[str, bytes]) -> bytes:
    """An Eet file (format 2) with uncompressed entries: header, directory, names, then the data."""
    header = 12 + 24 * len(entries)
    names = b"".join(name.encode() + b"\0" for name in entries)
    directory, name_offset, data_offset, data = b"", header, header + len(names), b""
    for name, blob in entries.items():
        directory += struct.pack(">6I", data_offset + len(data), len(blob), len(blob), name_offset, len(name) + 1, 0)
        name_offset += len(name) + 1
        data += blob
    return struct.pack(">III", resource_archives.EET_MAGIC, len(entries), 0) + directory + names + data


# ---------------------------------------------------------------------------------------------- inference paths

# ONNX Runtime is a dev requirement (requirements-dev.txt); without it its cases are skipped, the rest still run.
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
BACKENDS = ["torch", "onnxruntime"] if HAS_ORT else ["torch"]
SMALL = dict(num_blocks=2, layers_per_block=2, growth_rate=4, num_features=8, bottleneck_features=8)
# The paths by name (never through "auto", whose choice depends on the CPU: see test_runners.test_resolve_plan):
# "fp32" is the eager NCHW reference, "fp32-cl" and "bf16" the fast path (runners.FastRunner) in fp32 and in bf16.
# fp32 paths must agree to float rounding. bf16 keeps 8 significant bits (unit roundoff u = 2**-8); each bf16 layer
# of the tiny models (at most 8: 4 dense layers, the bottleneck, up to 3 deconvolutions) rounds its inputs, weights and
# output, a few u each in the worst case. Over 20 random tiny models the max error was 3.4 u of the output's largest
# magnitude (on both CPU classes); BF16_TOLERANCE allows 8 u.
FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 8 * 2.0**-8


def y_of(rgb):
    return (rgb_to_ycbcr(rgb, y_only=True) / 255.0).astype(np.float32)


def max_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest difference, relative to the reference's largest magnitude (random weights: outputs are not in [0, 1])."""
    return ((out - reference).abs().max() / reference.abs().max()).item()


ALLOCATOR_FAILURE = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to " \
                    "allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"


def fake_available(monkeypatch, available):
    monkeypatch.setattr(system_memory, "available_memory", lambda device: (int(available), "MemAvailable"))


# ---------------------------------------------------------------------------------------------- training runs

TINY = ["--num-blocks", "2", "--layers-per-block", "2", "--growth-rate", "4", "--num-features", "8",
        "--bottleneck-features", "8", "--upscale-factor", "2", "--hr-patch-size", "16", "--batch-size", "4",
        "--patches-per-image", "10", "--num-workers", "0", "--log-every", "1", "--no-channels-last",
        "--precision", "fp32", "--learning-rate", "1e-3", "--lr-schedule", "step", "--lr-step-epochs", "2",
        "--warmup-steps", "0"]


def train_command(data, out, *extra):
    return [sys.executable, "train.py", "--preset", "demo", "--train-dirs", str(data / "train"), "--valid-dirs",
            str(data / "valid"), "--output-dir", str(out), "--run-name", "t", *TINY, *extra]


def run_train(repo_root, data, out, *extra, check=True, env=None):
    result = subprocess.run(train_command(data, out, *extra), cwd=repo_root, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def losses(out):
    rows = [json.loads(line) for line in (out / "t" / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


# ---------------------------------------------------------------------------------------------- training patches

def dataset_images() -> dict[str, np.ndarray]:
    """Small, odd-sized crops (colour, grey) so mod-crops and borders are exercised."""
    return {
        "astronaut": skimage.data.astronaut()[40:137, 150:273],  # 97x123 colour
        "camera": skimage.data.camera()[100:190, 200:303],  # 90x103 grey
        "coffee": skimage.data.coffee()[50:150, 300:410],  # 100x110 colour
    }


def y01(rgb_uint8: np.ndarray) -> torch.Tensor:
    """Y / 255 of uint8 RGB HxWx3 exactly as prepare_batch computes it (float64, then float32)."""
    rgb = torch.from_numpy(rgb_uint8.transpose(2, 0, 1).copy())[None].double() / 255.0
    return (imgproc.y_channel_torch(rgb) / 255.0).float()[0, 0]


def ties(hr: np.ndarray, scale: int) -> np.ndarray:
    """Pixels (HxW of the LR) where the exact LR value of some channel is k + 1/2.

    At x2 and x4 every bicubic weight is a dyadic fraction, so imresize of the raw 0..255 values is exact in float64.
    Only there can two correct float64 summation orders (numpy's MATLAB-ordered gather in make_lr, the matmul in
    prepare_batch) round to different uint8 values; everywhere else the LR must be identical.
    """
    exact = imresize(hr.astype(np.float64), 1.0 / scale)
    return ((exact - np.floor(exact)) == 0.5).any(axis=2)


def assert_lr_equal(got_y: torch.Tensor, expected_lr: np.ndarray, ties: np.ndarray) -> None:
    expected_y = y01(expected_lr)
    differ = (got_y != expected_y).numpy()
    assert not (differ & ~ties).any(), f"LR differs off exact .5 ties at {np.argwhere(differ & ~ties)[:5]}"
    assert (got_y - expected_y).abs().max() <= 1.0 / 255.0 + 1e-6


# ---------------------------------------------------------------------------------------------- photos

DATE = "2024:05:06 07:08:09"


def p3_like_profile() -> bytes:
    """Pillow's sRGB profile with Display P3's primaries (D50-adapted): a wide-gamut RGB profile unlike sRGB's."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[84:100] = bytes(16)  # the profile ID (an MD5 of the rest) is optional: zero says "not computed"
    icc[24:36] = struct.pack(">6H", 2024, 1, 2, 3, 4, 5)  # a fixed creation time: the same bytes on every call
    primaries = {b"rXYZ": (0.5151, 0.2412, -0.0011), b"gXYZ": (0.2920, 0.6922, 0.0419),
                 b"bXYZ": (0.1571, 0.0666, 0.7841)}
    (count,) = struct.unpack(">I", icc[128:132])
    for i in range(count):
        tag, offset, _ = struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i])
        if tag in primaries:
            icc[offset + 8:offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in primaries[tag]))
    return bytes(icc)


def exif_bytes(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Camera"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = DATE
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExifImageWidth] = 64
    return exif.tobytes()


# ---------------------------------------------------------------------------------------------- hostile images

BOMB_SIDE = 60000  # 3.6 Gpx: over OpenCV's 2**30-pixel limit and the default --max-pixels alike


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with a tiny (short) compressed IDAT: a header, no pixels."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000, 9)) + png_chunk(b"IEND", b""))


def jpeg_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A baseline JPEG whose SOF0 claims width x height (one grey component), a scan of nothing and an EOI."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    dqt = b"\xff\xdb" + struct.pack(">HB", 67, 0) + bytes([1] * 64)
    dht = b"\xff\xc4" + struct.pack(">HB", 20, 0) + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + dht + sos + b"\x00" * 64 + b"\xff\xd9"


def tiff_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A little-endian TIFF whose first directory claims width x height 8-bit RGB pixels in one uncompressed strip
    of 16 bytes."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, 16)]
    table = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + table + b"\0" * 16


def gif_bomb(side: int = 65535) -> bytes:
    """A GIF whose logical screen and only frame are side x side, disposed to the background (Pillow fills a
    frame-sized canvas for that when it opens the file), with one LZW code of data."""
    control = b"\x21\xf9\x04" + bytes([2 << 2]) + b"\0\0\0\0"
    frame = b"\x2c" + struct.pack("<4HB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", side, side, 0, 0, 0) + control + frame + b"\x3b"


def truncated_gif(rgb: np.ndarray) -> bytes:
    """A real GIF of rgb cut in the middle of its image data."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "GIF")
    data = buffer.getvalue()
    return data[:len(data) * 2 // 3]


def hostile_folder(folder, good: np.ndarray, small: bool = True) -> dict[str, str]:
    """Hostile files plus good.png (``good``) in folder: name -> what each one is. The bombs are headers of a few
    hundred bytes; zero.png is a link to /dev/zero, pipe.png a FIFO; tiny.png (``small``) is 2x2 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"png_bomb.png": png_bomb(), "jpeg_bomb.jpg": jpeg_bomb(), "tiff_bomb.tif": tiff_bomb(),
             "gif_bomb.gif": gif_bomb(), "cut.gif": truncated_gif(good)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    os.symlink("/dev/zero", folder / "zero.png")
    os.mkfifo(folder / "pipe.png")
    if small:
        Image.fromarray(good[:2, :2]).save(folder / "tiny.png")
    Image.fromarray(good).save(folder / "good.png")
    return {**dict.fromkeys(files, "a header claiming more pixels than it holds"), "cut.gif": "a truncated GIF",
            "zero.png": "a link to /dev/zero", "pipe.png": "a FIFO", **({"tiny.png": "2x2 pixels"} if small else {})}


def run_measured(argv: list[str], cwd, timeout: float = 120) -> tuple[int, str, str, int]:
    """Run a command -> (exit code, stdout, stderr, its peak resident memory in bytes). The peak is that child's
    alone: os.wait4 returns the rusage of the process it reaps (ru_maxrss is in KiB on Linux). A command still
    running after ``timeout`` seconds (a FIFO it blocks on) is killed, and the test then fails on its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024
