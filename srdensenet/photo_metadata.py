"""Photos as phones and cameras write them: EXIF orientation, ICC colour profile, EXIF and XMP, read and written with
Pillow around image_files' pixels.

``read_photo`` returns upright pixels and the metadata; ``write_photo`` writes pixels with the metadata that still
describes them (Orientation 1, the new pixel dimensions, no stale thumbnail, a profile only where its colour space
matches). Pixels are decoded by OpenCV as before; Pillow reads the metadata and decodes what OpenCV cannot (GIF, HEIC,
AVIF). Without metadata OpenCV encodes; with it Pillow encodes the whole file with OpenCV's settings, except 16-bit
colour PNG (no such Pillow mode), where the chunks are spliced into OpenCV's file. Metadata that cannot be written
is left out with one warning: a finished upscale is always written. docs/inference.md says what is carried where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin, UnidentifiedImageError

from . import image_files
from .image_files import (
    HEIF_EXTENSIONS,
    LOSSY_EXTENSIONS,
    METADATA_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
)
from .image_header import DEFAULT_MAX_PIXELS, ImageHeader, size_refusal

_EXIF_IFD, _ORIENTATION, _WIDTH, _HEIGHT, _PIXEL_X, _PIXEL_Y = 0x8769, 0x0112, 0x0100, 0x0101, 0xA002, 0xA003
_GPS_IFD = 0x8825
# Orientation, description, make, model, software, date, artist, copyright.
_DESCRIPTIVE_TAGS = (_ORIENTATION, 0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_PILLOW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".png": "PNG"}
_PIECES = (("icc_profile", "colour profile"), ("exif", "EXIF"), ("xmp", "XMP"))
# What one JPEG marker segment holds (65533 bytes) less each piece's own header, as Pillow writes them: EXIF is
# given with its "Exif\0\0", XMP gets a 29-byte namespace, a profile is split over at most 255 APP2 markers.
_JPEG_LIMITS = {"exif": 65533, "xmp": 65533 - 29, "icc_profile": 255 * (65533 - 14)}
_PNG_SIGNATURE, _PNG_MAX_CHUNK, _PNG_XMP_KEY = b"\x89PNG\r\n\x1a\n", 2**31 - 1, "XML:com.adobe.xmp"
_TIFF_NS, _EXIF_NS = "http://ns.adobe.com/tiff/1.0/", "http://ns.adobe.com/exif/1.0/"
_XML_NS = "http://www.w3.org/XML/1998/namespace"  # the xml: prefix (xml:lang), bound without a declaration
_AROUND_ROOT = (("<?", "?>"), ("<!--", "-->"))  # processing instructions (<?xpacket?>) and comments


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


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _open(path: str, data: bytes) -> Image.Image | None:
    """The file's bytes opened by Pillow (header only), or None when Pillow cannot identify them (OpenCV then says
    why). Its header was checked first (image_files.image_header): Pillow's GIF reader fills a frame-sized canvas
    when it opens a file."""
    ext = _extension(path)
    if ext in HEIF_EXTENSIONS:
        try:
            import pillow_heif
        except ImportError:
            raise ImageReadError(f"{path}: reading HEIC needs the optional package pillow-heif "
                                 "(pip install pillow-heif, or pip install \"srdensenet[photos]\")") from None
        pillow_heif.register_heif_opener()
    try:
        with _any_size():
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if ext == ".avif":
            raise ImageReadError(f"{path}: reading AVIF needs Pillow built with AVIF support (Pillow >= 11.3 "
                                 "wheels: pip install -U Pillow)") from None
        return None
    except (OSError, ValueError, SyntaxError, EOFError):
        return None  # damaged: image_files names the problem


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


def _pillow_pixels(im: Image.Image, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and alpha (or None) of an image OpenCV cannot decode; Pillow's errors (a truncated GIF, a damaged
    HEIC) become one ImageReadError naming the file."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    try:
        with _any_size():
            pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except MemoryError:
        raise ImageReadError(f"{path}: out of memory while decoding it") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # DecompressionBombError is a ValueError too
        raise _undecodable(path, error) from None
    return np.ascontiguousarray(pixels[:, :, :3]), (pixels[:, :, 3].copy() if has_alpha else None)


def _pillow_header(im: Image.Image, path: str, max_pixels: int) -> int:
    """The frame count of a file whose header image_header does not parse (HEIC, AVIF): Pillow's plugin read it;
    refused like the others over ``max_pixels``."""
    width, height = im.size
    refusal = size_refusal(ImageHeader(im.format or "image", width, height), max_pixels)
    if refusal:
        raise ImageReadError(f"{path}: {refusal}")
    try:
        return getattr(im, "n_frames", 1)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise _undecodable(path, error) from None


def _metadata(im: Image.Image) -> PhotoMetadata:
    tags = _exif_of(im)
    orientation = int(tags.get(_ORIENTATION, 1))
    exif = tags.tobytes() if len(tags) else None
    return PhotoMetadata(orientation if 1 <= orientation <= 8 else 1, im.info.get("icc_profile") or None, exif,
                         _xmp_of(im))


def read_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, np.ndarray | None, PhotoMetadata]:
    """Read an image upright -> (RGB HxWx3 uint8/uint16, alpha or None, its PhotoMetadata with orientation as stored).

    The EXIF orientation is applied to the pixels. Reads everything ``image_files.read_image_with_alpha`` reads
    (with OpenCV, as stored), and GIF, HEIC (with pillow-heif) and AVIF with Pillow. The file is read once, only
    if it is a regular file, and its header is checked before anything is decoded (``image_files.image_header``).
    Raises ImageReadError naming the file for an unreadable image, one over ``max_pixels`` pixels, a multi-frame
    file (animated GIF/WebP, multi-page TIFF) or a missing reader.
    """
    path = os.fspath(path)
    data = image_files.read_image_bytes(path, max_pixels)
    header = image_files.image_header(data, path, max_pixels)
    # Pillow reads a header image_header does not parse only for its own formats (HEIC, AVIF), as before.
    im = None if header is None and _extension(path) in image_files.IMAGE_EXTENSIONS else _open(path, data)
    if im is None and header is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt, or a format OpenCV cannot read)")
    if im is None:
        rgb, alpha = image_files.decode_image(data, path)
        return rgb, alpha, PhotoMetadata()
    with im:
        frames = header.frames if header is not None else _pillow_header(im, path, max_pixels)
        if frames > 1:
            raise ImageReadError(f"{path}: {frames} frames (animated or multi-page); only single images are "
                                 "upscaled: save the frame you want as its own file")
        try:
            metadata = _metadata(im)
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
            raise ImageReadError(f"{path}: unreadable metadata ({_one_line(error)})") from None
        if header is not None and header.format != "GIF":
            rgb, alpha = image_files.decode_image(data, path)
        else:
            rgb, alpha = _pillow_pixels(im, path)
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


class _XmpBuilder(ET.TreeBuilder):
    """ElementTree's builder, keeping comments and processing instructions and recording which xmlns declarations
    each element makes, so that the packet can be written back with its own prefixes."""

    def __init__(self) -> None:
        super().__init__(insert_comments=True, insert_pis=True)
        self.declared: dict[ET.Element, list[tuple[str, str]]] = {}
        self._pending: list[tuple[str, str]] = []

    def start_ns(self, prefix: str, uri: str) -> None:
        self._pending.append((prefix, uri))

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        element = super().start(tag, attrs)
        self.declared[element], self._pending = self._pending, []
        return element


def _split_packet(text: str) -> tuple[str, str, str]:
    """(before, root element, after) of an XMP packet. What surrounds the root (the <?xpacket?> wrapper, padding,
    comments) is outside ElementTree's tree, so it is cut off here and put back as it was."""
    start, end, moved = 0, len(text), True
    while moved:
        moved = False
        while start < end and (text[start].isspace() or text[start] == "\ufeff"):
            start += 1
        for opener, closer in _AROUND_ROOT:
            if text.startswith(opener, start):
                start, moved = text.index(closer, start + len(opener)) + len(closer), True
    moved = True
    while moved:
        moved = False
        while end > start and (text[end - 1].isspace() or text[end - 1] == "\0"):  # NULs: padding by some writers
            end -= 1
        for opener, closer in _AROUND_ROOT:
            if text.endswith(closer, start, end):
                end, moved = text.rindex(opener, start, end - len(closer)), True
    if not text.startswith("<", start) or text.startswith("<!", start):
        raise ValueError("no root element (or a DOCTYPE, which XMP does not have)")
    return text[:start], text[start:end], text[end:]


def _restore_prefixes(element: ET.Element, declared: dict, scope: dict[str, str]) -> None:
    """Name ``element`` and its subtree with the document's own prefixes and xmlns declarations, in place: ElementTree
    would write {uri}name as ns0:name, which XMP readers matching on prefixes do not recognise."""
    own = declared.get(element, [])
    scope = {**scope, **dict(own)}

    def name(qualified: str, attribute: bool) -> str:
        if not qualified.startswith("{"):
            return qualified
        uri, local = qualified[1:].split("}", 1)
        if uri == _XML_NS:
            return f"xml:{local}"
        prefixes = [p for p, u in scope.items() if u == uri and (p or not attribute)]
        if not prefixes:
            raise ValueError(f"no prefix declared for {uri}")
        return f"{prefixes[0]}:{local}" if prefixes[0] else local

    attributes = {("xmlns:" + p if p else "xmlns"): uri for p, uri in own}
    attributes.update((name(key, True), value) for key, value in element.attrib.items())
    element.tag = name(element.tag, False)
    element.attrib.clear()
    element.attrib.update(attributes)
    for child in element:
        if isinstance(child.tag, str):  # not a comment or processing instruction
            _restore_prefixes(child, declared, scope)


def updated_xmp(xmp: bytes, width: int, height: int) -> bytes:
    """XMP for the output: tiff:Orientation 1 and the new dimensions (tiff:/exif: attributes or simple elements, by
    namespace); the rest of the packet as it was. Raises ValueError or SyntaxError for XMP that is not well-formed."""
    before, body, after = _split_packet(xmp.decode("utf-8"))
    builder = _XmpBuilder()
    root = ET.fromstring(body, ET.XMLParser(target=builder))
    values = {f"{{{_TIFF_NS}}}Orientation": "1", f"{{{_TIFF_NS}}}ImageWidth": str(width),
              f"{{{_TIFF_NS}}}ImageLength": str(height), f"{{{_EXIF_NS}}}PixelXDimension": str(width),
              f"{{{_EXIF_NS}}}PixelYDimension": str(height)}
    changed = False
    for element in root.iter():
        for key in [key for key in element.attrib if key in values and element.attrib[key] != values[key]]:
            element.attrib[key], changed = values[key], True
        if element.tag in values and not len(element) and (element.text or "").strip() != values[element.tag]:
            element.text, changed = values[element.tag], True
    if not changed:
        return xmp  # byte for byte
    _restore_prefixes(root, builder.declared, {})
    return (before + ET.tostring(root, encoding="unicode") + after).encode("utf-8")


def _one_line(error: BaseException) -> str:
    """An error's message on one line: the commands print each error and warning as one line."""
    return " ".join(str(error).split())


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {_one_line(error)}"


def _undecodable(path: str, error: BaseException) -> ImageReadError:
    """What Pillow's errors (a truncated GIF, a damaged HEIC) become: one line naming the file."""
    return ImageReadError(f"{path}: not decodable by Pillow ({_one_line(error)})")


def _carried(update, data: bytes | None, what: str, width: int, height: int) -> bytes | None:
    """``update(data, width, height)``, or None with one warning where ``data`` cannot be read."""
    if not data:
        return None
    try:
        return update(data, width, height)
    except Exception as error:  # Pillow and ElementTree raise many types for damaged data: the image goes on
        warnings.warn(f"{what} not carried: it cannot be read ({_why(error)}); the image is written without it",
                      stacklevel=3)
        return None


def output_metadata(metadata: PhotoMetadata, pixels: np.ndarray) -> PhotoMetadata:
    """The metadata that still describes ``pixels`` (upright, upscaled): orientation 1, dimensions updated, and the
    ICC profile only where its colour space matches (RGB profile on colour, GRAY on grayscale); warns when a profile
    is dropped. A dropped profile leaves the output untagged, which viewers show as sRGB. EXIF or XMP that cannot be
    read is dropped with a warning."""
    height, width = pixels.shape[:2]
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    icc = metadata.icc_profile
    if icc is not None:
        space = profile_colour_space(icc)
        if space != ("GRAY" if gray else "RGB"):
            warnings.warn(f"{space or 'unreadable'} colour profile not carried onto a "
                          f"{'grayscale' if gray else 'colour'} output (it is written untagged: sRGB)", stacklevel=2)
            icc = None
    return PhotoMetadata(1, icc, _carried(_updated_exif, metadata.exif, "EXIF", width, height),
                         _carried(updated_xmp, metadata.xmp, "XMP", width, height))


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


def _pillow_options(ext: str, quality: int | None, gray: bool) -> dict:
    """Pillow's save() options that encode as OpenCV does without metadata (measured: the same JPEG and WebP bytes,
    the same PNG pixels)."""
    if ext in (".jpg", ".jpeg"):
        # OpenCV: quality 95, 4:2:0. Pillow applies a subsampling to the one component of a gray JPEG too: not there.
        return {"quality": 95 if quality is None else int(quality), **({} if gray else {"subsampling": "4:2:0"})}
    if ext == ".webp":  # libwebp's simple lossless API, which OpenCV calls, encodes at quality (effort) 70
        return {"lossless": True, "quality": 70} if quality is None else {"quality": int(quality)}
    if ext == ".png":  # OpenCV's zlib settings: level 1 and Z_RLE (compress_type, Pillow's zlib strategy option)
        return {"compress_level": 1, "compress_type": zlib.Z_RLE}
    return {}


def _pillow_image(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype == np.uint16:  # little-endian uint16 is Pillow's I;16 (gray only: no 16-bit colour mode)
        pixels = pixels.astype("<u2", copy=False)
    return Image.fromarray(pixels)


def _pillow_save(image: Image.Image, fmt: str, metadata: PhotoMetadata, **options) -> bytes:
    extra = {"icc_profile": metadata.icc_profile, "exif": metadata.exif}
    if metadata.xmp and fmt == "PNG":  # Pillow writes a PNG's XMP as the iTXt chunk that it reads it from
        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_itxt(_PNG_XMP_KEY, metadata.xmp.decode("utf-8"))
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


class SpliceError(ValueError):
    """An encoded PNG that the metadata splice does not accept; the message says why."""


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data (PNG spec, section 5.3)."""
    if len(body) > _PNG_MAX_CHUNK:
        raise SpliceError(f"{kind.decode()} of {len(body)} bytes is over PNG's chunk limit")
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of each chunk of a PNG file, checked: the signature, IHDR first and 13 bytes long, every
    length within the file, every CRC, and IEND last with nothing after it."""
    if not data.startswith(_PNG_SIGNATURE):
        raise SpliceError("no PNG signature")
    view, chunks, pos = memoryview(data), [], len(_PNG_SIGNATURE)
    while not chunks or chunks[-1][0] != b"IEND":
        if pos + 12 > len(data):
            raise SpliceError(f"cut short at byte {pos} (no IEND)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > _PNG_MAX_CHUNK or end > len(data):
            raise SpliceError(f"chunk {kind!r} at byte {pos} runs past the end")
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise SpliceError(f"chunk {kind!r} at byte {pos} has a wrong CRC")
        if not chunks and (kind != b"IHDR" or length != 13):
            raise SpliceError("the first chunk is not a 13-byte IHDR")
        chunks.append((kind, pos, end))
        pos = end
    if pos != len(data):
        raise SpliceError(f"{len(data) - pos} bytes after IEND")
    return chunks


def spliced_png(encoded: bytes, metadata: PhotoMetadata) -> bytes:
    """An encoded PNG with the metadata's iCCP, iTXt (XMP) and eXIf chunks, as Pillow writes them, put right after IHDR
    (before PLTE and IDAT, where the spec wants them). Chunks they replace go: iCCP replaces sRGB and cICP (which
    would contradict or override it), eXIf an eXIf. Raises SpliceError for a file it does not accept."""
    added, replaced = [], set()
    if metadata.icc_profile:
        added.append(png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(metadata.icc_profile)))
        replaced |= {b"iCCP", b"sRGB", b"cICP"}
    if metadata.xmp:  # keyword, compression flag and method 0, no language, no translated keyword
        added.append(png_chunk(b"iTXt", _PNG_XMP_KEY.encode() + b"\0\0\0\0\0" + metadata.xmp))
    if metadata.exif:
        tiff = metadata.exif[6:] if metadata.exif.startswith(b"Exif\0\0") else metadata.exif
        added.append(png_chunk(b"eXIf", tiff))
        replaced.add(b"eXIf")
    (_, _, header_end), *rest = png_chunks(encoded)
    view = memoryview(encoded)
    kept = [view[start:end] for kind, start, end in rest if kind not in replaced]
    return b"".join([view[:header_end], *added, *kept])


def _fitting(metadata: PhotoMetadata, ext: str) -> tuple[PhotoMetadata, list[str]]:
    """The metadata less what ``ext`` cannot hold (a JPEG's EXIF or XMP over one marker), and what was left out."""
    if ext not in (".jpg", ".jpeg"):
        return metadata, []
    fitting, lost = {}, []
    for field, label in _PIECES:
        value, limit = getattr(metadata, field), _JPEG_LIMITS[field]
        if value is not None and len(value) > limit:
            fitting[field] = None
            lost.append(f"{label} ({len(value):,} bytes, over the {limit:,} that a JPEG holds)")
    return dataclasses.replace(metadata, **fitting), lost


def _encode_with_metadata(pixels: np.ndarray, ext: str, metadata: PhotoMetadata, quality: int | None,
                          name: str) -> bytes:
    """Pixels encoded whole by Pillow with the metadata, or (16-bit colour PNG, which Pillow cannot write) by OpenCV
    with the metadata chunks spliced in. Metadata that cannot be written costs the metadata, never the image: it is
    left out with one warning."""
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    metadata, lost = _fitting(metadata, ext)
    plain = None if pixels.dtype == np.uint8 or gray else image_files.encode_image(pixels, ext, name=name)
    tagged = None
    if metadata != PhotoMetadata():
        try:
            if plain is None:
                options = _pillow_options(ext, quality, gray)
                tagged = _pillow_save(_pillow_image(pixels), _PILLOW_FORMATS[ext], metadata, **options)
            else:
                tagged = spliced_png(plain, metadata)
        except Exception as error:  # any failure to embed the metadata: the upscale is written without it
            pieces = [label for field, label in _PIECES if getattr(metadata, field)]
            lost.append(f"{', '.join(pieces)} (embedding failed: {_why(error)})")
    if lost:
        warnings.warn(f"{name} is written without its {'; '.join(lost)}", stacklevel=3)
    if tagged is not None:
        return tagged
    if plain is not None:
        return plain
    return image_files.encode_image(pixels, ext, _opencv_params(ext, quality), name=name)


def encode_photo(pixels: np.ndarray, ext: str, metadata: PhotoMetadata | None = None, quality: int | None = None,
                 name: str | os.PathLike = "") -> bytes:
    """Pixels (as ``image_files.encode_image`` takes them) encoded as ``ext`` with ``metadata`` as given (see
    ``output_metadata``) where the format holds it. ``quality`` (1-100): JPEG and WebP; WebP without it is lossless.
    Without metadata OpenCV encodes; with it Pillow does, with OpenCV's settings (16-bit colour PNG: OpenCV, and the
    metadata chunks spliced in). Metadata that cannot be written is left out with one warning."""
    ext = ext.lower()
    pixels = np.asarray(pixels)
    check_writable(ext, pixels.dtype, pixels.ndim == 3 and pixels.shape[2] in (2, 4), name or ext)
    empty = metadata is None or metadata == PhotoMetadata()
    pillow_can = pixels.dtype == np.uint8 or pixels.ndim == 2 or pixels.shape[2] == 1
    if not empty and ext in (".webp", ".tif", ".tiff") and not pillow_can:
        warnings.warn(f"{os.fspath(name) or ext}: 16-bit colour {ext} is written without its colour profile and "
                      "metadata (write .png to keep them)", stacklevel=2)
        empty = True
    if empty or ext not in METADATA_EXTENSIONS:
        return image_files.encode_image(pixels, ext, _opencv_params(ext, quality), name=name)
    return _encode_with_metadata(pixels, ext, metadata, quality, os.fspath(name) or ext)


def write_photo(path: str | os.PathLike, pixels: np.ndarray, metadata: PhotoMetadata | None = None,
                quality: int | None = None) -> None:
    """Write upright pixels atomically (``fileio.write_bytes_atomic``) with what of ``metadata`` still describes them
    (``output_metadata``): the format follows the extension. Metadata that cannot be written is left out with a
    warning; the image is always written. Raises ImageWriteError naming the file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".webp" and (pixels.ndim == 2 or pixels.shape[2] == 1):
        pixels = np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2)  # WebP has no grayscale
    kept = output_metadata(metadata, pixels) if metadata is not None else None
    if kept is not None and kept != PhotoMetadata() and ext not in METADATA_EXTENSIONS and kept.icc_profile:
        warnings.warn(f"{path}: {ext} holds no colour profile here; written untagged (sRGB)", stacklevel=2)
    image_files.write_image_bytes(path, encode_photo(pixels, ext, kept, quality, name=path))
