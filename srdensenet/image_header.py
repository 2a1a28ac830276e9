"""What an image file says about itself before it is decoded: its format, width, height and frame count.

Decoders allocate what a header claims before they find out that the data behind it is missing: a PNG, JPEG or
TIFF of a few hundred bytes can claim 60000x60000 pixels, and Pillow's GIF reader fills a frame-sized canvas when it
opens the file. So the readers (image_files, photo_metadata) parse the header here first, from the bytes alone,
walking a GIF's or TIFF's blocks to count frames without decoding any, and refuse an image above the pixel limit
(``DEFAULT_MAX_PIXELS``, ``--max-pixels``) before a decoder sees it. ``png_damage`` finds the damage for which
libpng would print a line of its own ("libpng error: ...") before OpenCV returns.

Formats parsed: PNG (and APNG), JPEG, GIF, WebP, BMP, TIFF (and BigTIFF), PNM/PAM/PFM. Others (HEIC, AVIF) give
None: Pillow's plugins read their headers.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

# Pixels per image (per frame) read by default: 100 Mpx is a 12000x8000 photo, more than any camera of today makes,
# and at most 800 MB of 16-bit RGBA; a header claiming more is refused before anything is allocated.
DEFAULT_MAX_PIXELS = 100_000_000
# The most bytes per pixel a file of a format read here can legitimately need (16-bit RGBA, uncompressed), and room
# for its metadata: a regular file larger than that for the limit is refused unread.
MAX_BYTES_PER_PIXEL, METADATA_BYTES = 8, 256 << 20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_CRITICAL_PNG = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
_TIFF_MAX_PAGES = 100_000  # more pages than any real file: a longer chain is a loop or garbage


@dataclass(frozen=True)
class ImageHeader:
    """What a header says: the format's name, the pixel size (the largest frame's extent) and the frames."""

    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


class HeaderError(ValueError):
    """A header that is cut short or malformed; the message says what is wrong (the caller adds the file name)."""


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image within ``max_pixels`` can need (see MAX_BYTES_PER_PIXEL)."""
    return MAX_BYTES_PER_PIXEL * max_pixels + METADATA_BYTES


def probe(data: bytes) -> ImageHeader | None:
    """The header of encoded image bytes, or None for a format not parsed here. Raises HeaderError for a header
    that is cut short, malformed or claims no pixels. Reads the bytes only: nothing is decoded or allocated."""
    parse = next((parse for magic, parse in _PARSERS if data.startswith(magic)), None)
    if parse is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        parse = _webp
    if parse is None:
        return None
    header = parse(memoryview(data))
    if header.width < 1 or header.height < 1:
        raise HeaderError(f"{header.format} header claims {header.width}x{header.height} pixels")
    return header


def size_refusal(header: ImageHeader, max_pixels: int) -> str | None:
    """Why an image of this header is refused under ``max_pixels`` (one clause), or None when it is within it."""
    if header.pixels <= max_pixels:
        return None
    return (f"{header.width}x{header.height} pixels ({header.pixels / 1e6:,.0f} Mpx) is over the limit of "
            f"{max_pixels / 1e6:,.0f} Mpx per image (--max-pixels {max_pixels}); not decoded")


def _at(data: memoryview, pos: int, fmt: str) -> tuple:
    """struct.unpack_from, with a read past the end as EOFError (the parsers' "cut short")."""
    try:
        return struct.unpack_from(fmt, data, pos)
    except struct.error:
        raise EOFError from None


def _cut_short(parse):
    """A parser whose read past the end becomes HeaderError("truncated FORMAT (cut short in its header)")."""
    def run(data: memoryview) -> ImageHeader:
        try:
            return parse(data)
        except (EOFError, IndexError):
            raise HeaderError(f"truncated {parse.__name__.strip('_').upper()} (cut short in its header)") from None

    return run


@_cut_short
def _png(data: memoryview) -> ImageHeader:
    length, kind, width, height = _at(data, 8, ">I4sII")
    if kind != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk first")
    frames, pos = 1, 8
    while pos + 8 <= len(data):  # an APNG says its frame count in acTL, before the image data
        length, kind = _at(data, pos, ">I4s")
        if kind == b"IDAT":
            break
        if kind == b"acTL":
            frames = max(1, _at(data, pos + 8, ">I")[0])
        pos += 12 + length
    return ImageHeader("PNG", width, height, frames)


@_cut_short
def _jpeg(data: memoryview) -> ImageHeader:
    """The markers walked to the first frame header (SOF): its height and width."""
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}")
        while data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        marker, pos = data[pos], pos + 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a frame header (SOF) before its image data")
        if marker in _JPEG_FRAMES:
            _, _, height, width = _at(data, pos, ">HBHH")
            if height == 0:  # libjpeg does not support a height given later (DNL): OpenCV cannot decode it
                raise HeaderError("JPEG whose height is left to a DNL marker (not supported)")
            return ImageHeader("JPEG", width, height)
        pos += _at(data, pos, ">H")[0]


def _gif_blocks(data: memoryview, pos: int) -> int:
    """The position after a GIF's data sub-blocks starting at pos (a zero length ends them)."""
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _gif(data: memoryview) -> ImageHeader:
    """Logical screen, then every block: frames counted and their extents taken, nothing decoded. A frame beyond
    the screen enlarges the image (as Pillow does), so the largest extent is the size."""
    frames, pos = 0, 0
    try:
        width, height, flags = _at(data, 6, "<HHB")
        pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        while pos < len(data) and data[pos] != 0x3B:  # the trailer; a file may end without one
            kind, pos = data[pos], pos + 1
            if kind == 0x21:  # extension: label, sub-blocks
                pos = _gif_blocks(data, pos + 1)
            elif kind == 0x2C:  # image descriptor: left, top, width, height, flags; colour table; LZW code size
                left, top, w, h, local = _at(data, pos, "<4HB")
                pos = _gif_blocks(data, pos + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0))
                frames += 1
                width, height = max(width, left + w), max(height, top + h)
            # any other byte is skipped, as Pillow skips it
        if pos > len(data):
            raise EOFError
    except (EOFError, IndexError):
        where = f"frame {frames + 1}" if pos else "its header"
        raise HeaderError(f"truncated GIF (cut short in {where})") from None
    if not frames:
        raise HeaderError("GIF without an image")
    return ImageHeader("GIF", width, height, frames)


@_cut_short
def _webp(data: memoryview) -> ImageHeader:
    kind = bytes(data[12:16])
    if kind == b"VP8 ":  # a key frame: start code, then 14-bit width and height
        code, width, height = _at(data, 23, "<3sHH")
        if code != b"\x9d\x01\x2a":
            raise HeaderError("WebP (VP8) without its start code")
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":  # signature 0x2f, then 14-bit width - 1 and height - 1
        (bits,) = _at(data, 21, "<I")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind != b"VP8X":
        raise HeaderError(f"WebP with an unknown first chunk {kind!r}")
    width, height = (int.from_bytes(_at(data, at, "3s")[0], "little") + 1 for at in (24, 27))
    frames, pos = 0, 12
    while pos + 8 <= len(data):  # an animation is a sequence of ANMF chunks
        kind, size = _at(data, pos, "<4sI")
        frames += kind == b"ANMF"
        pos += 8 + size + (size & 1)
    return ImageHeader("WebP", width, height, max(1, frames))


@_cut_short
def _bmp(data: memoryview) -> ImageHeader:
    if _at(data, 14, "<I")[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return ImageHeader("BMP", *_at(data, 18, "<HH"))
    width, height = _at(data, 18, "<ii")
    return ImageHeader("BMP", width, abs(height))  # a negative height: rows stored top-down


def _tiff_sizes(data: memoryview, table: int, entries: int, order: str, big: bool) -> dict[int, int]:
    """ImageWidth (256) and ImageLength (257) from one directory's entries (SHORT, LONG or LONG8, held inline)."""
    sizes, entry_size = {}, 20 if big else 12
    for at in range(table, table + entries * entry_size, entry_size):
        tag, kind = _at(data, at, order + "HH")
        if tag in (256, 257):
            value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if value_format is None:
                raise HeaderError(f"TIFF size tag {tag} of type {kind}, not an integer")
            sizes[tag] = _at(data, at + (12 if big else 8), order + value_format)[0]
    return sizes


@_cut_short
def _tiff(data: memoryview) -> ImageHeader:
    """The first directory's ImageWidth and ImageLength, and the pages: the chain of directories walked (each
    offset once), none of them read further."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    big = _at(data, 2, order + "H")[0] == 43  # BigTIFF: 8-byte counts and offsets
    count_format, offset_format = order + ("Q" if big else "H"), order + ("Q" if big else "I")
    (offset,) = _at(data, 8 if big else 4, offset_format)
    sizes, seen = None, set()
    while offset and offset not in seen and len(seen) < _TIFF_MAX_PAGES:
        seen.add(offset)
        (entries,) = _at(data, offset, count_format)
        table = offset + (8 if big else 2)
        if sizes is None:
            sizes = _tiff_sizes(data, table, entries, order, big)
        (offset,) = _at(data, table + entries * (20 if big else 12), offset_format)
    if not sizes or 256 not in sizes or 257 not in sizes:
        raise HeaderError("TIFF without ImageWidth and ImageLength in its first directory")
    return ImageHeader("TIFF", sizes[256], sizes[257], len(seen))


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\d+)")


def _pnm(data: memoryview) -> ImageHeader:
    head = bytes(data[:4096])  # comments and fields fit in this many bytes in any real file
    if head[1:2] == b"7":  # PAM: "WIDTH n" and "HEIGHT n" lines up to ENDHDR
        fields = dict(re.findall(rb"(?m)^(WIDTH|HEIGHT)[ \t]+(\d+)", head.split(b"ENDHDR")[0]))
        if b"WIDTH" not in fields or b"HEIGHT" not in fields:
            raise HeaderError("PAM header without WIDTH and HEIGHT")
        return ImageHeader("PNM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]))
    width = _PNM_TOKEN.match(head, 2)
    height = _PNM_TOKEN.match(head, width.end()) if width else None
    if height is None:
        raise HeaderError("PNM header without a width and height")
    return ImageHeader("PNM", int(width[1]), int(height[1]))


_PARSERS = ((PNG_SIGNATURE, _png), (b"\xff\xd8\xff", _jpeg), (b"GIF87a", _gif), (b"GIF89a", _gif), (b"BM", _bmp),
            (b"II*\0", _tiff), (b"MM\0*", _tiff), (b"II+\0", _tiff), (b"MM\0+", _tiff),
            *((b"P" + bytes([c]), _pnm) for c in b"1234567Ff"))


def png_damage(data: bytes) -> str | None:
    """Why a PNG's chunks are damaged (one clause), or None: a chunk running past the end of the file, a critical
    chunk (IHDR, PLTE, IDAT, IEND) whose CRC does not match, or no IEND. libpng reports these on stderr in a line of
    its own before OpenCV returns, so they are found here first; a CRC check costs ~1/50 of the decode. Damage
    behind matching CRCs (bytes changed and the CRC recomputed) is left to the decoder."""
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return f"truncated PNG (chunk {kind.decode('latin-1')!r} at byte {pos} runs past the end)"
        if kind in _CRITICAL_PNG and zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return f"damaged PNG (chunk {kind.decode()} at byte {pos} fails its CRC check)"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated PNG (no IEND chunk)"


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "HeaderError", "probe", "size_refusal", "max_file_bytes",
           "png_damage", "PNG_SIGNATURE"]
