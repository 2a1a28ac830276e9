"""scripts/resource_archives.py on small archives in the Qt rcc and EFL Eet formats, written by tests/helpers.py."""

import struct

import pytest
import resource_archives as ra
from helpers import JPEG, make_eet, make_rcc


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
