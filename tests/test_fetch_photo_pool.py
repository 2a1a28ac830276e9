"""scripts/fetch_photo_pool.py and its modules (scripts/photo_pool/) on fake extracted package trees: no network,
no apt, no dpkg."""

import fnmatch
import json
import sys
from pathlib import Path

import cv2
import fetch_photo_pool
import numpy as np
import pytest
import skimage.data
from helpers import JPEG, make_eet, make_rcc
from photo_pool import apt, dedup, licences, manifest, selection, tables
from photo_pool.rules import RULES_FILE, TOO_SMALL, RulesError, load_rules

from srdensenet import demo_data

RULES = load_rules()

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


def select_photos(package: str, root: Path) -> list[str]:
    """Source paths of the allow-listed photos of ``package`` extracted under ``root``, sorted."""
    return selection.choose(package, selection.candidates(package, root))[0]


# ---------------------------------------------------------------------------------------------- selection rules


def test_lomiri_keeps_only_allow_listed_photos(tmp_path, capsys):
    for name in ["Bridge_by_Sander_Klootwijk.jpg", "umang_by_Abhishek_Mudgal.jpg", "new_by_Someone.jpg"]:
        touch(tmp_path, f"usr/share/backgrounds/{name}")
    touch(tmp_path, "usr/share/backgrounds/notes.png")
    assert select_photos("lomiri-wallpapers-16.04", tmp_path) == [
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
    selected = select_photos("plasma-workspace-wallpapers", tmp_path)
    assert selected == ["usr/share/wallpapers/Path/contents/images/2560x1600.jpg"]
    assert selection.output_name("plasma-workspace-wallpapers", selected[0]) == "plasma-workspace-wallpapers__Path.jpg"
    assert selection.output_name("opencv-doc", "a/b/graf1.png") == "opencv-doc__graf1.png"
    assert "not reviewed, left out: Unknown.jpg" in capsys.readouterr().err


def test_opencv_keeps_leuven_only(tmp_path):
    data = "usr/share/doc/opencv-doc/examples/data"
    for name in ["leuvenA.jpg", "chessboard.png", "baboon.jpg", "graf1.png", "graf3.png"]:
        touch(tmp_path, f"{data}/{name}")
    named = selection.candidates("opencv-doc", tmp_path)
    kept, left_out = selection.choose("opencv-doc", named)
    assert kept == [f"{data}/leuvenA.jpg"]
    assert dict(left_out)[f"{data}/baboon.jpg"] == "benchmark: Set14 baboon"
    assert dict(left_out)[f"{data}/graf1.png"] == TOO_SMALL


def test_archive_members_are_selected_and_read(tmp_path):
    readme = b"Copyright: Ann\nSource: https://x/y.jpg\nLicense: CC-BY-SA-4.0\nComments: cropping\nFiles: alpaca.webp\n"
    rcc = make_rcc({"gcompris/src/activities/erase/resource/alpaca.webp": b"A", "gcompris/src/activities/erase/"
                    "resource/README": readme, "gcompris/src/activities/erase/resource/Block.qml": b"q"},
                   compressed=frozenset({"gcompris/src/activities/erase/resource/README"}))
    touch(tmp_path, "usr/share/gcompris-qt/rcc/erase.rcc", rcc)
    member = "/gcompris/src/activities/erase/resource/alpaca.webp"
    source = f"usr/share/gcompris-qt/rcc/erase.rcc!{member}"
    assert selection.candidates("gcompris-qt-data", tmp_path) == {"alpaca.webp": source}
    assert selection.read_source(tmp_path, source) == b"A"
    assert selection.output_name("gcompris-qt-data", source) == "gcompris-qt-data__alpaca.webp"
    note, author = licences.upstream_note("gcompris-qt-data", tmp_path, source)
    assert note == "README: CC-BY-SA-4.0, Ann, https://x/y.jpg (cropping)" and author == "Ann"

    backgrounds = "usr/share/enlightenment/data/backgrounds"
    touch(tmp_path, f"{backgrounds}/Bamboo.edj", make_eet({"edje/images/3": JPEG, "edje/images/0": JPEG + b"big"}))
    touch(tmp_path, f"{backgrounds}/Squiggle.edj", make_eet({"edje/file": b"vector"}))
    named = selection.candidates("enlightenment-data", tmp_path)
    assert named == {"Bamboo.jpg": f"{backgrounds}/Bamboo.edj!edje/images/0",
                     "Squiggle.jpg": f"{backgrounds}/Squiggle.edj"}
    assert selection.read_source(tmp_path, named["Bamboo.jpg"]) == JPEG + b"big"
    assert selection.output_name("enlightenment-data", named["Squiggle.jpg"]) == "enlightenment-data__Squiggle.jpg"


def test_every_rule_is_consistent():
    for package, rule in RULES.packages.items():
        for name in rule.allow:
            assert not any(fnmatch.fnmatchcase(name, p) for p in rule.skip), f"{package}: {name} both kept and skipped"
            assert RULES.tags.get(f"{package}__{name}") in RULES.tag_names, f"{package}: {name} has no content tag"
    assert {k.split("__")[0] for k in RULES.tags} <= set(RULES.packages)
    for key in RULES.tags:
        package, name = key.split("__", 1)
        assert name in RULES.packages[package].allow, f"tag for {key}, which is not allow-listed"
    # "too small" in the rules file stands for the size rule, spelled out.
    assert RULES.packages["mate-backgrounds"].skip["Dune.jpg"] == TOO_SMALL


def test_benchmark_images_are_never_allowed():
    for label, (package, path) in RULES.benchmarks.items():
        rule = RULES.packages[package]
        name = Path(path).name
        assert name not in rule.allow, label
        if any(fnmatch.fnmatchcase(path, p) for p in rule.patterns):  # a candidate: skipped, with a reason
            assert selection.skip_reason(rule, name), label
    assert dedup.DEMO_EVALUATION == demo_data.DEMO_VALID


@pytest.mark.parametrize("name", sorted(RULES.valid_files))
def test_valid_photos_are_in_the_pool_rules(name):
    package, stem = name.split("__")
    assert stem in RULES.packages[package].allow
    assert len({n.split("__")[0] for n in RULES.valid_files}) == len(RULES.valid_files)  # one package each


def test_a_malformed_rules_file_is_named(tmp_path, monkeypatch, capsys):
    text = RULES_FILE.read_text(encoding="utf-8")
    cases = {
        "not TOML": ('tags = ["animals"\n', "not valid TOML"),
        "archive": (text.replace('archive = "edj"', 'archive = "zip"'), "packages.enlightenment-data.archive"),
        "tag": (text.replace('sky = ["Storm.jpg"]', 'weather = ["Storm.jpg"]'), "'weather' is not one of tags"),
        "key": (text.replace("largest_only = true", "largest = true"), "unknown key 'largest'"),
        "type": (text.replace("largest_only = true", 'largest_only = "yes"'), "largest_only: expected true or false"),
        "benchmark": (text.replace('"Set14 baboon" = ["opencv-doc", ', '"Set14 baboon" = ["opencv", '),
                      "benchmarks.Set14 baboon"),
        "missing": (text.replace('patterns = ["usr/share/sddm/themes/maldives/*.jpg"]', ""),
                    "packages.sddm-theme-maldives.patterns: missing"),
    }
    for case, (broken, problem) in cases.items():
        assert broken != text or case == "not TOML", case
        path = tmp_path / f"{case}.toml"
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(RulesError) as caught:
            load_rules(path)
        assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value), case
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
    # The script says so in one line, before parsing its options (they list the packages).
    monkeypatch.setattr(fetch_photo_pool, "load_rules", lambda: load_rules(tmp_path / "tag.toml"))
    monkeypatch.setattr(sys, "argv", ["fetch_photo_pool.py", "--help"])
    assert fetch_photo_pool.main() == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'tag.toml'}: packages.mate-backgrounds.allow: 'weather' "
                                       f"is not one of tags ({', '.join(RULES.tag_names)})\n")


# ---------------------------------------------------------------------------------------------- licences and notes


def test_licence_explicit_stanza_beats_wildcard():
    assert licences.licence_from_copyright(DEP5, "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg") == (
        "CC-BY-SA-4.0", "2018. Sander Klootwijk")
    # "doc/*" names the source tree, not usr/share/doc: the file falls back to "Files: *", mapped to SPDX.
    assert licences.licence_from_copyright(DEP5, "usr/share/doc/pkg/examples/oi.png") == (
        "GPL-2.0-or-later", "2014 Someone")
    assert licences.licence_from_copyright("plain text, no DEP-5", "a.jpg")[0].startswith("unknown")
    # A rule can name the stanza that covers its photos; archive members take their archive's stanza.
    source = "usr/share/forensics-samples/original-files/pic1/IMG_1.jpg"
    assert licences.licence_from_copyright(DEP5, source, "original-files/*") == ("CC-BY-SA-4.0", "2020 Photographer")
    assert licences.copyright_stanza(DEP5, "a/b.rcc!/x/y.webp")[1] is False


def test_upstream_notes(tmp_path):
    touch(tmp_path, "c/bee.desktop", b"[Desktop Entry]\nX-KDE-PluginInfo-Author=John\n"
                                      b"X-KDE-PluginInfo-License=Public Domain\nX-KDE-PluginInfo-Website=http://w\n")
    assert licences.upstream_note("palapeli-data", tmp_path, "c/bee.jpg") == (
        "desktop file: Public Domain, John, http://w", "John")
    meta = {"KPlugin": {"Authors": [{"Name": "Risto"}], "License": "LGPLv3"}}
    touch(tmp_path, "w/Path/metadata.json", json.dumps(meta).encode())
    note = licences.upstream_note("plasma-workspace-wallpapers", tmp_path, "w/Path/contents/images/2560x1600.jpg")
    assert note == ("metadata.json: LGPLv3, Risto", "Risto")
    licence = ("Licensed under CC-BY-SA-3.0\n\nCredits:\n\nNuno (n@x)\nkde-plasma;\n\n"
               "stefonarch (s@x)\nfog,not-windows,appleflowers;\n")
    touch(tmp_path, "l/License", licence.encode())
    assert licences.upstream_note("lxqt-themes", tmp_path, "l/this-is-not-windows.jpg")[1] == "stefonarch"
    assert licences.lxqt_credit(licence, "appleflower") == "stefonarch"
    assert licences.lxqt_credit(licence, "Valendas") == ""
    assert licences.upstream_note("mate-backgrounds", tmp_path, "x/Aqua.jpg") == ("", "")


def test_readme_credits_list_files_below_the_field():
    text = ("Copyright: A\nLicense: CC-BY-SA 4.0\nFiles:\none.svg\ntwo.svg\n\n"
            "Copyright: B\nSource: https://s\nLicense: CC0-1.0\nFiles: crab.webp\n")
    credits = licences.parse_readme_credits(text)
    assert credits["two.svg"]["Copyright"] == "A" and credits["crab.webp"]["License"] == "CC0-1.0"


# ---------------------------------------------------------------------------------------------- manifest


def test_make_row_and_manifest_round_trip(tmp_path):
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    source = "usr/share/palapeli/collection/cincinnati-bridge.jpg"
    photo(root, source, (30, 40))  # small, but a validation photo: the size rule does not apply
    row = manifest.make_row("palapeli-data", "4:22.12.3-1", root, source, images, DEP5)
    assert (row["file"], row["width"], row["height"], row["split"], row["tag"], row["prescale"]) == (
        "palapeli-data__cincinnati-bridge.jpg", 40, 30, "valid", "night", "2")
    assert row["licence"] == "GPL-2.0-or-later" and row["sha256"] == manifest.sha256_of(images / row["file"])
    assert row["author"] == "" and row["licence_note"] == "© 2014 Someone"  # "Files: *" names no photographer
    assert manifest.rows_intact([row], images)

    other = dict(row, file="mate-backgrounds__Aqua.jpg", package="mate-backgrounds", split="train",
                 licence_note='tab\there "quoted"\nnewline')
    manifest_file = tmp_path / "MANIFEST.tsv"
    manifest.write_manifest(manifest_file, [row, other])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file renamed away
    lines = manifest_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == manifest.MANIFEST_COLUMNS and len(lines) == 3
    back = manifest.read_tsv(manifest_file)
    assert [r["file"] for r in back] == ["mate-backgrounds__Aqua.jpg", "palapeli-data__cincinnati-bridge.jpg"]
    assert back[0]["licence_note"] == 'tab here "quoted" newline'
    assert back[1]["width"] == "40" and back[1]["split"] == "valid"

    (images / row["file"]).write_bytes(b"changed")
    assert not manifest.rows_intact(back[1:], images)
    assert not manifest.rows_intact([], images)
    assert not manifest.rows_intact([{k: v for k, v in row.items() if k != "tag"}], images)  # an older manifest format


def test_make_row_leaves_small_training_photos_out(tmp_path):
    root, images = tmp_path / "root", tmp_path / "images"
    images.mkdir()
    source = "usr/share/backgrounds/mate/nature/Aqua.jpg"
    photo(root, source, (1000, 1700))  # 0.425 Mpixel after the 2x prescale
    row = manifest.make_row("mate-backgrounds", "1", root, source, images, DEP5)
    assert row["reason"].startswith(TOO_SMALL) and "(1700x1000)" in row["reason"]
    assert list(images.iterdir()) == []
    photo(root, source, (1100, 1700))  # 0.47 Mpixel: kept
    assert "reason" not in manifest.make_row("mate-backgrounds", "1", root, source, images, DEP5)


def pool_row(images: Path, name: str, image: np.ndarray, split: str = "train") -> dict:
    cv2.imwrite(str(images / name), image[:, :, ::-1])
    return {"file": name, "package": name.split("__")[0], "package_version": "1", "source_path": f"src/{name}",
            "width": image.shape[1], "height": image.shape[0], "split": split,
            "sha256": manifest.sha256_of(images / name)}


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
    monkeypatch.setattr(dedup, "REPO_REFERENCES", {})
    kept, excluded = dedup.deduplicate(rows, [], out)
    assert sorted(r["file"] for r in kept) == ["a__astronaut.png", "c__retina.png", "d__rocket.png"]
    reasons = {r["file"]: r["reason"] for r in excluded}
    assert reasons["b__astronaut_big.png"].startswith("near-copy of a__astronaut.png: ")
    assert reasons["b__astronaut_crop.png"].startswith("near-copy of a__astronaut.png")
    assert reasons["e__cat.png"].startswith("benchmark/evaluation image demo validation chelsea: ")
    assert sorted(p.name for p in images.iterdir()) == ["a__astronaut.png", "c__retina.png", "d__rocket.png"]
    assert set(excluded[0]) == set(manifest.EXCLUDED_COLUMNS)
    # Nothing changed: the second run does not compare again.
    again, more = dedup.deduplicate(kept, excluded, out)
    assert again == kept and more == excluded


def test_references_and_benchmark_look_alikes(tmp_path):
    out = tmp_path / "pool"
    root = tmp_path / "root"
    baboon = RULES.benchmarks["Set14 baboon"][1]
    photo(root, baboon, (480, 500), seed=3)
    dedup.copy_references("opencv-doc", root, out / "references")
    assert (out / "references" / "Set14_baboon.jpg").is_file() and not dedup.references_intact("opencv-doc", out)
    signatures = dedup.reference_signatures(out)
    assert {"Set14 baboon", "Set5 butterfly (srdensenet/golden)", "demo validation coffee"} <= signatures.keys()


def test_totals_and_markdown_match_the_rows():
    rows = [{"file": f"mate-backgrounds__{i}.jpg", "package": "mate-backgrounds", "package_version": "1",
             "licence": "GPL-2.0-or-later", "width": 2000, "height": 1000, "prescale": "2", "split": split,
             "tag": tag} for i, (split, tag) in enumerate([("train", "plants"), ("train", "sky"), ("valid", "plants")])]
    table = tables.markdown(rows)
    assert "| `mate-backgrounds` | 1 | 2 | 1 | 1.0 | GPL-2.0-or-later (3) |" in table
    assert "| **total** | | **2** | **1** | **1.0** | |" in table
    assert "| plants | 1 | 1 | 0.5 |" in table and "| sky | 1 | 0 | 0.5 |" in table
    assert tables.mpixel(rows) == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------- the whole script

MATE = "usr/share/backgrounds/mate/nature"


def mate_backgrounds(root: Path) -> None:
    """A fake extracted mate-backgrounds: a photo kept, the valid one, one too small, one skipped, one unreviewed."""
    photo(root, f"{MATE}/Aqua.jpg", (1100, 1700), seed=1)
    photo(root, f"{MATE}/LadyBird.jpg", (300, 400), seed=2)  # the valid photo: exempt from the size rule
    photo(root, f"{MATE}/Wood.jpg", (1000, 1700), seed=3)
    photo(root, f"{MATE}/Dune.jpg", (300, 400), seed=4)
    photo(root, f"{MATE}/New.jpg", (300, 400), seed=5)
    touch(root, "usr/share/doc/mate-backgrounds/copyright", DEP5.encode())


def fake_apt(monkeypatch, trees: dict) -> list[str]:
    """apt-get and dpkg replaced: a package's .deb is an empty file, and extracting it calls ``trees[package](root)``.
    Returns the packages "downloaded", in order."""
    downloads = []

    def download_deb(package: str, debs: Path) -> Path:
        downloads.append(package)
        deb = debs / f"{package}_1.0_all.deb"
        deb.write_bytes(b"")
        return deb

    monkeypatch.setattr(apt, "ensure_apt_lists", lambda: None)
    monkeypatch.setattr(apt, "download_deb", download_deb)
    monkeypatch.setattr(apt, "deb_version", lambda deb, package: "1.0")
    monkeypatch.setattr(apt, "extract_deb", lambda deb, root, package: trees[package](root))
    return downloads


def run_script(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fetch_photo_pool.py", *args])
    code = fetch_photo_pool.main()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_script_end_to_end_on_a_fake_package(tmp_path, monkeypatch, capsys):
    downloads = fake_apt(monkeypatch, {"mate-backgrounds": mate_backgrounds})
    out = tmp_path / "pool"
    args = ("--out", str(out), "--packages", "mate-backgrounds", "--markdown")
    code, stdout, err = run_script(monkeypatch, capsys, *args)
    assert code == 0, err
    rows = manifest.read_tsv(out / "MANIFEST.tsv")
    assert [(r["file"], r["split"], r["tag"], r["licence"], r["width"], r["height"]) for r in rows] == [
        ("mate-backgrounds__Aqua.jpg", "train", "water", "GPL-2.0-or-later", "1700", "1100"),
        ("mate-backgrounds__LadyBird.jpg", "valid", "animals", "GPL-2.0-or-later", "400", "300")]
    assert {r["file"]: r["reason"] for r in manifest.read_tsv(out / "EXCLUDED.tsv")} == {
        "mate-backgrounds__Dune.jpg": TOO_SMALL, "mate-backgrounds__New.jpg": "not reviewed (not in the allow-list)",
        "mate-backgrounds__Wood.jpg": f"{TOO_SMALL} (1700x1000)"}
    assert sorted(p.name for p in (out / "images").iterdir()) == [r["file"] for r in rows]
    assert not (out / ".debs").exists()  # no --keep-debs
    assert "| `mate-backgrounds` | 1.0 | 1 | 1 | 0.5 | GPL-2.0-or-later (2) |" in stdout
    assert "not reviewed, left out: New.jpg" in err
    # A second run downloads nothing, compares nothing and writes the same tables.
    written = {name: (out / name).read_bytes() for name in ("MANIFEST.tsv", "EXCLUDED.tsv")}
    code, stdout, err = run_script(monkeypatch, capsys, *args)
    assert code == 0 and downloads == ["mate-backgrounds"], err
    assert "mate-backgrounds: 2 photos already in the pool, skipped" in stdout
    assert "near-copy check: nothing changed since the last run" in stdout
    assert {name: (out / name).read_bytes() for name in written} == written
