"""Small readers for the two resource archives photo-pool packages keep their photos in.

* Qt ``.rcc`` (``gcompris-qt-data``): a tree of names and zlib-compressed or stored files (format versions 1-3).
* EFL ``.edj`` / Eet (``enlightenment-data``): a directory of named entries; Edje stores each image of a theme as
  ``edje/images/<n>``, background photos as plain JPEG files, one per pre-scaled size.

Only what reading those files needs is implemented; anything else (zstd-compressed rcc entries, signed or ciphered
Eet files) raises ``ArchiveError`` naming the problem.
"""

from __future__ import annotations

import struct
import zlib

RCC_MAGIC = b"qres"
EET_MAGIC = 0x1EE70F42  # Eet's current file format ("EET_MAGIC_FILE2")
JPEG_MAGIC = b"\xff\xd8\xff"


class ArchiveError(ValueError):
    """A resource archive this reader cannot read."""


# ---------------------------------------------------------------------------------------------- Qt rcc


def _rcc_name(data: bytes, names: int, offset: int) -> str:
    (length,) = struct.unpack_from(">H", data, names + offset)
    start = names + offset + 6  # after the length and the name's hash
    return data[start:start + 2 * length].decode("utf-16-be")


def read_rcc(data: bytes) -> dict[str, bytes]:
    """Every file in a Qt resource archive, by its path inside it ("/a/b.webp")."""
    if data[:4] != RCC_MAGIC:
        raise ArchiveError("not a Qt resource file (no 'qres' magic)")
    version, tree, payload, names = struct.unpack_from(">IIII", data, 4)
    if version not in (1, 2, 3):
        raise ArchiveError(f"Qt resource format version {version} is not supported")
    node_size = 14 if version == 1 else 22  # version 2 added a 64-bit modification time to every node
    files: dict[str, bytes] = {}
    pending = [(0, "")]  # (node index, path of its parent)
    while pending:
        index, parent = pending.pop()
        base = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", data, base)
        path = f"{parent}/{_rcc_name(data, names, name_offset)}" if index else ""
        if flags & 2:  # a directory: its children are stored contiguously
            count, first = struct.unpack_from(">II", data, base + 6)
            pending += [(first + i, path) for i in range(count)]
            continue
        (offset,) = struct.unpack_from(">I", data, base + 10)
        (size,) = struct.unpack_from(">I", data, payload + offset)
        blob = data[payload + offset + 4:payload + offset + 4 + size]
        if flags & 4:
            raise ArchiveError(f"{path}: zstd-compressed entries are not supported")
        files[path] = zlib.decompress(blob[4:]) if flags & 1 else blob  # zlib data starts with its length
    return files


# ---------------------------------------------------------------------------------------------- EFL Eet / edj


def eet_entries(data: bytes) -> dict[str, tuple[int, int, int]]:
    """{name: (offset, size, flags)} of an Eet file's directory; names and data are stored after it."""
    if len(data) < 12:
        raise ArchiveError("too short for an Eet file")
    magic, count, _dictionary = struct.unpack_from(">III", data, 0)
    if magic != EET_MAGIC:
        raise ArchiveError(f"not an Eet file (magic {magic:#x})")
    entries = {}
    for i in range(count):
        offset, size, _unpacked, name_offset, name_size, flags = struct.unpack_from(">6I", data, 12 + 24 * i)
        name = data[name_offset:name_offset + name_size].rstrip(b"\0").decode("utf-8")
        entries[name] = (offset, size, flags)
    return entries


def edj_largest_jpeg(data: bytes) -> tuple[str, bytes]:
    """(entry name, JPEG bytes) of the largest JPEG image in an Edje file: the full-size background photo."""
    best = ("", b"")
    for name, (offset, size, flags) in eet_entries(data).items():
        blob = data[offset:offset + size]
        # flags 0: stored as is; JPEGs are never compressed again (Edje's lossy images are plain JPEG files).
        if name.startswith("edje/images/") and flags == 0 and blob[:3] == JPEG_MAGIC and size > len(best[1]):
            best = (name, blob)
    if not best[0]:
        raise ArchiveError("holds no JPEG image")
    return best
