"""Pure parts of scripts/fetch_photo_pool.py on a fake extracted package tree: no network, no apt, no dpkg."""

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fetch_photo_pool.py"
_spec = importlib.util.spec_from_file_location("fetch_photo_pool", _SCRIPT)
fpp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fpp  # dataclasses look their module up there
_spec.loader.exec_module(fpp)

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2014 Someone
License: GPL-2+

# a comment line between paragraphs
Files: 16.04/Bridge_by_Sander_Klootwijk.jpg
       16.04/other.jpg
Copyright: 2018. Sander Klootwijk
License: CC-BY-SA-4.0

Files: doc/*
Copyright: 2014 Docs
License: GFDL-1.2+

License: GPL-2+
 This package is free software.
 .
 More text.
"""


def touch(root: Path, relative: str, data: bytes = b"x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_lomiri_keeps_only_allow_listed_photos(tmp_path, capsys):
    for name in ["Bridge_by_Sander_Klootwijk.jpg", "umang_by_Abhishek_Mudgal.jpg", "notes.png"]:
        touch(tmp_path, f"usr/share/backgrounds/{name}")
    assert fpp.select_photos("lomiri-wallpapers-16.04", tmp_path) == [
        "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg"]
    assert "Dragonfly_by_Bolly.jpg is not in this version" in capsys.readouterr().err


def test_plasma_takes_largest_size_of_named_folders(tmp_path):
    for folder in ["Path", "Volna", "Kite"]:  # Volna is a render, Kite is not one of the folders the script fetches
        for size in ["640x480", "2560x1600", "1920x1200"]:
            touch(tmp_path, f"usr/share/wallpapers/{folder}/contents/images/{size}.jpg")
    touch(tmp_path, "usr/share/wallpapers/Path/contents/screenshot.jpg")
    selected = fpp.select_photos("plasma-workspace-wallpapers", tmp_path)
    assert selected == ["usr/share/wallpapers/Path/contents/images/2560x1600.jpg"]
    assert fpp.output_name("plasma-workspace-wallpapers", selected[0]) == "plasma-workspace-wallpapers__Path.jpg"
    assert fpp.output_name("opencv-doc", "a/b/graf1.png") == "opencv-doc__graf1.png"


def test_opencv_drops_charts_and_set14_images(tmp_path):
    data = "usr/share/doc/opencv-doc/examples/data"
    for name in ["leuvenA.jpg", "chessboard.png", "baboon.jpg", "graf1.png", "graf3.png"]:
        touch(tmp_path, f"{data}/{name}")
    assert fpp.select_photos("opencv-doc", tmp_path) == [f"{data}/graf1.png", f"{data}/leuvenA.jpg"]


def test_licence_explicit_stanza_beats_wildcard():
    assert fpp.licence_from_copyright(DEP5, "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg") == (
        "CC-BY-SA-4.0", "2018. Sander Klootwijk")
    # "doc/*" names the source tree, not usr/share/doc: the file falls back to "Files: *", mapped to SPDX.
    assert fpp.licence_from_copyright(DEP5, "usr/share/doc/pkg/examples/oi.png") == ("GPL-2.0-or-later", "2014 Someone")
    assert fpp.licence_from_copyright("plain text, no DEP-5", "a.jpg")[0].startswith("unknown")


def test_upstream_notes(tmp_path):
    touch(tmp_path, "c/bee.desktop", b"[Desktop Entry]\nX-KDE-PluginInfo-Author=John\n"
                                      b"X-KDE-PluginInfo-License=Public Domain\nX-KDE-PluginInfo-Website=http://w\n")
    assert fpp.upstream_note("palapeli-data", tmp_path, "c/bee.jpg") == "desktop file: Public Domain, John, http://w"
    meta = {"KPlugin": {"Authors": [{"Name": "Risto"}], "License": "LGPLv3"}}
    touch(tmp_path, "w/Path/metadata.json", json.dumps(meta).encode())
    note = fpp.upstream_note("plasma-workspace-wallpapers", tmp_path, "w/Path/contents/images/2560x1600.jpg")
    assert note == "metadata.json: LGPLv3, Risto"


def test_make_row_and_manifest_round_trip(tmp_path):
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    source = "usr/share/palapeli/collection/cincinnati-bridge.jpg"
    (root / source).parent.mkdir(parents=True)
    cv2.imwrite(str(root / source), np.full((30, 40, 3), 128, np.uint8))
    row = fpp.make_row("palapeli-data", "4:22.12.3-1", root, source, images, DEP5)
    assert (row["file"], row["width"], row["height"], row["split"]) == (
        "palapeli-data__cincinnati-bridge.jpg", 40, 30, "valid")
    assert row["licence"] == "GPL-2.0-or-later" and row["sha256"] == fpp.sha256_of(images / row["file"])
    assert fpp.rows_intact([row], images)

    other = dict(row, file="a__b.jpg", split="train", licence_note='tab\there "quoted"\nnewline')
    manifest = tmp_path / "MANIFEST.tsv"
    fpp.write_manifest(manifest, [row, other])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file renamed away
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == fpp.MANIFEST_COLUMNS and len(lines) == 3
    back = fpp.read_manifest(manifest)
    assert [r["file"] for r in back] == ["a__b.jpg", "palapeli-data__cincinnati-bridge.jpg"]  # sorted
    assert back[0]["licence_note"] == 'tab here "quoted" newline'
    assert back[1]["width"] == "40" and back[1]["split"] == "valid"

    (images / row["file"]).write_bytes(b"changed")
    assert not fpp.rows_intact(back[1:], images)
    assert not fpp.rows_intact([], images)


@pytest.mark.parametrize("name", sorted(fpp.VALID_FILES))
def test_valid_photos_are_in_the_pool_rules(name):
    package, stem = name.split("__")
    rule = fpp.RULES[package]
    assert rule.allow is None or stem in rule.allow
    assert len({n.split("__")[0] for n in fpp.VALID_FILES}) == len(fpp.VALID_FILES)  # one package each
