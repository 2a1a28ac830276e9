"""Fetch the offline "photo pool": real photographs shipped in Debian packages (docs/protocol.md, Data sources).

    python scripts/fetch_photo_pool.py                      # all packages into data/photo_pool
    python scripts/fetch_photo_pool.py --packages palapeli-data --keep-debs
    python scripts/fetch_photo_pool.py --markdown           # also print docs/data.md's tables from the manifest

For each package: ``apt-get download`` into ``<out>/.debs`` (no root needed), ``dpkg -x`` into a temporary
staging folder, keep only the photographs chosen below (some live inside Qt or EFL resource archives, read by
resource_archives.py), copy them to ``<out>/images/<package>__<name>`` and record them in ``<out>/MANIFEST.tsv``.
Then every photo is compared by content (near_copies.py) with the others and with the benchmark and evaluation
images named in BENCHMARKS: near-copies are kept once, benchmark look-alikes never. What is left out, and why, is
listed in ``<out>/EXCLUDED.tsv``.

Re-running is cheap: a package whose manifest rows all point at intact files is skipped without downloading, and
the content comparison is skipped when nothing changed. The photos are not ours to relicense: never commit them;
the manifest keeps each file's licence and attribution.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import near_copies
import numpy as np
import resource_archives

from srdensenet.fileio import OutputError, atomic_write, write_bytes_atomic, write_text_atomic

REPO = Path(__file__).resolve().parent.parent

PACKAGES = [
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "palapeli-data",
    "libvigraimpex-dev",
    "opencv-doc",
    "lxqt-themes",
    "enlightenment-data",
    "gcompris-qt-data",
    "forensics-samples-files",
    "libelementary-data",
    "libjxl-testdata",
    "sddm-theme-maldives",
]

MANIFEST_COLUMNS = ["file", "package", "package_version", "source_path", "licence", "author", "width", "height",
                    "prescale", "sha256", "split", "tag", "licence_note"]
EXCLUDED_COLUMNS = ["file", "package", "package_version", "source_path", "reason"]

PRESCALE = 2.0  # area downscale applied before HR patches are cut (prepare_dataset.py): hides JPEG artefacts
MIN_MPIXEL = 0.45  # training photos must keep at least this many Mpixel after the prescale ("~0.5 Mpixel")
ARCHIVE_SEPARATOR = "!"  # source paths inside archives: "<archive file>!<member>"

TOO_SMALL = f"too small: under {MIN_MPIXEL} Mpixel after the {PRESCALE:g}x prescale"


@dataclass(frozen=True)
class Rule:
    """Which files of an extracted package are photographs, and why every other candidate is not.

    Names are those the photo gets in the pool after ``<package>__`` (see candidates()): the basename, the
    wallpaper folder for plasma, the archive member's basename for rcc, the archive's stem for edj.
    """

    patterns: tuple[str, ...]  # globs relative to the extracted root: photos, or archives holding them
    allow: frozenset[str]  # kept, chosen by looking at every candidate
    skip: Mapping[str, str] = field(default_factory=dict)  # name glob -> why it is left out
    archive: str = ""  # "rcc": members matching `member`; "edj": the largest JPEG of each archive
    member: str = ""  # glob over rcc member paths
    largest_only: bool = False  # plasma: one picture per folder at many sizes; keep the largest
    copyright_files: str = ""  # DEP-5 "Files:" pattern covering the photos, where they are not named one by one


# Every list below was made by looking at each candidate image of the bookworm packages (versions in the
# manifest). Allow-lists, not deny-lists: a new upstream version cannot slip drawings or test charts into the pool;
# candidates that are neither allowed nor skipped are reported as not reviewed and left out.
RULES: dict[str, Rule] = {
    # analogpattern_by_Peter_Nerlich is a tinted macro photo of a textured surface: kept.
    "lomiri-wallpapers-16.04": Rule(
        patterns=("usr/share/backgrounds/*.jpg",),
        allow=frozenset({
            "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
            "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
            "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg",
        }),
        skip={"umang_by_Abhishek_Mudgal.jpg": "artwork: a colour gradient"},
    ),
    "lomiri-wallpapers-20.04": Rule(
        patterns=("usr/share/backgrounds/*.jpg",),
        allow=frozenset({"Kleiber_by_Lukas_Baubkus.jpg"}),
        skip={"Fossa_by_Jasper_Roks.jpg": "artwork: flat vector shapes",
              "Painting-Colors_by__herobrine7gamer.jpg": "artwork: flat vector shapes",
              "Infinite-Sea_by_Aury88.jpg": "composite: rendered sea and low-poly overlay around a Milky Way photo"},
    ),
    # The nature folder only: abstract/ and desktop/ hold artwork (Elephants is a painting, the rest vector art).
    "mate-backgrounds": Rule(
        patterns=("usr/share/backgrounds/mate/nature/*.jpg",),
        allow=frozenset({"Aqua.jpg", "Blinds.jpg", "FreshFlower.jpg", "Garden.jpg", "LadyBird.jpg", "RainDrops.jpg",
                         "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"}),
        skip={"Dune.jpg": TOO_SMALL, "GreenMeadow.jpg": TOO_SMALL},
    ),
    # Photographs among the wallpaper folders; each folder holds one picture pre-scaled to many screen sizes.
    "plasma-workspace-wallpapers": Rule(
        patterns=("usr/share/wallpapers/*/contents/images/*.jpg", "usr/share/wallpapers/*/contents/images/*.png"),
        largest_only=True,
        allow=frozenset({"BytheWater.jpg", "ColdRipple.jpg", "ColorfulCups.jpg", "DarkestHour.jpg",
                         "EveningGlow.jpg", "FallenLeaf.jpg", "Grey.jpg", "Kite.jpg", "OneStandsOut.jpg", "Path.jpg",
                         "summer_1am.jpg"}),
        skip={"Altai.png": "render: low-poly mountains", "Autumn.jpg": "artwork: painted tree",
              "Canopee.png": "render", "Cascade.png": "render", "Cluster.png": "render", "Elarun.png": "vector art",
              "Flow.jpg": "render", "FlyingKonqui.png": "drawing", "Honeywave.jpg": "render", "IceCold.png": "render",
              "Kay.png": "vector art", "Kokkini.png": "render", "MilkyWay.png": "render", "Opal.png": "render",
              "PastelHills.jpg": "render: low-poly hills", "Patak.png": "render", "SafeLanding.jpg": "drawing",
              "Shell.jpg": "render", "Volna.jpg": "render: low-poly beach"},
    ),
    # Wikimedia Commons photos. backgrounds/ holds 512x512 tiled table textures (artwork).
    "palapeli-data": Rule(
        patterns=("usr/share/palapeli/collection/*.jpg",),
        allow=frozenset({"cincinnati-bridge.jpg", "european-honey-bee.jpg", "panther-chameleon-female.jpg"}),
        skip={"castle-maintenon.jpg": TOO_SMALL, "citrus-fruits.jpg": TOO_SMALL},
    ),
    # A 2272x1704 photo of a railway.
    "libvigraimpex-dev": Rule(
        patterns=tuple(f"usr/share/doc/libvigraimpex-dev/examples/*.{ext}" for ext in ("png", "jpg", "JPG", "tif")),
        allow=frozenset({"oi.png"}),
        skip={"oi.JPG": "a smaller JPEG copy of oi.png", "oi_small.jpg": "a smaller copy of oi.png",
              "cameraman*.png": "the cameraman test image, skimage's camera: a demo validation photo",
              "house.tif": "the classic 'house' test image (256x256)", "block.tif": "synthetic test image"},
    ),
    # Only leuvenA, a validation photo since the first release, is above the size rule; Set14's baboon is a
    # benchmark image (BENCHMARKS).
    "opencv-doc": Rule(
        patterns=("usr/share/doc/opencv-doc/examples/data/*.jpg", "usr/share/doc/opencv-doc/examples/data/*.png"),
        allow=frozenset({"leuvenA.jpg"}),
        skip={
            "baboon.jpg": "benchmark: Set14 baboon",
            "aero1.jpg": TOO_SMALL, "aloeL.jpg": TOO_SMALL, "board.jpg": TOO_SMALL, "building.jpg": TOO_SMALL,
            "butterfly.jpg": TOO_SMALL, "chicky_512.png": TOO_SMALL, "ela_original.jpg": TOO_SMALL,
            "fruits.jpg": TOO_SMALL, "graf1.png": TOO_SMALL, "home.jpg": TOO_SMALL, "messi5.jpg": TOO_SMALL,
            "rubberwhale1.png": TOO_SMALL, "smarties.png": TOO_SMALL, "squirrel_cls.jpg": TOO_SMALL,
            "Blender_Suzanne*.jpg": "render", "blox.jpg": "render", "ml.png": "render",
            "chessboard.png": "chart", "left*.jpg": "calibration chessboards and blurred stereo views",
            "right*.jpg": "calibration chessboards and blurred stereo views", "digits.png": "chart",
            "pic*.png": "shapes", "sudoku.png": "text", "imageText*.png": "text", "text_*.jpg": "text",
            "cards.png": "shapes", "detect_blob.png": "shapes", "gradient.png": "chart", "ellipses.jpg": "shapes",
            "pca_test1.jpg": "shapes", "notes.png": "drawing", "*ogo*.png": "logo", "*Logo.jpg": "logo",
            "mask.png": "mask", "templ.png": "template crop", "tmpl.png": "template crop", "HappyFish.jpg": TOO_SMALL,
            "starry_night.jpg": "painting", "basketball*.png": "grey video frame", "box*.png": "grey",
            "apple.jpg": "soft", "orange.jpg": "soft", "stuff.jpg": "soft", "licenseplate_motion.jpg": "blurred",
            "aero3.jpg": "second view of a pair", "aloeR.jpg": "second view of a pair",
            "graf3.png": "second view of a pair", "leuvenB.jpg": "second view of leuvenA (a validation photo)",
            "rubberwhale2.png": "second view of a pair", "ela_modified.jpg": "edited copy of ela_original",
            "aloeGT.png": "depth map",
        },
    ),
    # The photographs of the wallpaper folder (themes/silver/beam.png is a copy of wallpapers/beam.png).
    "lxqt-themes": Rule(
        patterns=("usr/share/lxqt/wallpapers/*.jpg", "usr/share/lxqt/wallpapers/*.png"),
        allow=frozenset({"Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png",
                         "beam.png", "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg",
                         "this-is-not-windows.jpg"}),
        skip={"kde-plasma.png": "vector art", "*origami*.png": "vector art", "plasma*.png": "vector art",
              "simple_blue_widescreen.png": "vector art", "triangles*.png": "vector art", "waves*": "vector art"},
    ),
    # 4K photos inside the background .edj files (the largest of their pre-scaled JPEGs).
    "enlightenment-data": Rule(
        patterns=("usr/share/enlightenment/data/backgrounds/*.edj",),
        archive="edj",
        allow=frozenset({"Bamboo.jpg", "God-Rays.jpg", "Green-Maple.jpg", "Lichen-Branches.jpg", "Mountain.jpg",
                         "Red-Maple.jpg", "Sea-of-Lanterns.jpg", "Snow-Trees.jpg", "Spruce-Needles.jpg",
                         "Sunset-Clouds.jpg", "White-Flower.jpg", "Yellow-Flower.jpg"}),
        skip={"Dunes.jpg": "vector art", "Flat-*.jpg": "vector art and a 750x750 texture",
              "Sunset-Hills.jpg": "vector art with added grain", "Foggy-Trees.jpg": "heavy added grain",
              "Peaks.jpg": "nearly black, heavy noise", "Paper-Flower.jpg": "vector art (no JPEG inside)",
              "Squiggle*.jpg": "vector art (no JPEG inside)"},
    ),
    # The "erase" activity: 1920x1080 Wikimedia Commons wildlife photos (cropped and mildly sharpened upstream);
    # authors and licences are in docs/data.md beside them. Other activities' photos are 1024 px or less, and the
    # clickgame's underwater photos are soft and under the size rule.
    "gcompris-qt-data": Rule(
        patterns=("usr/share/gcompris-qt/rcc/erase.rcc",),
        archive="rcc",
        member="/gcompris/src/activities/erase/resource/*.webp",
        allow=frozenset({f"{name}.webp" for name in (
            "alpaca", "bee", "butterfly", "calf", "camels", "caterpillar", "chamaeleon", "cheetah", "crab",
            "dolphin", "flying_fox", "gibbon", "giraffe", "goat", "gorilla", "gosling", "heron", "horse",
            "kingfisher", "kitten", "long_nosed_monkey", "macaque", "meerkats", "northern_harrier", "nubian_ibex",
            "penguin", "pika", "red_panda", "rhinoceros", "spoonbills", "squirrel", "swans", "toucan")}),
    ),
    # Four 12-Mpixel phone photos; the WhatsApp copy (1024x768) and IMG_1054 (1280x960) are under the size rule.
    "forensics-samples-files": Rule(
        patterns=("usr/share/forensics-samples/original-files/pic*/*",),
        allow=frozenset({"IMG_20191224_234846.jpg", "IMG_20200124_231153.jpg", "IMG_20200608_111614.jpg",
                         "IMG_20200827_231612.jpg"}),
        skip={"IMG-20191006-WA0002.jpg": TOO_SMALL, "IMG_1054.JPG": TOO_SMALL, "*debian*": "logo",
              "empty.jpg": "a 1 KB blank test image"},
        copyright_files="original-files/*",
    ),
    # One 8-Mpixel photo; the other test images are 640x640 or smaller, or renders (space.png, earth_normal).
    "libelementary-data": Rule(
        patterns=("usr/share/elementary/images/*.jpg",),
        allow=frozenset({"insanely_huge_test_image.jpg"}),
        skip={"*_0[1-4].jpg": TOO_SMALL, "mystrale*.jpg": TOO_SMALL, "twofish.jpg": TOO_SMALL},
    ),
    # The lossless 2268x1512 original of the codec test photo; the JPEG variants and crops are copies of it.
    "libjxl-testdata": Rule(
        patterns=("usr/share/libjxl-testdata/jxl/flower/*.png", "usr/share/libjxl-testdata/jxl/flower/*.jpg"),
        allow=frozenset({"flower.png"}),
        skip={"flower*.jpg": "JPEG copies and crops of flower.png", "flower_alpha.png": "flower.png with alpha"},
    ),
    # The theme's background photo (maldives.jpg is a screenshot of the login screen).
    "sddm-theme-maldives": Rule(
        patterns=("usr/share/sddm/themes/maldives/*.jpg",),
        allow=frozenset({"background.jpg"}),
        skip={"maldives.jpg": "screenshot"},
    ),
}

# Held-out photos (split=valid), one per package, chosen for different content so that a validation PSNR says
# something about more than one kind of image: man-made texture and saturated colour (paint brushes), natural
# macro with bokeh (ladybird), a night city scene with point lights and straight edges (bridge), and daytime
# architecture with brick and cobblestones, close to Urban100 (Leuven). Everything else is train; near-copies of a
# valid photo are never trained on (the near-copy check keeps the valid one).
VALID_FILES = frozenset({
    "lomiri-wallpapers-16.04__Picture_1A_by_freespace.jpg",
    "mate-backgrounds__LadyBird.jpg",
    "palapeli-data__cincinnati-bridge.jpg",
    "opencv-doc__leuvenA.jpg",
})

# Benchmark and evaluation images: never trained on. Those shipped by pool packages are named in the rules' skip
# lists and copied to <out>/references/ on fetch; every pool photo is also compared by content with each of these
# and with the repository's and scikit-image's (a copy under another name, size or crop is caught too).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "Set5 butterfly": ("opencv-doc", "usr/share/doc/opencv-doc/examples/dnn_superres/butterfly.png"),
    "Set5 butterfly (SR tutorial)": ("opencv-doc", "usr/share/doc/opencv-doc/opencv4/html/orig_butterfly.jpg"),
    "Set14 baboon": ("opencv-doc", "usr/share/doc/opencv-doc/examples/data/baboon.jpg"),
    "Set14 comic": ("opencv-doc", "usr/share/doc/opencv-doc/opencv4/html/orig_comic.jpg"),
    "cameraman": ("libvigraimpex-dev", "usr/share/doc/libvigraimpex-dev/examples/cameraman.png"),
}
REPO_REFERENCES = {"Set5 butterfly (tests/data)": "tests/data/butterfly.png"}
DEMO_EVALUATION = ("chelsea", "camera", "coffee")  # skimage photos the demo validates on (prepare_dataset.DEMO_VALID)

# Content of each photo, for docs/data.md's totals and for checking that the pool stays varied.
TAG_NAMES = ("animals", "architecture", "landscape", "night", "objects", "people", "plants", "sky", "texture",
             "water")
_TAGS_BY_PACKAGE: dict[str, dict[str, str]] = {
    "lomiri-wallpapers-16.04": {
        "Bridge_by_Sander_Klootwijk.jpg": "architecture", "Dragonfly_by_Bolly.jpg": "plants",
        "Picture_0B_by_freespace.jpg": "objects", "Picture_1A_by_freespace.jpg": "objects",
        "Wine_by_Jakkub_Mede.jpg": "objects", "aitzgorri_by_Aitzol_Berasategi.jpg": "landscape",
        "analogpattern_by_Peter_Nerlich.jpg": "texture", "free_by_Peter_Nerlich.jpg": "objects",
        "friends_by_Aitzol_Berasategi.jpg": "animals", "greentock_by_Peter_Nerlich.jpg": "objects",
        "life_by_Aitzol_Berasategi.jpg": "landscape", "picosdeeuropa_by_Aitzol_Berasategi.jpg": "landscape",
        "seeding_by_Clements_Engelhardt.jpg": "plants", "sunset_by_Aitzol_Berasategi.jpg": "landscape"},
    "lomiri-wallpapers-20.04": {"Kleiber_by_Lukas_Baubkus.jpg": "animals"},
    "mate-backgrounds": {
        "Aqua.jpg": "water", "Blinds.jpg": "plants", "FreshFlower.jpg": "plants", "Garden.jpg": "plants",
        "LadyBird.jpg": "animals", "RainDrops.jpg": "plants", "Storm.jpg": "sky", "TwoWings.jpg": "animals",
        "Wood.jpg": "texture", "YellowFlower.jpg": "plants"},
    "plasma-workspace-wallpapers": {
        "BytheWater.jpg": "landscape", "ColdRipple.jpg": "landscape", "ColorfulCups.jpg": "objects",
        "DarkestHour.jpg": "landscape", "EveningGlow.jpg": "landscape", "FallenLeaf.jpg": "plants",
        "Grey.jpg": "architecture", "Kite.jpg": "sky", "OneStandsOut.jpg": "plants", "Path.jpg": "landscape",
        "summer_1am.jpg": "landscape"},
    "palapeli-data": {"cincinnati-bridge.jpg": "night", "european-honey-bee.jpg": "animals",
                      "panther-chameleon-female.jpg": "animals"},
    "libvigraimpex-dev": {"oi.png": "landscape"},
    "opencv-doc": {"leuvenA.jpg": "architecture"},
    "lxqt-themes": {
        "Butterfly-Kenneth-Wimer.jpg": "animals", "Valendas.png": "landscape", "after-the-rain.jpg": "sky",
        "appleflower.png": "plants", "beam.png": "sky", "butterfly.png": "animals", "cloud.png": "sky",
        "drop.png": "plants", "flowers.png": "plants", "fog.jpg": "landscape", "this-is-not-windows.jpg": "landscape"},
    "enlightenment-data": {
        "Bamboo.jpg": "plants", "God-Rays.jpg": "sky", "Green-Maple.jpg": "plants", "Lichen-Branches.jpg": "plants",
        "Mountain.jpg": "landscape", "Red-Maple.jpg": "plants", "Sea-of-Lanterns.jpg": "objects",
        "Snow-Trees.jpg": "landscape", "Spruce-Needles.jpg": "plants", "Sunset-Clouds.jpg": "sky",
        "White-Flower.jpg": "plants", "Yellow-Flower.jpg": "plants"},
    "gcompris-qt-data": {name: "animals" for name in RULES["gcompris-qt-data"].allow},
    "forensics-samples-files": {
        "IMG_20191224_234846.jpg": "objects", "IMG_20200124_231153.jpg": "animals",
        "IMG_20200608_111614.jpg": "animals", "IMG_20200827_231612.jpg": "objects"},
    "libelementary-data": {"insanely_huge_test_image.jpg": "people"},
    "libjxl-testdata": {"flower.png": "plants"},
    "sddm-theme-maldives": {"background.jpg": "landscape"},
}
TAGS = {f"{package}__{name}": tag for package, names in _TAGS_BY_PACKAGE.items() for name, tag in names.items()}

# Short SPDX identifiers for the licence names Debian copyright files use.
SPDX = {
    "GPL-2+": "GPL-2.0-or-later", "GPL-2.0+": "GPL-2.0-or-later", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2+": "LGPL-2.0-or-later", "LGPL-2.1+": "LGPL-2.1-or-later", "Expat": "MIT",
    "BSD-3-clause": "BSD-3-Clause", "BSD-2-clause": "BSD-2-Clause", "CC0": "CC0-1.0",
    "BSD-3-clause-Google": "BSD-3-Clause",
}

_SIZE_NAME = re.compile(r"^(\d+)x(\d+)$")


class FetchError(RuntimeError):
    """A failure the user can act on; main() prints it and exits non-zero."""


class AptListsMissing(FetchError):
    """No package can be fetched: stop at once instead of failing every package the same way."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- selection


def split_source(source_path: str) -> tuple[str, str]:
    """("archive file", "member") of a source path; member "" for a plain file."""
    path, _, member = source_path.partition(ARCHIVE_SEPARATOR)
    return path, member


@functools.lru_cache(maxsize=2)
def _rcc_files(path: str) -> dict[str, bytes]:
    return resource_archives.read_rcc(Path(path).read_bytes())


def read_source(root: Path, source_path: str) -> bytes:
    """The bytes of a selected photo: a plain file, or a member of an rcc or edj archive."""
    path, member = split_source(source_path)
    if not member:
        return (root / path).read_bytes()
    try:
        if path.endswith(".rcc"):
            return _rcc_files(str(root / path))[member]
        name, data = resource_archives.edj_largest_jpeg((root / path).read_bytes())
    except (resource_archives.ArchiveError, KeyError) as e:
        raise FetchError(f"{path}: cannot read {member}: {e}") from e
    if name != member:
        raise FetchError(f"{path}: its largest JPEG is {name}, not {member}")
    return data


def _largest_sizes(paths: list[Path]) -> list[Path]:
    """Plasma: of the files in each folder named like 2560x1600.jpg, the one with the most pixels."""
    best: dict[Path, tuple[int, Path]] = {}
    for path in paths:
        if match := _SIZE_NAME.match(path.stem):
            pixels = int(match[1]) * int(match[2])
            folder = path.parents[2]
            best[folder] = max(best.get(folder, (0, path)), (pixels, path))
    return [path for _, path in best.values()]


def candidates(package: str, root: Path) -> dict[str, str]:
    """{pool name after "<package>__": source path} of every file (or archive member) the rule's patterns find."""
    rule = RULES[package]
    found = sorted({p for pattern in rule.patterns for p in root.glob(pattern) if p.is_file()})
    if rule.largest_only:
        found = sorted(_largest_sizes(found))
    named: dict[str, str] = {}

    def add(name: str, source: str) -> None:
        if name in named:  # two files would overwrite one another in images/
            raise FetchError(f"{package}: {named[name]} and {source} would both be named {package}__{name}")
        named[name] = source

    for path in found:
        relative = path.relative_to(root).as_posix()
        if rule.archive == "rcc":
            for member in sorted(_rcc_files(str(path))):
                if fnmatch.fnmatchcase(member, rule.member):
                    add(Path(member).name, f"{relative}{ARCHIVE_SEPARATOR}{member}")
        elif rule.archive == "edj":
            try:
                member, _ = resource_archives.edj_largest_jpeg(path.read_bytes())
            except resource_archives.ArchiveError:
                member = ""  # vector-only backgrounds hold no JPEG: named anyway, so the skip list covers them
            add(f"{path.stem}.jpg", f"{relative}{ARCHIVE_SEPARATOR}{member}" if member else relative)
        elif rule.largest_only:
            add(f"{path.parts[-4]}{path.suffix}", relative)
        else:
            add(path.name, relative)
    return named


def skip_reason(rule: Rule, name: str) -> str:
    return next((why for pattern, why in rule.skip.items() if fnmatch.fnmatchcase(name, pattern)), "")


def choose(package: str, named: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted source paths of the allow-listed candidates, [(source path, why)] of the others).

    Warns about allow-listed names missing from this version and about candidates no list mentions.
    """
    rule = RULES[package]
    for missing in sorted(rule.allow - named.keys()):
        warn(f"{package}: allow-listed {missing} is not in this version of the package")
    unreviewed = sorted(n for n in named if n not in rule.allow and not skip_reason(rule, n))
    if unreviewed:
        warn(f"{package}: not reviewed, left out: {', '.join(unreviewed)}")
    left_out = [(source, skip_reason(rule, name) or "not reviewed (not in the allow-list)")
                for name, source in sorted(named.items()) if name not in rule.allow]
    return sorted(source for name, source in named.items() if name in rule.allow), left_out


def select_photos(package: str, root: Path) -> list[str]:
    """Source paths of the allow-listed photos of ``package`` extracted under ``root``, sorted."""
    return choose(package, candidates(package, root))[0]


def output_name(package: str, source_path: str) -> str:
    """``<package>__<name>``: the basename, plasma's folder, an rcc member's basename or an edj archive's stem."""
    path, member = split_source(source_path)
    if path.endswith(".edj"):  # the JPEG inside (vector-only archives hold none, but are named alike)
        return f"{package}__{Path(path).stem}.jpg"
    if member:
        return f"{package}__{Path(member).name}"
    if RULES.get(package) and RULES[package].largest_only:
        return f"{package}__{Path(path).parts[-4]}{Path(path).suffix}"
    return f"{package}__{Path(path).name}"


# ---------------------------------------------------------------------------------------------- licences


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable (DEP-5) copyright file as {field: value}; continuation lines joined."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, name = {}, None
        elif line[0] in " \t" and name:
            current[name] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            current[name] = value.strip()
    return paragraphs


def copyright_stanza(text: str, source_path: str, files_pattern: str = "") -> tuple[dict[str, str], bool]:
    """The DEP-5 stanza covering one installed file, and whether it covers the file specifically (not ``*``).

    DEP-5 ``Files:`` patterns name paths in the *source* tree, which do not map onto installed paths in general.
    So: the stanza whose patterns include ``files_pattern`` (given per package where needed) wins, else a stanza
    naming the file explicitly (no wildcard, same basename), else the ``Files: *`` stanza.
    """
    paragraphs = [p for p in parse_dep5(text) if "Files" in p]
    if not paragraphs:
        return {}, False
    basename = Path(split_source(source_path)[0]).name
    chosen = None
    for paragraph in paragraphs:  # the last match wins, as in DEP-5
        patterns = paragraph["Files"].split()
        if files_pattern in patterns or any(not any(c in p for c in "*?[") and Path(p).name == basename
                                            for p in patterns):
            chosen = paragraph
    if chosen is not None:
        return chosen, True
    return next((p for p in paragraphs if "*" in p["Files"].split()), paragraphs[0]), False


def licence_from_copyright(text: str, source_path: str, files_pattern: str = "") -> tuple[str, str]:
    """(SPDX-like licence, copyright holder) for one installed file, from its package's copyright file."""
    stanza, _ = copyright_stanza(text, source_path, files_pattern)
    if not stanza:
        return "unknown (not a DEP-5 copyright file)", ""
    licence = stanza.get("License", "").splitlines()[0] if stanza.get("License") else "unknown"
    licence = " AND ".join(SPDX.get(part, part) for part in licence.split(" AND "))
    holder = stanza.get("Copyright", "").splitlines()[0] if stanza.get("Copyright") else ""
    return licence, holder


def _plasma_note(meta: Path) -> tuple[str, str]:
    plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    return f"metadata.json: {plugin.get('License', '?')}, {authors}", authors


def _palapeli_note(desktop: Path) -> tuple[str, str]:
    fields = dict(line.split("=", 1) for line in desktop.read_text(encoding="utf-8").splitlines()
                  if line.startswith("X-KDE-PluginInfo-") and "=" in line)
    author = fields.get("X-KDE-PluginInfo-Author", "")
    return (f"desktop file: {fields.get('X-KDE-PluginInfo-License', '?')}, {author or '?'}, "
            f"{fields.get('X-KDE-PluginInfo-Website', '')}"), author


def parse_readme_credits(text: str) -> dict[str, dict[str, str]]:
    """GCompris' resource READMEs: blocks of "Copyright/Source/License/Comments/Files:" lines -> {file: block}."""
    credits: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and key in ("Copyright", "Source", "License", "Comments", "Files"):
                fields[key] = value.strip()
                files += value.split() if key == "Files" else []
            elif "Files" in fields:  # file names listed one per line below "Files:"
                files += line.split()
        credits.update({name: fields for name in files})
    return credits


def lxqt_credit(text: str, stem: str) -> str:
    """Who the wallpapers' License file credits for ``stem``: "author" lines, each followed by a line of names."""
    lines = [line.strip() for line in text.split("Credits:", 1)[-1].splitlines() if line.strip()]
    for author, names in zip(lines[::2], lines[1::2]):
        for name in (n.strip() for n in names.strip(";").split(",")):
            # The list abbreviates: "not-windows" for this-is-not-windows, "appleflowers" for appleflower.
            if name and (name == stem or stem.endswith("-" + name) or name == stem + "s"):
                return author.split(" (")[0]
    return ""


def upstream_note(package: str, root: Path, source_path: str) -> tuple[str, str]:
    """(note, author) from per-image credits some packages ship beside the picture (more precise than the
    copyright file); ("", "") where there are none."""
    path, member = split_source(source_path)
    file = root / path
    if package == "plasma-workspace-wallpapers" and (file.parents[2] / "metadata.json").is_file():
        return _plasma_note(file.parents[2] / "metadata.json")
    if package == "palapeli-data" and file.with_suffix(".desktop").is_file():
        return _palapeli_note(file.with_suffix(".desktop"))
    if package == "lxqt-themes" and (file.parent / "License").is_file():
        text = (file.parent / "License").read_text(encoding="utf-8")
        author = lxqt_credit(text, file.stem)
        return f"wallpapers/License: CC-BY-SA-3.0 (LXQt Project Team){f', {author}' if author else ''}", author
    if package == "gcompris-qt-data" and member:
        readme = _rcc_files(str(file)).get(str(Path(member).parent / "README"), b"").decode("utf-8")
        block = parse_readme_credits(readme).get(Path(member).name)
        if block:
            comments = f" ({block['Comments']})" if block.get("Comments") else ""
            return (f"README: {block.get('License', '?')}, {block.get('Copyright', '?')}, {block.get('Source', '')}"
                    f"{comments}"), block.get("Copyright", "")
    return "", ""


# ---------------------------------------------------------------------------------------------- manifest


def read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


read_manifest = read_tsv


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write rows sorted by file name, atomically: readers never see a half-written file."""
    rows = sorted(rows, key=lambda r: (r["file"], r.get("reason", "")))
    text = io.StringIO()
    # No quoting: fields never hold tabs or newlines (see below), so `cut -f` and line.split("\t") read it too.
    writer = csv.DictWriter(text, columns, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE,
                            quotechar=None, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        # A tab or newline inside a field would break the one-row-per-line format for simple readers.
        writer.writerow({k: " ".join(str(row.get(k, "")).split()) for k in columns})
    write_text_atomic(path, text.getvalue())


def write_manifest(path: Path, rows: list[dict]) -> None:
    write_tsv(path, rows, MANIFEST_COLUMNS)


def split_of(file_name: str) -> str:
    return "valid" if file_name in VALID_FILES else "train"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def rows_intact(rows: list[dict[str, str]], images: Path) -> bool:
    """True if there are rows, all in today's format, allow-listed today, and every image exists with the recorded
    hash: the package needs no work. (A changed rule or manifest format makes the package be fetched again.)"""
    def current(row: dict[str, str]) -> bool:
        rule = RULES.get(row["package"])
        return (set(MANIFEST_COLUMNS) <= row.keys() and rule is not None
                and row["file"].removeprefix(f"{row['package']}__") in rule.allow)

    return bool(rows) and all(current(r) and (images / r["file"]).is_file()
                              and sha256_of(images / r["file"]) == r["sha256"] for r in rows)


def make_row(package: str, version: str, root: Path, source_path: str, images: Path, copyright_text: str) -> dict:
    """Copy one selected photo into ``images`` (temp + rename) and describe it as a manifest row.

    A photo under the size rule (MIN_MPIXEL after PRESCALE; validation photos excepted) is not copied: the row
    returned then has a ``reason`` and belongs in EXCLUDED.tsv.
    """
    name = output_name(package, source_path)
    data = read_source(root, source_path)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FetchError(f"{package}: {source_path} is not a readable image")
    height, width = image.shape[:2]
    row = {"file": name, "package": package, "package_version": version, "source_path": source_path}
    if width * height / PRESCALE ** 2 < MIN_MPIXEL * 1e6 and split_of(name) != "valid":
        return {**row, "reason": f"{TOO_SMALL} ({width}x{height})"}
    write_bytes_atomic(images / name, data)
    licence, holder = licence_from_copyright(copyright_text, source_path, RULES[package].copyright_files)
    note, author = upstream_note(package, root, source_path)
    # The author is whoever the package credits for this very photo: its own credits, else a copyright stanza
    # naming it (or its folder). The "Files: *" holder is the software's, shown in the note only.
    specific = copyright_stanza(copyright_text, source_path, RULES[package].copyright_files)[1]
    return {
        **row, "licence": licence, "author": author or (holder if specific else ""), "width": width, "height": height,
        "prescale": f"{PRESCALE:g}", "sha256": sha256_of(images / name), "split": split_of(name),
        "tag": TAGS.get(name, ""), "licence_note": note or (f"© {holder}" if holder else ""),
    }


# ---------------------------------------------------------------------------------------------- apt / dpkg


def run(command: list[str], package: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"{package}: {command[0]} not found; this script needs a Debian/Ubuntu system") from e
    if done.returncode != 0:
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise FetchError(f"{package}: `{' '.join(command)}` failed (exit {done.returncode}):\n  {tail}")
    return done


def ensure_apt_lists() -> None:
    """apt-get download needs package lists; a fresh container has none."""
    lists = Path("/var/lib/apt/lists")
    if any(lists.glob("*_Packages*")):
        return
    if os.geteuid() == 0:
        print("apt package lists are missing: running apt-get update", flush=True)
        run(["apt-get", "update"], "apt-get update")
        return
    raise AptListsMissing("apt package lists are missing: run `sudo apt-get update` once, then re-run this script")


def download_deb(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs``, downloaded unless already there."""
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        if len(existing) > 1:
            warn(f"{package}: several .debs in {debs}, using {existing[-1].name}")
        return existing[-1]
    # Download into a private folder and move the file in afterwards: an interrupted download never
    # leaves a truncated .deb that a re-run would take for a finished one.
    with tempfile.TemporaryDirectory(dir=debs, prefix=".partial-") as tmp:
        try:
            run(["apt-get", "download", package], package, cwd=Path(tmp))
        except FetchError as e:
            if "Unable to locate package" in str(e) or "has no installation candidate" in str(e):
                raise FetchError(f"{e}\n  hint: run `sudo apt-get update`; the package is in Debian bookworm "
                                 "(main), other releases may lack it") from e
            raise
        got = list(Path(tmp).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise FetchError(f"{package}: apt-get download produced {len(got)} .deb files")
        with got[0].open("rb") as deb:
            atomic_write(debs / got[0].name, lambda handle: shutil.copyfileobj(deb, handle))
        return debs / got[0].name


def reference_name(label: str, source: str) -> str:
    """File name of a benchmark image copied to <out>/references/: the label, plainly, and the source's suffix."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + Path(source).suffix.lower()


def copy_references(package: str, root: Path, references: Path) -> None:
    """Keep the benchmark images this package ships, to compare the pool with (never part of the pool)."""
    for label, (owner, source) in BENCHMARKS.items():
        if owner != package:
            continue
        if not (root / source).is_file():
            warn(f"{package}: benchmark image {label} ({source}) is not in this version of the package")
            continue
        references.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(references / reference_name(label, source), (root / source).read_bytes())


def fetch_package(package: str, out: Path) -> tuple[list[dict], list[dict]]:
    """Download, extract, select and copy one package's photos; returns its manifest rows and its exclusions."""
    debs = out / ".debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = download_deb(package, debs)
    version = run(["dpkg-deb", "-f", str(deb), "Version"], package).stdout.strip()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".staging-{package}-") as staging:
        root = Path(staging)
        run(["dpkg", "-x", str(deb), str(root)], package)
        selected, left_out = choose(package, candidates(package, root))
        if not selected:
            raise FetchError(f"{package} {version}: no photo matches {RULES[package].patterns}")
        copy_references(package, root, out / "references")
        copyright_file = root / "usr/share/doc" / package / "copyright"
        copyright_text = copyright_file.read_text(encoding="utf-8") if copyright_file.is_file() else ""
        made = [make_row(package, version, root, path, images, copyright_text) for path in selected]
        _rcc_files.cache_clear()  # the staging folder goes away
    skipped = [{"file": output_name(package, source), "package": package, "package_version": version,
                "source_path": source, "reason": why} for source, why in left_out]
    return [r for r in made if "reason" not in r], [r for r in made if "reason" in r] + skipped


def references_intact(package: str, out: Path) -> bool:
    return all((out / "references" / reference_name(label, source)).is_file()
               for label, (owner, source) in BENCHMARKS.items() if owner == package)


def update_package(package: str, rows: list[dict], excluded: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """The pool's manifest and exclusion rows after bringing ``package`` up to date (nothing to do if intact)."""
    images = out / "images"
    old = [r for r in rows if r["package"] == package]
    if rows_intact(old, images) and references_intact(package, out):
        print(f"{package}: {len(old)} photos already in the pool, skipped", flush=True)
        return rows, excluded
    print(f"{package}: fetching", flush=True)
    ensure_apt_lists()
    new, left_out = fetch_package(package, out)
    # Files the package no longer provides (or that are now left out) would otherwise linger unrecorded.
    for row in old:
        if row["file"] not in {r["file"] for r in new}:
            (images / row["file"]).unlink(missing_ok=True)
    print(f"{package}: {len(new)} photos, {len(left_out)} other candidates left out", flush=True)
    return ([r for r in rows if r["package"] != package] + new,
            [r for r in excluded if r["package"] != package] + left_out)


# ---------------------------------------------------------------------------------------------- near-copies


def load_signatures(cache: Path) -> dict[str, near_copies.Signature]:
    """Signatures cached by sha256 (decoding ~130 large photos takes longer than comparing them)."""
    if not cache.is_file():
        return {}
    try:
        with np.load(cache) as saved:
            return {key[:-6]: near_copies.Signature(saved[key], saved[key[:-6] + ".bits"], saved[key[:-6] + ".mirr"])
                    for key in saved.files if key.endswith(".thumb")}
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache is rebuilt


def save_signatures(cache: Path, signatures: dict[str, near_copies.Signature]) -> None:
    arrays = {}
    for sha, s in signatures.items():
        arrays.update({f"{sha}.thumb": s.thumb, f"{sha}.bits": s.bits, f"{sha}.mirr": s.mirrored})
    atomic_write(cache, lambda handle: np.savez_compressed(handle, **arrays))


def signature_of_file(path: Path) -> near_copies.Signature:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FetchError(f"{path}: not a readable image")
    return near_copies.signature(image[:, :, ::-1])


def reference_signatures(out: Path) -> dict[str, near_copies.Signature]:
    """Benchmark and evaluation images to compare the pool with: the fetched ones, the repository's, skimage's."""
    found = {p.stem.replace("_", " "): signature_of_file(p) for p in sorted((out / "references").glob("*"))}
    found.update({label: signature_of_file(REPO / path) for label, path in REPO_REFERENCES.items()
                  if (REPO / path).is_file()})
    try:
        import skimage.data
    except ImportError:
        warn("scikit-image is not installed: the demo's validation photos are not compared with the pool")
        return found
    for name in DEMO_EVALUATION:
        found[f"demo validation {name}"] = near_copies.signature(getattr(skimage.data, name)())
    missing = sorted(label for label in BENCHMARKS if not (out / "references" / reference_name(
        label, BENCHMARKS[label][1])).is_file())
    if missing:
        warn(f"benchmark images not at hand (fetch their packages): {', '.join(missing)}")
    return found


def keeper(members: list[dict]) -> dict:
    """Of a group of near-copies, the one kept: a validation photo (its role is fixed), else the most pixels."""
    return min(members, key=lambda r: (r["split"] != "valid", -int(r["width"]) * int(r["height"]), r["file"]))


def near_copy_exclusions(rows: list[dict], signatures: dict[str, near_copies.Signature],
                         references: dict[str, near_copies.Signature]) -> list[dict]:
    """Rows to leave out: look-alikes of a benchmark or evaluation image, and all but one of each near-copy group."""
    excluded = []
    for row in rows:
        for label, reference in references.items():
            why = near_copies.near_copy(signatures[row["sha256"]], reference)
            if why:
                excluded.append({**row, "reason": f"benchmark/evaluation image {label}: {why}"})
                break
    out = {r["file"] for r in excluded}
    remaining = [r for r in rows if r["file"] not in out]
    groups, reasons = near_copies.groups([r["file"] for r in remaining], [signatures[r["sha256"]] for r in remaining])
    for members in groups:
        kept = keeper([remaining[i] for i in members])
        for i in members:
            if remaining[i] is not kept:
                j = remaining.index(kept)
                why = reasons.get((min(i, j), max(i, j)), "in the same group of near-copies")
                excluded.append({**remaining[i], "reason": f"near-copy of {kept['file']}: {why}"})
    return excluded


def deduplicate(rows: list[dict], excluded: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """Leave out near-copies and benchmark look-alikes (files deleted, rows moved to the exclusions)."""
    state_file = out / ".near-copies.json"
    references = reference_signatures(out)
    state = {"rows": sorted(r["sha256"] for r in rows), "references": sorted(references),
             "thresholds": [near_copies.HASH_MAX_BITS, near_copies.CROP_MIN_NCC, near_copies.MIN_CROP]}
    if state_file.is_file() and json.loads(state_file.read_text()) == state:
        print("near-copy check: nothing changed since the last run")
        return rows, excluded
    started = time.perf_counter()
    cache = out / ".signatures.npz"
    signatures = load_signatures(cache)
    for row in rows:
        if row["sha256"] not in signatures:
            signatures[row["sha256"]] = signature_of_file(out / "images" / row["file"])
    save_signatures(cache, {r["sha256"]: signatures[r["sha256"]] for r in rows})
    found = near_copy_exclusions(rows, signatures, references)
    for row in found:
        (out / "images" / row["file"]).unlink(missing_ok=True)
        print(f"left out {row['file']}: {row['reason']}")
    gone = {r["file"] for r in found}
    rows = [r for r in rows if r["file"] not in gone]
    state["rows"] = sorted(r["sha256"] for r in rows)
    write_text_atomic(state_file, json.dumps(state) + "\n")
    print(f"near-copy check: {len(rows)} photos and {len(references)} benchmark/evaluation images compared, "
          f"{len(found)} left out, in {time.perf_counter() - started:.1f} s")
    return rows, excluded + [{k: r[k] for k in EXCLUDED_COLUMNS} for r in found]


# ---------------------------------------------------------------------------------------------- summary


def mpixel(rows: list[dict]) -> float:
    """Mpixel after each photo's prescale: what training sees."""
    return sum(int(r["width"]) * int(r["height"]) / float(r.get("prescale") or PRESCALE) ** 2 for r in rows) / 1e6


def totals(rows: list[dict], key: str) -> list[tuple[str, list[dict], list[dict]]]:
    """(value of ``key``, its train rows, its valid rows) in PACKAGES / TAG_NAMES order."""
    order = PACKAGES if key == "package" else list(TAG_NAMES)
    values = sorted({r[key] for r in rows}, key=lambda v: (order.index(v) if v in order else len(order), v))
    return [(v, [r for r in rows if r[key] == v and r["split"] == "train"],
             [r for r in rows if r[key] == v and r["split"] == "valid"]) for v in values]


def summarise(rows: list[dict], excluded: list[dict], images: Path, seconds: float) -> None:
    def megabytes(mine: list[dict]) -> float:
        return sum((images / r["file"]).stat().st_size for r in mine if (images / r["file"]).is_file()) / 1e6

    print(f"{'package':26s} {'train':>5s} {'valid':>5s} {'Mpx*':>6s} {'MB':>6s}  sizes (w x h)")
    for package, train, valid in totals(rows, "package"):
        mine = train + valid
        sizes = [int(r["width"]) * int(r["height"]) for r in mine]
        small, large = mine[sizes.index(min(sizes))], mine[sizes.index(max(sizes))]
        print(f"{package:26s} {len(train):5d} {len(valid):5d} {mpixel(mine):6.1f} {megabytes(mine):6.1f}  "
              f"{small['width']}x{small['height']} .. {large['width']}x{large['height']}")
    train = [r for r in rows if r["split"] == "train"]
    print(f"{'total':26s} {len(train):5d} {len(rows) - len(train):5d} {mpixel(rows):6.1f} {megabytes(rows):6.1f}  "
          f"in {seconds:.1f} s")
    print(f"* Mpixel after the prescale; training: {len(train)} photos, {mpixel(train):.1f} Mpixel. "
          f"{len(excluded)} candidates left out (EXCLUDED.tsv)")
    print(f"valid split: {', '.join(sorted(r['file'] for r in rows if r['split'] == 'valid'))}")


def markdown(rows: list[dict]) -> str:
    """docs/data.md's tables (the photo pool), generated from the manifest."""
    lines = ["| package | version | train | valid | Mpixel (train, after prescale) | licence (copyright file) |",
             "|---|---|---:|---:|---:|---|"]
    for package, train, valid in totals(rows, "package"):
        licences = ", ".join(f"{name} ({count})" if count > 1 else name for name, count in sorted(
            {r["licence"]: sum(x["licence"] == r["licence"] for x in train + valid) for r in train + valid}.items()))
        version = (train + valid)[0]["package_version"]
        lines.append(f"| `{package}` | {version} | {len(train)} | {len(valid)} | {mpixel(train):.1f} | {licences} |")
    train = [r for r in rows if r["split"] == "train"]
    lines.append(f"| **total** | | **{len(train)}** | **{len(rows) - len(train)}** | **{mpixel(train):.1f}** | |")
    lines += ["", "| tag | train | valid | Mpixel (train) |", "|---|---:|---:|---:|"]
    for tag, tag_train, tag_valid in totals(rows, "tag"):
        lines.append(f"| {tag} | {len(tag_train)} | {len(tag_valid)} | {mpixel(tag_train):.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def fetch_all(packages: list[str], out: Path, keep_debs: bool) -> tuple[list[dict], list[dict], list[str]]:
    """Bring every package up to date; returns the manifest rows, the exclusions and the packages that failed."""
    manifest_path, excluded_path = out / "MANIFEST.tsv", out / "EXCLUDED.tsv"
    rows, excluded = read_tsv(manifest_path), read_tsv(excluded_path)
    failed: list[str] = []
    try:
        for package in packages:
            try:
                rows, excluded = update_package(package, rows, excluded, out)
                # After each package: an interrupted run keeps what it did.
                write_manifest(manifest_path, rows)
                write_tsv(excluded_path, excluded, EXCLUDED_COLUMNS)
            except AptListsMissing:
                raise
            except FetchError as e:
                print(f"error: {e}", file=sys.stderr)
                failed.append(package)
            finally:
                # Without --keep-debs no .deb outlives its package's turn, including one that failed to extract
                # (the next run downloads it afresh) and one an earlier --keep-debs run left behind.
                if not keep_debs:
                    for deb in (out / ".debs").glob(f"{package}_*.deb"):
                        deb.unlink()
    finally:
        debs = out / ".debs"
        if debs.is_dir() and not any(debs.iterdir()):
            debs.rmdir()
    return rows, excluded, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/photo_pool"), help="pool folder (default %(default)s)")
    parser.add_argument("--packages", nargs="+", choices=PACKAGES, default=PACKAGES, metavar="PKG",
                        help=f"subset of: {' '.join(PACKAGES)}")
    parser.add_argument("--keep-debs", action="store_true", help="keep the downloaded .debs in <out>/.debs")
    parser.add_argument("--markdown", action="store_true", help="also print docs/data.md's tables of the pool")
    args = parser.parse_args()

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows, excluded, failed = fetch_all(args.packages, out, args.keep_debs)
        for row in rows:  # VALID_FILES and TAGS may have changed since the rows of skipped packages were written
            row["split"], row["tag"] = split_of(row["file"]), TAGS.get(row["file"], "")
        rows, excluded = deduplicate(rows, excluded, out)
    except (FetchError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_manifest(out / "MANIFEST.tsv", rows)
    write_tsv(out / "EXCLUDED.tsv", excluded, EXCLUDED_COLUMNS)
    for name in sorted(VALID_FILES - {r["file"] for r in rows}):
        if name.split("__")[0] in args.packages:
            warn(f"valid photo {name} is missing from the pool")
    if rows:
        summarise(rows, excluded, out / "images", time.perf_counter() - start)
    if args.markdown and rows:
        print("\n" + markdown(rows))
    if failed:
        print(f"error: failed packages: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
