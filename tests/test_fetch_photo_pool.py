"""Pure parts of scripts/fetch_photo_pool.py on fake extracted package trees: no network, no apt, no dpkg."""

import fnmatch
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from test_resource_archives import JPEG, make_eet, make_rcc

from srdensenet import demo_data

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

Files: original-files/*
Copyright: 2020 Photographer
License: CC-BY-SA-4.0

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


def photo(root: Path, relative: str, shape: tuple[int, int], seed: int = 0) -> Path:
    """A random-texture image file of the given (height, width): distinct content for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, shape[0] // 16), max(2, shape[1] // 16), 3), dtype=np.uint8)
    image = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


# ---------------------------------------------------------------------------------------------- selection rules


def test_lomiri_keeps_only_allow_listed_photos(tmp_path, capsys):
    for name in ["Bridge_by_Sander_Klootwijk.jpg", "umang_by_Abhishek_Mudgal.jpg", "new_by_Someone.jpg"]:
        touch(tmp_path, f"usr/share/backgrounds/{name}")
    touch(tmp_path, "usr/share/backgrounds/notes.png")
    assert fpp.select_photos("lomiri-wallpapers-16.04", tmp_path) == [
        "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg"]
    err = capsys.readouterr().err
    assert "Dragonfly_by_Bolly.jpg is not in this version" in err
    # A new upstream file is never taken in silently; the skipped artwork is not reported again.
    assert "not reviewed, left out: new_by_Someone.jpg" in err and "umang" not in err


def test_plasma_takes_largest_size_of_allowed_folders(tmp_path, capsys):
    for folder in ["Path", "Volna", "Unknown"]:  # Volna is a render (skipped), Unknown a new, unreviewed folder
        for size in ["640x480", "2560x1600", "1920x1200"]:
            touch(tmp_path, f"usr/share/wallpapers/{folder}/contents/images/{size}.jpg")
    touch(tmp_path, "usr/share/wallpapers/Path/contents/screenshot.jpg")
    selected = fpp.select_photos("plasma-workspace-wallpapers", tmp_path)
    assert selected == ["usr/share/wallpapers/Path/contents/images/2560x1600.jpg"]
    assert fpp.output_name("plasma-workspace-wallpapers", selected[0]) == "plasma-workspace-wallpapers__Path.jpg"
    assert fpp.output_name("opencv-doc", "a/b/graf1.png") == "opencv-doc__graf1.png"
    assert "not reviewed, left out: Unknown.jpg" in capsys.readouterr().err


def test_opencv_keeps_leuven_only(tmp_path):
    data = "usr/share/doc/opencv-doc/examples/data"
    for name in ["leuvenA.jpg", "chessboard.png", "baboon.jpg", "graf1.png", "graf3.png"]:
        touch(tmp_path, f"{data}/{name}")
    named = fpp.candidates("opencv-doc", tmp_path)
    kept, left_out = fpp.choose("opencv-doc", named)
    assert kept == [f"{data}/leuvenA.jpg"]
    assert dict(left_out)[f"{data}/baboon.jpg"] == "benchmark: Set14 baboon"
    assert dict(left_out)[f"{data}/graf1.png"] == fpp.TOO_SMALL


def test_archive_members_are_selected_and_read(tmp_path):
    readme = b"Copyright: Ann\nSource: https://x/y.jpg\nLicense: CC-BY-SA-4.0\nComments: cropping\nFiles: alpaca.webp\n"
    rcc = make_rcc({"gcompris/src/activities/erase/resource/alpaca.webp": b"A", "gcompris/src/activities/erase/"
                    "resource/README": readme, "gcompris/src/activities/erase/resource/Block.qml": b"q"},
                   compressed=frozenset({"gcompris/src/activities/erase/resource/README"}))
    touch(tmp_path, "usr/share/gcompris-qt/rcc/erase.rcc", rcc)
    member = "/gcompris/src/activities/erase/resource/alpaca.webp"
    source = f"usr/share/gcompris-qt/rcc/erase.rcc!{member}"
    assert fpp.candidates("gcompris-qt-data", tmp_path) == {"alpaca.webp": source}
    assert fpp.read_source(tmp_path, source) == b"A"
    assert fpp.output_name("gcompris-qt-data", source) == "gcompris-qt-data__alpaca.webp"
    note, author = fpp.upstream_note("gcompris-qt-data", tmp_path, source)
    assert note == "README: CC-BY-SA-4.0, Ann, https://x/y.jpg (cropping)" and author == "Ann"

    backgrounds = "usr/share/enlightenment/data/backgrounds"
    touch(tmp_path, f"{backgrounds}/Bamboo.edj", make_eet({"edje/images/3": JPEG, "edje/images/0": JPEG + b"big"}))
    touch(tmp_path, f"{backgrounds}/Squiggle.edj", make_eet({"edje/file": b"vector"}))
    named = fpp.candidates("enlightenment-data", tmp_path)
    assert named == {"Bamboo.jpg": f"{backgrounds}/Bamboo.edj!edje/images/0",
                     "Squiggle.jpg": f"{backgrounds}/Squiggle.edj"}
    assert fpp.read_source(tmp_path, named["Bamboo.jpg"]) == JPEG + b"big"
    assert fpp.output_name("enlightenment-data", named["Squiggle.jpg"]) == "enlightenment-data__Squiggle.jpg"


def test_every_rule_is_consistent():
    for package, rule in fpp.RULES.items():
        assert package in fpp.PACKAGES
        for name in rule.allow:
            assert not any(fnmatch.fnmatchcase(name, p) for p in rule.skip), f"{package}: {name} both kept and skipped"
            assert fpp.TAGS.get(f"{package}__{name}") in fpp.TAG_NAMES, f"{package}: {name} has no content tag"
    assert {k.split("__")[0] for k in fpp.TAGS} <= set(fpp.RULES)
    for key in fpp.TAGS:
        package, name = key.split("__", 1)
        assert name in fpp.RULES[package].allow, f"tag for {key}, which is not allow-listed"


def test_benchmark_images_are_never_allowed():
    for label, (package, path) in fpp.BENCHMARKS.items():
        rule = fpp.RULES[package]
        name = Path(path).name
        assert name not in rule.allow, label
        if any(fnmatch.fnmatchcase(path, p) for p in rule.patterns):  # a candidate: skipped, with a reason
            assert fpp.skip_reason(rule, name), label
    assert fpp.DEMO_EVALUATION == demo_data.DEMO_VALID


@pytest.mark.parametrize("name", sorted(fpp.VALID_FILES))
def test_valid_photos_are_in_the_pool_rules(name):
    package, stem = name.split("__")
    assert stem in fpp.RULES[package].allow
    assert len({n.split("__")[0] for n in fpp.VALID_FILES}) == len(fpp.VALID_FILES)  # one package each


# ---------------------------------------------------------------------------------------------- licences and notes


def test_licence_explicit_stanza_beats_wildcard():
    assert fpp.licence_from_copyright(DEP5, "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg") == (
        "CC-BY-SA-4.0", "2018. Sander Klootwijk")
    # "doc/*" names the source tree, not usr/share/doc: the file falls back to "Files: *", mapped to SPDX.
    assert fpp.licence_from_copyright(DEP5, "usr/share/doc/pkg/examples/oi.png") == ("GPL-2.0-or-later", "2014 Someone")
    assert fpp.licence_from_copyright("plain text, no DEP-5", "a.jpg")[0].startswith("unknown")
    # A rule can name the stanza that covers its photos; archive members take their archive's stanza.
    source = "usr/share/forensics-samples/original-files/pic1/IMG_1.jpg"
    assert fpp.licence_from_copyright(DEP5, source, "original-files/*") == ("CC-BY-SA-4.0", "2020 Photographer")
    assert fpp.copyright_stanza(DEP5, "a/b.rcc!/x/y.webp")[1] is False


def test_upstream_notes(tmp_path):
    touch(tmp_path, "c/bee.desktop", b"[Desktop Entry]\nX-KDE-PluginInfo-Author=John\n"
                                      b"X-KDE-PluginInfo-License=Public Domain\nX-KDE-PluginInfo-Website=http://w\n")
    assert fpp.upstream_note("palapeli-data", tmp_path, "c/bee.jpg") == (
        "desktop file: Public Domain, John, http://w", "John")
    meta = {"KPlugin": {"Authors": [{"Name": "Risto"}], "License": "LGPLv3"}}
    touch(tmp_path, "w/Path/metadata.json", json.dumps(meta).encode())
    note = fpp.upstream_note("plasma-workspace-wallpapers", tmp_path, "w/Path/contents/images/2560x1600.jpg")
    assert note == ("metadata.json: LGPLv3, Risto", "Risto")
    licence = ("Licensed under CC-BY-SA-3.0\n\nCredits:\n\nNuno (n@x)\nkde-plasma;\n\n"
               "stefonarch (s@x)\nfog,not-windows,appleflowers;\n")
    touch(tmp_path, "l/License", licence.encode())
    assert fpp.upstream_note("lxqt-themes", tmp_path, "l/this-is-not-windows.jpg")[1] == "stefonarch"
    assert fpp.lxqt_credit(licence, "appleflower") == "stefonarch" and fpp.lxqt_credit(licence, "Valendas") == ""
    assert fpp.upstream_note("mate-backgrounds", tmp_path, "x/Aqua.jpg") == ("", "")


def test_readme_credits_list_files_below_the_field():
    text = ("Copyright: A\nLicense: CC-BY-SA 4.0\nFiles:\none.svg\ntwo.svg\n\n"
            "Copyright: B\nSource: https://s\nLicense: CC0-1.0\nFiles: crab.webp\n")
    credits = fpp.parse_readme_credits(text)
    assert credits["two.svg"]["Copyright"] == "A" and credits["crab.webp"]["License"] == "CC0-1.0"


# ---------------------------------------------------------------------------------------------- manifest


def test_make_row_and_manifest_round_trip(tmp_path):
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    source = "usr/share/palapeli/collection/cincinnati-bridge.jpg"
    photo(root, source, (30, 40))  # small, but a validation photo: the size rule does not apply
    row = fpp.make_row("palapeli-data", "4:22.12.3-1", root, source, images, DEP5)
    assert (row["file"], row["width"], row["height"], row["split"], row["tag"], row["prescale"]) == (
        "palapeli-data__cincinnati-bridge.jpg", 40, 30, "valid", "night", "2")
    assert row["licence"] == "GPL-2.0-or-later" and row["sha256"] == fpp.sha256_of(images / row["file"])
    assert row["author"] == "" and row["licence_note"] == "© 2014 Someone"  # "Files: *" names no photographer
    assert fpp.rows_intact([row], images)

    other = dict(row, file="mate-backgrounds__Aqua.jpg", package="mate-backgrounds", split="train",
                 licence_note='tab\there "quoted"\nnewline')
    manifest = tmp_path / "MANIFEST.tsv"
    fpp.write_manifest(manifest, [row, other])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file renamed away
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == fpp.MANIFEST_COLUMNS and len(lines) == 3
    back = fpp.read_manifest(manifest)
    assert [r["file"] for r in back] == ["mate-backgrounds__Aqua.jpg", "palapeli-data__cincinnati-bridge.jpg"]
    assert back[0]["licence_note"] == 'tab here "quoted" newline'
    assert back[1]["width"] == "40" and back[1]["split"] == "valid"

    (images / row["file"]).write_bytes(b"changed")
    assert not fpp.rows_intact(back[1:], images)
    assert not fpp.rows_intact([], images)
    assert not fpp.rows_intact([{k: v for k, v in row.items() if k != "tag"}], images)  # an older manifest format


def test_make_row_leaves_small_training_photos_out(tmp_path):
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    source = "usr/share/backgrounds/mate/nature/Aqua.jpg"
    photo(root, source, (1000, 1700))  # 0.425 Mpixel after the 2x prescale
    row = fpp.make_row("mate-backgrounds", "1", root, source, images, DEP5)
    assert row["reason"].startswith(fpp.TOO_SMALL) and "(1700x1000)" in row["reason"]
    assert list(images.iterdir()) == []
    photo(root, source, (1100, 1700))  # 0.47 Mpixel: kept
    assert "reason" not in fpp.make_row("mate-backgrounds", "1", root, source, images, DEP5)


def pool_row(images: Path, name: str, image: np.ndarray, split: str = "train") -> dict:
    cv2.imwrite(str(images / name), image[:, :, ::-1])
    return {"file": name, "package": name.split("__")[0], "package_version": "1", "source_path": f"src/{name}",
            "width": image.shape[1], "height": image.shape[0], "split": split, "sha256": fpp.sha256_of(images / name)}


def test_near_copies_are_kept_once_and_never_split(tmp_path, monkeypatch):
    out, images = tmp_path / "pool", tmp_path / "pool" / "images"
    images.mkdir(parents=True)
    astronaut, retina, rocket = skimage.data.astronaut(), skimage.data.retina(), skimage.data.rocket()
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    rows = [pool_row(images, "a__astronaut.png", astronaut, "valid"),  # the valid copy stays, though smaller
            pool_row(images, "b__astronaut_big.png", big),
            pool_row(images, "b__astronaut_crop.png", big[200:800, 100:900]),
            pool_row(images, "c__retina.png", retina),
            pool_row(images, "d__rocket.png", rocket)]
    chelsea = skimage.data.chelsea()
    rows.append(pool_row(images, "e__cat.png", cv2.resize(chelsea, (600, 400))))  # a demo validation photo, resized
    monkeypatch.setattr(fpp, "REPO_REFERENCES", {})
    kept, excluded = fpp.deduplicate(rows, [], out)
    assert sorted(r["file"] for r in kept) == ["a__astronaut.png", "c__retina.png", "d__rocket.png"]
    reasons = {r["file"]: r["reason"] for r in excluded}
    assert reasons["b__astronaut_big.png"].startswith("near-copy of a__astronaut.png: ")
    assert reasons["b__astronaut_crop.png"].startswith("near-copy of a__astronaut.png")
    assert reasons["e__cat.png"].startswith("benchmark/evaluation image demo validation chelsea: ")
    assert sorted(p.name for p in images.iterdir()) == ["a__astronaut.png", "c__retina.png", "d__rocket.png"]
    assert set(excluded[0]) == set(fpp.EXCLUDED_COLUMNS)
    # Nothing changed: the second run does not compare again.
    again, more = fpp.deduplicate(kept, excluded, out)
    assert again == kept and more == excluded


def test_references_and_benchmark_look_alikes(tmp_path):
    out = tmp_path / "pool"
    root = tmp_path / "root"
    baboon = fpp.BENCHMARKS["Set14 baboon"][1]
    photo(root, baboon, (480, 500), seed=3)
    fpp.copy_references("opencv-doc", root, out / "references")
    assert (out / "references" / "Set14_baboon.jpg").is_file() and not fpp.references_intact("opencv-doc", out)
    signatures = fpp.reference_signatures(out)
    assert {"Set14 baboon", "Set5 butterfly (tests/data)", "demo validation coffee"} <= signatures.keys()


def test_totals_and_markdown_match_the_rows():
    rows = [{"file": f"mate-backgrounds__{i}.jpg", "package": "mate-backgrounds", "package_version": "1",
             "licence": "GPL-2.0-or-later", "width": 2000, "height": 1000, "prescale": "2", "split": split,
             "tag": tag} for i, (split, tag) in enumerate([("train", "plants"), ("train", "sky"), ("valid", "plants")])]
    table = fpp.markdown(rows)
    assert "| `mate-backgrounds` | 1 | 2 | 1 | 1.0 | GPL-2.0-or-later (3) |" in table
    assert "| **total** | | **2** | **1** | **1.0** | |" in table
    assert "| plants | 1 | 1 | 0.5 |" in table and "| sky | 1 | 0 | 0.5 |" in table
    assert fpp.mpixel(rows) == pytest.approx(1.5)
