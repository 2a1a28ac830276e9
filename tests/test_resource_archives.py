"""scripts/resource_archives.py on small archives written here in the Qt rcc and EFL Eet formats."""

import struct
import zlib

import pytest
import resource_archives as ra

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body"


def _rcc_name(name: str) -> bytes:
    encoded = name.encode("utf-16-be")
    return struct.pack(">HI", len(name), 0) + encoded  # length, hash (unused by the reader), UTF-16 characters


def make_rcc(files: dict[str, bytes], compressed: frozenset[str] = frozenset(), version: int = 2) -> bytes:
    """A Qt resource file holding files under one folder ("dir/name"), as rcc lays it out."""
    folder = {path.split("/")[0] for path in files}
    assert len(folder) == 1
    folder_name = folder.pop()
    names, payload, nodes = b"", b"", []

    def add_name(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += _rcc_name(name)
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
    return struct.pack(">III", ra.EET_MAGIC, len(entries), 0) + directory + names + data


@pytest.mark.parametrize("version", [1, 2])
def test_rcc_files_stored_and_compressed(version):
    files = {"res/a.webp": b"stored bytes", "res/README": b"Copyright: someone\nFiles: a.webp\n"}
    data = make_rcc(files, compressed=frozenset({"res/README"}), version=version)
    assert ra.read_rcc(data) == {"/res/a.webp": b"stored bytes", "/res/README": files["res/README"]}


def test_rcc_rejects_other_files():
    with pytest.raises(ra.ArchiveError, match="not a Qt resource file"):
        ra.read_rcc(b"PK\x03\x04 a zip file")
    with pytest.raises(ra.ArchiveError, match="version 9"):
        ra.read_rcc(b"qres" + struct.pack(">IIII", 9, 0, 0, 0))


def test_edj_largest_jpeg():
    data = make_eet({"edje/images/1": JPEG, "edje/images/0": JPEG + b" larger", "edje/file": b"\xf2\x00 not an image",
                     "edje/images/2": b"\x00\x00 raw pixels, not a JPEG, and the longest of all entries"})
    assert ra.eet_entries(data)["edje/images/1"][1] == len(JPEG)
    assert ra.edj_largest_jpeg(data) == ("edje/images/0", JPEG + b" larger")
    with pytest.raises(ra.ArchiveError, match="holds no JPEG"):
        ra.edj_largest_jpeg(make_eet({"edje/file": b"x"}))
    with pytest.raises(ra.ArchiveError, match="not an Eet file"):
        ra.edj_largest_jpeg(b"\x1e\xe7\xff\x00" + b"\0" * 20)
