"""Image files: reading them into numpy arrays and writing arrays back, never half-written.

Arrays are HxWx3 in **RGB** order (OpenCV's BGR is converted on the way in and out), uint8 or uint16, as stored:
no EXIF orientation or colour profile is applied. Every failure names the file, in one line (ImageReadError).

Reading refuses a hostile file before it costs memory or time: only a regular file is opened (a FIFO would block,
a device never ends), its size is bounded by the pixel limit, and its header (image_header.py) is checked against
the limit before any decoder sees the bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

import cv2
import numpy as np

from .fileio import OutputError, write_bytes_atomic
from .image_header import DEFAULT_MAX_PIXELS, HeaderError, ImageHeader, max_file_bytes, png_damage, probe, size_refusal

# What the scripts read as images (OpenCV decodes them all); the lossless ones keep their format when written back.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
LOSSLESS_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")
# What photo upscaling reads: the above, plus GIF and the phone formats HEIC and AVIF (decoded by Pillow).
HEIF_EXTENSIONS = (".heic", ".heif")
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS + (".gif", *HEIF_EXTENSIONS, ".avif")
# Formats that hold an ICC profile, EXIF and XMP when photo_metadata.py writes them.
METADATA_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# The upscaling command's --format choices and the extensions each is written with (the first) or recognised by.
OUTPUT_FORMATS = {"png": (".png",), "jpg": (".jpg", ".jpeg"), "webp": (".webp",)}


# What each lossy format cannot hold (photo_metadata.check_writable refuses it; the upscaling command writes PNG).
_FORMAT_NAMES = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP"}


def unwritable_reason(ext: str, dtype: np.dtype, has_alpha: bool) -> str | None:
    """Why a file with extension ``ext`` cannot hold pixels of ``dtype`` (with alpha or not): "JPEG holds no alpha",
    "WebP holds no 16-bit pixels" (JPEG and WebP are 8-bit, JPEG has no alpha); None when it can."""
    name = _FORMAT_NAMES.get(ext.lower())
    if name is not None and np.dtype(dtype) != np.uint8:
        return f"{name} holds no 16-bit pixels"
    if name == "JPEG" and has_alpha:
        return "JPEG holds no alpha"
    return None


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""


class ImageWriteError(OutputError):
    """An image file could not be written; the message names the file and the reason."""


def _truncation_reason(data: bytes) -> str | None:
    """Why an encoded JPEG/PNG looks cut short or damaged, or None. libjpeg only *warns* on a truncated JPEG and
    OpenCV then returns a partly grey image, so the markers are checked here instead of trusting the decoder; a
    PNG's chunks are checked so that libpng never prints a line of its own (image_header.png_damage)."""
    if data[:2] == b"\xff\xd8":  # JPEG
        # The end-of-image marker FFD9 must follow the last start-of-scan FFDA. Entropy-coded data never contains
        # FFD9/FFDA (0xFF is byte-stuffed), and an EXIF thumbnail's own FFD9 comes before the main image's scans, so
        # this also accepts files with trailing padding after EOI.
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        return png_damage(data)
    return None


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _not_regular(path: str, mode: int) -> ImageReadError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    link = f", through a link to {os.path.realpath(path)}" if os.path.islink(path) else ""
    return ImageReadError(f"{path}: not a regular file ({kind}{link}); not read")


def read_image_bytes(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an image file. Only a regular file is opened: a FIFO, device or socket, or a link to one, is
    refused unopened (opening a FIFO blocks, a device never ends); so is a file larger than an image within
    ``max_pixels`` can need (image_header.max_file_bytes). Raises ImageReadError naming the file."""
    path = os.fspath(path)
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(path, status.st_mode)
        limit = max_file_bytes(max_pixels)
        if status.st_size > limit:
            raise ImageReadError(f"{path}: a file of {status.st_size / 2**30:.1f} GiB, more than an image within "
                                 f"--max-pixels {max_pixels} can need; not read")
        # O_NONBLOCK: should the file be swapped for a FIFO since the check, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode)
            # The size asked for is allocated up front by read(n): the file's own, one byte more to see it grow.
            data = f.read(status.st_size + 1)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file")
    if len(data) > status.st_size:
        raise ImageReadError(f"{path}: grew while it was read (still being written?); not read")
    return data


def image_header(data: bytes, name: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader | None:
    """The header of encoded image bytes (image_header.probe), or None for a format not parsed there (HEIC, AVIF).
    Raises ImageReadError naming ``name`` for a header that is cut short or malformed, or over ``max_pixels``."""
    try:
        header = probe(data)
    except HeaderError as error:
        raise ImageReadError(f"{os.fspath(name)}: {error}") from None
    refusal = None if header is None else size_refusal(header, max_pixels)
    if refusal:
        raise ImageReadError(f"{os.fspath(name)}: {refusal}")
    return header


def decode_image(data: bytes, name: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Encoded JPEG/PNG/BMP/TIFF/WebP/PNM bytes -> (RGB, alpha or None), as ``read_image_with_alpha`` returns them.
    Check the header first (``image_header``): OpenCV allocates what it claims. Raises ImageReadError naming
    ``name`` for damaged data and for whatever the decoder raises."""
    path = os.fspath(name)
    reason = _truncation_reason(data)
    if reason:
        raise ImageReadError(f"{path}: {reason}")
    try:
        # imdecode on bytes (not imread on the path) so that non-ASCII paths work on every OS and the bytes are read
        # once.
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # e.g. over OpenCV's own pixel limit (2**30) when --max-pixels is set above it
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({e.err} in {e.func})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: out of memory while decoding it") from None
    if img is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt, or a format OpenCV cannot read)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: unsupported pixel type {img.dtype} (only 8- and 16-bit images)")
    return _split_channels(img, path)


def _split_channels(img: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    alpha = None
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        gray = img if img.ndim == 2 else img[:, :, 0]
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    elif channels == 2:  # gray + alpha
        rgb = np.repeat(img[:, :, :1], 3, axis=2)
        alpha = img[:, :, 1].copy()
    elif channels == 3:
        rgb = img[:, :, ::-1]
    elif channels == 4:
        rgb = img[:, :, 2::-1]
        alpha = img[:, :, 3].copy()
    else:
        raise ImageReadError(f"{path}: unsupported channel count {channels}")
    return np.ascontiguousarray(rgb), alpha


def read_image_with_alpha(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read JPEG/PNG/BMP/TIFF/WebP/PNM -> (RGB HxWx3 uint8 or uint16, alpha HxW of the same dtype or None).

    Grayscale is replicated to three channels (so its Y is 16 + 219 g/255, as with ``cv2.IMREAD_COLOR``); 16-bit
    files stay uint16. Pixels are returned as stored: EXIF orientation is not applied (``IMREAD_UNCHANGED``).
    Raises ImageReadError naming the file for a missing, empty, corrupt, truncated or unsupported image, for one
    whose header claims more than ``max_pixels`` pixels (refused before decoding), and for a path that is not a
    regular file (``read_image_bytes``).
    """
    path = os.fspath(path)
    return decode_image(read_image_file(path, max_pixels)[0], path)


def read_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, ImageHeader]:
    """The bytes of an image file OpenCV decodes and its header, checked (``read_image_bytes``, ``image_header``):
    what is safe to hand to ``decode_image`` or ``cv2.imdecode``. Raises ImageReadError naming the file."""
    path = os.fspath(path)
    data = read_image_bytes(path, max_pixels)
    header = image_header(data, path, max_pixels)
    if header is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt, or a format OpenCV cannot read)")
    return data, header


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as RGB HxWx3 uint8/uint16 (alpha dropped). See ``read_image_with_alpha``."""
    return read_image_with_alpha(path, max_pixels)[0]


def encode_image(img: np.ndarray, ext: str, params: Sequence[int] = (), name: str | os.PathLike = "") -> bytes:
    """An RGB(A) or grayscale uint8/uint16 image encoded in the format of ``ext`` (".png", ".webp", ...) with
    OpenCV's ``params`` (e.g. ``[cv2.IMWRITE_WEBP_QUALITY, 95]``). Errors name ``name`` (the file), else ``ext``."""
    name = os.fspath(name) or ext
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{name}: expected uint8 or uint16 pixels, got {img.dtype} (quantise first)")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    elif img.ndim != 2 and not (img.ndim == 3 and img.shape[2] == 1):
        raise ValueError(f"{name}: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(img), list(params))
    except cv2.error as e:
        raise ImageWriteError(f"{name}: cannot encode as {ext}: {str(e).strip().splitlines()[-1]}") from None
    if not ok:
        raise ImageWriteError(f"{name}: OpenCV could not encode the image as {ext}")
    return encoded.tobytes()


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an RGB(A) or grayscale uint8/uint16 image; the format follows the extension (.png, .jpg, .bmp, .tif, ...).

    Encoded in memory, then written with ``fileio.atomic_write``: a crash or a full disk never leaves a half-written
    image that a later run would read as valid. Raises ImageWriteError naming the file and the reason.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    if not ext:
        raise ImageWriteError(f"{path}: no file extension to choose the image format from")
    write_image_bytes(path, encode_image(img, ext, name=path))


def write_image_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write an encoded image with ``fileio.write_bytes_atomic``; raises ImageWriteError naming the file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImageWriteError(f"{path}: folder {folder} does not exist")
    try:
        write_bytes_atomic(path, data)
    except OutputError as error:
        raise ImageWriteError(str(error)) from None
