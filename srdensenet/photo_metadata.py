"""Photos as phones and cameras write them: EXIF orientation, ICC colour profile, EXIF and XMP, read and written with
Pillow around image_files' pixels.

``read_photo`` returns upright pixels and the metadata; ``write_photo`` writes pixels with the metadata that still
describes them (Orientation 1, the new pixel dimensions, no stale thumbnail, a profile only where its colour space
matches). Pixels are decoded and (for PNG and JPEG) encoded by OpenCV as before; Pillow reads and writes the
metadata, decodes what OpenCV cannot (GIF, HEIC, AVIF) and encodes WebP and TIFF with metadata. docs/inference.md
says what is carried where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from . import image_files
from .image_files import (
    HEIF_EXTENSIONS,
    LOSSY_EXTENSIONS,
    METADATA_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
)

_EXIF_IFD, _ORIENTATION, _WIDTH, _HEIGHT, _PIXEL_X, _PIXEL_Y = 0x8769, 0x0112, 0x0100, 0x0101, 0xA002, 0xA003
_GPS_IFD = 0x8825
# Orientation, description, make, model, software, date, artist, copyright.
_DESCRIPTIVE_TAGS = (_ORIENTATION, 0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_PILLOW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG"}


@dataclasses.dataclass(frozen=True)
class PhotoMetadata:
    """What a photo file says about its pixels: EXIF orientation (1-8), ICC profile, EXIF and XMP (raw bytes)."""

    orientation: int = 1
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None

    def stripped(self) -> PhotoMetadata:
        """The colour profile alone: EXIF and XMP (date, camera, GPS) dropped, for privacy."""
        return PhotoMetadata(icc_profile=self.icc_profile)


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """HxW[xC] pixels as stored -> upright, for EXIF orientation 1-8 (the same turns as Pillow's exif_transpose)."""
    turns = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
             8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turns.get(orientation, turns[1])(pixels))


@contextlib.contextmanager
def _any_size() -> Iterator[None]:
    # Pillow refuses very large images as "decompression bombs"; inference sizes its work to memory itself.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _open(path: str) -> Image.Image | None:
    """The file opened by Pillow (header only), or None when Pillow cannot identify it (OpenCV then says why)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in HEIF_EXTENSIONS:
        try:
            import pillow_heif
        except ImportError:
            raise ImageReadError(f"{path}: reading HEIC needs the optional package pillow-heif "
                                 "(pip install -r requirements-photos.txt)") from None
        pillow_heif.register_heif_opener()
    try:
        with _any_size():
            return Image.open(path)
    except UnidentifiedImageError:
        if ext == ".avif":
            raise ImageReadError(f"{path}: reading AVIF needs Pillow built with AVIF support (Pillow >= 11.3 "
                                 "wheels: pip install -U Pillow)") from None
        return None
    except (OSError, ValueError, SyntaxError):
        return None  # missing, empty or damaged: read_image_with_alpha names the problem


def _xmp_of(im: Image.Image) -> bytes | None:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    return xmp.encode() if isinstance(xmp, str) else xmp


def _exif_of(im: Image.Image) -> Image.Exif:
    """The EXIF tags of an opened file, without decoding its pixels."""
    if im.format == "PNG":  # Pillow's getexif() would decode a PNG's pixels to look for an eXIf chunk after them
        tags = Image.Exif()
        if im.info.get("exif"):
            tags.load(im.info["exif"])
        return tags
    tags = im.getexif()
    if im.format != "TIFF":
        return tags
    # A TIFF's IFD0 describes its own storage (strips, bits per sample): keep only what describes the photo.
    kept = Image.Exif()
    for tag in _DESCRIPTIVE_TAGS:
        if tag in tags:
            kept[tag] = tags[tag]
    for ifd in (_EXIF_IFD, _GPS_IFD):
        if tags.get_ifd(ifd):
            kept[ifd] = dict(tags.get_ifd(ifd))
    return kept


def _pillow_pixels(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and alpha (or None) of an image OpenCV cannot decode."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    return np.ascontiguousarray(pixels[:, :, :3]), (pixels[:, :, 3].copy() if has_alpha else None)


def read_photo(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, PhotoMetadata]:
    """Read an image upright -> (RGB HxWx3 uint8/uint16, alpha or None, its PhotoMetadata with orientation as stored).

    The EXIF orientation is applied to the pixels. Reads everything ``image_files.read_image_with_alpha`` reads
    (with OpenCV, as stored), and GIF, HEIC (with pillow-heif) and AVIF with Pillow. Raises ImageReadError naming
    the file for an unreadable image, a multi-frame file (animated GIF/WebP, multi-page TIFF) or a missing reader.
    """
    path = os.fspath(path)
    im = _open(path)
    if im is None:
        rgb, alpha = image_files.read_image_with_alpha(path)
        return rgb, alpha, PhotoMetadata()
    with im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise ImageReadError(f"{path}: {frames} frames (animated or multi-page); only single images are "
                                 "upscaled: save the frame you want as its own file")
        tags = _exif_of(im)
        orientation = int(tags.get(_ORIENTATION, 1))
        exif = tags.tobytes() if len(tags) else None
        metadata = PhotoMetadata(orientation if 1 <= orientation <= 8 else 1, im.info.get("icc_profile") or None,
                                 exif, _xmp_of(im))
        if os.path.splitext(path)[1].lower() in image_files.IMAGE_EXTENSIONS:
            rgb, alpha = image_files.read_image_with_alpha(path)
        else:
            with _any_size():
                rgb, alpha = _pillow_pixels(im)
    rgb = apply_orientation(rgb, metadata.orientation)
    alpha = None if alpha is None else apply_orientation(alpha, metadata.orientation)
    return rgb, alpha, metadata


def profile_colour_space(icc_profile: bytes) -> str:
    """The colour space an ICC profile describes: "RGB", "GRAY", "CMYK", ... ("" when it cannot be read)."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.xcolor_space.strip()
    except (OSError, ValueError, ImageCms.PyCMSError):
        return ""


def _updated_exif(exif: bytes, width: int, height: int) -> bytes:
    """EXIF for the output: Orientation 1, the new pixel dimensions; Pillow writes no IFD1, so no stale thumbnail."""
    tags = Image.Exif()
    tags.load(exif)
    tags[_ORIENTATION] = 1
    for key, value in ((_WIDTH, width), (_HEIGHT, height)):
        if key in tags:
            tags[key] = value
    exif_ifd = tags.get_ifd(_EXIF_IFD)
    if exif_ifd:
        exif_ifd[_PIXEL_X], exif_ifd[_PIXEL_Y] = width, height
    return tags.tobytes()


def _updated_xmp(xmp: bytes, width: int, height: int) -> bytes:
    """XMP for the output: tiff:Orientation 1 and the new dimensions, as attributes or elements."""
    values = {b"tiff:Orientation": 1, b"tiff:ImageWidth": width, b"tiff:ImageLength": height,
              b"exif:PixelXDimension": width, b"exif:PixelYDimension": height}
    for name, value in values.items():
        new = str(value).encode()
        xmp = re.sub(rb"(" + name + rb'\s*=\s*["\'])[^"\']*', lambda m, new=new: m.group(1) + new, xmp)
        xmp = re.sub(rb"(<" + name + rb">)[^<]*", lambda m, new=new: m.group(1) + new, xmp)
    return xmp


def output_metadata(metadata: PhotoMetadata, pixels: np.ndarray) -> PhotoMetadata:
    """The metadata that still describes ``pixels`` (upright, upscaled): orientation 1, dimensions updated, and the
    ICC profile only where its colour space matches (RGB profile on colour, GRAY on grayscale); warns when a profile
    is dropped. A dropped profile leaves the output untagged, which viewers show as sRGB."""
    height, width = pixels.shape[:2]
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    icc = metadata.icc_profile
    if icc is not None:
        space = profile_colour_space(icc)
        if space != ("GRAY" if gray else "RGB"):
            warnings.warn(f"{space or 'unreadable'} colour profile not carried onto a "
                          f"{'grayscale' if gray else 'colour'} output (it is written untagged: sRGB)", stacklevel=2)
            icc = None
    return PhotoMetadata(1, icc, metadata.exif and _updated_exif(metadata.exif, width, height),
                         metadata.xmp and _updated_xmp(metadata.xmp, width, height))


def _pillow_save(image: Image.Image, fmt: str, metadata: PhotoMetadata, **options) -> bytes:
    extra = {"icc_profile": metadata.icc_profile, "exif": metadata.exif}
    if metadata.xmp and fmt == "PNG":
        from PIL import PngImagePlugin

        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_itxt("XML:com.adobe.xmp", metadata.xmp.decode("utf-8", "replace"))
    elif metadata.xmp and fmt in ("JPEG", "WEBP"):
        extra["xmp"] = metadata.xmp
    if fmt == "TIFF":  # Pillow's TIFF writer drops IFD0's tags (Make, ...) given as exif=
        tags = Image.Exif()
        tags.load(metadata.exif or b"")
        extra["tiffinfo"] = {tag: (tags.get_ifd(tag) if tag in (_EXIF_IFD, _GPS_IFD) else value)
                             for tag, value in tags.items()}
        extra["exif"] = None
        if metadata.xmp:
            extra["tiffinfo"][700] = metadata.xmp
    buffer = io.BytesIO()
    image.save(buffer, fmt, **{k: v for k, v in extra.items() if v is not None}, **options)
    return buffer.getvalue()


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole chunk) of each PNG chunk: length, type, data, CRC (PNG spec, section 5.3)."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos:pos + 12 + length]
        pos += 12 + length


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, whole segment) of each JPEG header segment before the first scan (SOS)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        yield data[pos + 1], data[pos:pos + 2 + length]
        pos += 2 + length


def check_writable(ext: str, pixels_dtype: np.dtype, has_alpha: bool, name: str | os.PathLike) -> None:
    """Raise ImageWriteError naming ``name`` when the format of ``ext`` cannot hold such pixels: JPEG and WebP are
    8-bit, and JPEG has no alpha (it is refused rather than flattened onto a colour chosen here)."""
    ext = ext.lower()
    if ext in LOSSY_EXTENSIONS and np.dtype(pixels_dtype) != np.uint8:
        raise ImageWriteError(f"{os.fspath(name)}: 16-bit pixels cannot be written as {ext} (8-bit only); "
                              "write .png or .tif")
    if ext in (".jpg", ".jpeg") and has_alpha:
        raise ImageWriteError(f"{os.fspath(name)}: has an alpha channel, which JPEG cannot hold; write .png or .webp")


def _opencv_params(ext: str, quality: int | None) -> list[int]:
    import cv2

    if quality is None or ext not in LOSSY_EXTENSIONS:
        return []
    return [cv2.IMWRITE_WEBP_QUALITY if ext == ".webp" else cv2.IMWRITE_JPEG_QUALITY, int(quality)]


def _pillow_image(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        return Image.fromarray(pixels.astype("<u2"), "I;16")
    return Image.fromarray(pixels)


def _with_metadata(encoded: bytes, ext: str, pixels: np.ndarray, metadata: PhotoMetadata) -> bytes:
    """OpenCV's PNG or JPEG with the metadata chunks/segments that Pillow writes for a 1-pixel image of the same
    kind inserted: the pixels stay OpenCV's, the metadata is Pillow's encoding."""
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    probe = Image.new("L" if gray else "RGB", (1, 1))
    if ext == ".png":
        chunks = [c for kind, c in _png_chunks(_pillow_save(probe, "PNG", metadata))
                  if kind in (b"iCCP", b"eXIf", b"iTXt")]
        header_end = 8 + len(next(_png_chunks(encoded))[1])  # after IHDR
        return encoded[:header_end] + b"".join(chunks) + encoded[header_end:]
    segments = [s for marker, s in _jpeg_segments(_pillow_save(probe, "JPEG", metadata)) if marker in (0xE1, 0xE2)]
    first = next(_jpeg_segments(encoded), (0, b""))
    header_end = 2 + (len(first[1]) if first[0] == 0xE0 else 0)  # after SOI and JFIF's APP0
    return encoded[:header_end] + b"".join(segments) + encoded[header_end:]


def encode_photo(pixels: np.ndarray, ext: str, metadata: PhotoMetadata | None = None, quality: int | None = None,
                 name: str | os.PathLike = "") -> bytes:
    """Pixels (as ``image_files.encode_image`` takes them) encoded as ``ext`` with ``metadata`` as given (see
    ``output_metadata``) where the format holds it. ``quality`` (1-100): JPEG and WebP; WebP without it is lossless.
    PNG and JPEG pixels are OpenCV's; WebP and TIFF with metadata are encoded by Pillow."""
    ext = ext.lower()
    pixels = np.asarray(pixels)
    check_writable(ext, pixels.dtype, pixels.ndim == 3 and pixels.shape[2] in (2, 4), name or ext)
    empty = metadata is None or metadata == PhotoMetadata()
    pillow_can = pixels.dtype == np.uint8 or (ext in (".tif", ".tiff") and pixels.ndim == 2)
    if not empty and ext in (".webp", ".tif", ".tiff") and not pillow_can:
        warnings.warn(f"{os.fspath(name) or ext}: 16-bit colour {ext} is written without its colour profile and "
                      "metadata (write .png to keep them)", stacklevel=2)
        empty = True
    if empty or ext not in METADATA_EXTENSIONS or ext in (".png", ".jpg", ".jpeg"):
        data = image_files.encode_image(pixels, ext, _opencv_params(ext, quality), name=name)
        return data if empty or ext not in METADATA_EXTENSIONS else _with_metadata(data, ext, pixels, metadata)
    options = {"lossless": True} if ext == ".webp" and quality is None else {}
    if ext == ".webp" and quality is not None:
        options["quality"] = int(quality)
    try:
        return _pillow_save(_pillow_image(pixels), _PILLOW_FORMATS[ext], metadata, **options)
    except (OSError, ValueError) as error:
        raise ImageWriteError(f"{os.fspath(name) or ext}: cannot encode as {ext}: {error}") from None


def write_photo(path: str | os.PathLike, pixels: np.ndarray, metadata: PhotoMetadata | None = None,
                quality: int | None = None) -> None:
    """Write upright pixels atomically with what of ``metadata`` still describes them (``output_metadata``): the
    format follows the extension. Raises ImageWriteError naming the file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".webp" and (pixels.ndim == 2 or pixels.shape[2] == 1):
        pixels = np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2)  # WebP has no grayscale
    kept = output_metadata(metadata, pixels) if metadata is not None else None
    if kept is not None and kept != PhotoMetadata() and ext not in METADATA_EXTENSIONS and kept.icc_profile:
        warnings.warn(f"{path}: {ext} holds no colour profile here; written untagged (sRGB)", stacklevel=2)
    image_files.write_image_bytes(path, encode_photo(pixels, ext, kept, quality, name=path))
