"""Helpers shared by several test modules (plain functions and constants; fixtures live in conftest.py)."""

import importlib.util
import json
import os
import struct
import subprocess
import sys
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
