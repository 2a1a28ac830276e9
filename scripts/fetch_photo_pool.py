"""Fetch the offline "photo pool": real photographs shipped in Debian packages (docs/protocol.md, Data sources).

    python scripts/fetch_photo_pool.py                      # all packages into data/photo_pool
    python scripts/fetch_photo_pool.py --packages palapeli-data --keep-debs

For each package: ``apt-get download`` into ``<out>/.debs`` (no root needed), ``dpkg -x`` into a temporary
staging folder, keep only the photographs chosen below, copy them to ``<out>/images/<package>__<stem>.<ext>`` and
record them in ``<out>/MANIFEST.tsv`` (package, version, source path, licence, size, sha256, train/valid split).

Re-running is cheap: a package whose manifest rows all point at intact files is skipped without downloading.
The photos are not ours to relicense: never commit them; the manifest keeps each file's licence and attribution.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

PACKAGES = [
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "plasma-workspace-wallpapers",
    "palapeli-data",
    "libvigraimpex-dev",
    "opencv-doc",
]

MANIFEST_COLUMNS = ["file", "package", "package_version", "source_path", "licence", "width", "height", "sha256",
                    "split", "licence_note"]


@dataclass(frozen=True)
class Rule:
    """Which files of an extracted package are photographs."""

    patterns: tuple[str, ...]  # globs relative to the extracted root
    allow: frozenset[str] | None = None  # if set, keep only these basenames (chosen by looking at every file)


# Every list below was made by looking at each image of the bookworm packages (lomiri-wallpapers 20.04.0-2,
# mate-backgrounds 1.26.0-1, plasma-workspace-wallpapers 5.27.5-2, palapeli-data 22.12.3-1,
# libvigraimpex-dev 1.11.1+dfsg-11, opencv-doc 4.6.0+dfsg-12). Allow-lists, not deny-lists, where the package
# mixes photos with artwork: a new upstream version then cannot slip drawings or test charts into the pool.
RULES: dict[str, Rule] = {
    # Skipped as artwork: umang_by_Abhishek_Mudgal (colour gradient), and in 20.04 Fossa_by_Jasper_Roks and
    # Painting-Colors_by__herobrine7gamer (flat vector shapes), Infinite-Sea_by_Aury88 (composite: rendered sea
    # and low-poly overlay around a Milky Way photo). analogpattern_by_Peter_Nerlich is a tinted macro photo of
    # a textured surface: kept.
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
    ),
    "lomiri-wallpapers-20.04": Rule(
        patterns=("usr/share/backgrounds/*.jpg",),
        allow=frozenset({"Kleiber_by_Lukas_Baubkus.jpg"}),
    ),
    # All twelve are photographs (flowers, leaves, grass, water drop, dune, storm, wood).
    "mate-backgrounds": Rule(patterns=("usr/share/backgrounds/mate/nature/*.jpg",)),
    # The nine wallpaper folders that are photographs (Volna, a 3D render of a low-poly beach, is left out).
    # The largest of the pre-scaled sizes in each folder is chosen by select_photos().
    "plasma-workspace-wallpapers": Rule(
        patterns=tuple(f"usr/share/wallpapers/{name}/contents/images/*.jpg" for name in (
            "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "OneStandsOut",
            "Path", "summer_1am")),
    ),
    # Five Wikimedia Commons photos (castle, bridge at night, citrus slices, bee, chameleon).
    "palapeli-data": Rule(patterns=("usr/share/palapeli/collection/*.jpg",)),
    # A 2272x1704 photo of a railway (the package also has a JPEG and a small copy of it: the PNG is kept).
    "libvigraimpex-dev": Rule(patterns=("usr/share/doc/libvigraimpex-dev/examples/oi.png",)),
    # Real colour photographs with a short side >= 256 px. Not kept: renders (Blender_Suzanne*, blox, ml),
    # charts, text and shapes (chessboard, left01..14/right01..14, digits, pic1-6, sudoku, imageText*, text_*,
    # cards, detect_blob, gradient, ellipses, pca_test1, logos), a painting (starry_night), grey frames
    # (basketball*, box*), soft or blurred shots (apple, orange, left/right, stuff, licenseplate_motion),
    # the second view of a pair (aero3, aloeR, graf3, leuvenB, rubberwhale2, ela_modified), the depth map
    # aloeGT, and baboon: it is in Set14, which we evaluate on.
    "opencv-doc": Rule(
        patterns=("usr/share/doc/opencv-doc/examples/data/*.jpg", "usr/share/doc/opencv-doc/examples/data/*.png"),
        allow=frozenset({
            "aero1.jpg", "aloeL.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "chicky_512.png",
            "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg",
            "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
        }),
    ),
}

# Held-out photos (split=valid), one per package, chosen for different content so that a validation PSNR says
# something about more than one kind of image: man-made texture and saturated colour (paint brushes), natural
# macro with bokeh (ladybird), a night city scene with point lights and straight edges (bridge), and daytime
# architecture with brick and cobblestones, close to Urban100 (Leuven). Everything else is train; the second
# views of pairs (leuvenB, ...) are left out of the pool above so that no near-copy of a valid photo is trained on.
VALID_FILES = frozenset({
    "lomiri-wallpapers-16.04__Picture_1A_by_freespace.jpg",
    "mate-backgrounds__LadyBird.jpg",
    "palapeli-data__cincinnati-bridge.jpg",
    "opencv-doc__leuvenA.jpg",
})

# Short SPDX identifiers for the licence names Debian copyright files use.
SPDX = {
    "GPL-2+": "GPL-2.0-or-later", "GPL-2.0+": "GPL-2.0-or-later", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2+": "LGPL-2.0-or-later", "LGPL-2.1+": "LGPL-2.1-or-later", "Expat": "MIT",
    "BSD-3-clause": "BSD-3-Clause", "BSD-2-clause": "BSD-2-Clause", "CC0": "CC0-1.0",
}

_SIZE_NAME = re.compile(r"^(\d+)x(\d+)$")


class FetchError(RuntimeError):
    """A failure the user can act on; main() prints it and exits non-zero."""


class AptListsMissing(FetchError):
    """No package can be fetched: stop at once instead of failing every package the same way."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- selection


def output_name(package: str, source_path: str) -> str:
    """``<package>__<stem>.<ext>``; plasma files are named by size (2560x1600.jpg), so they take the folder name."""
    path = Path(source_path)
    stem = path.parts[-4] if package == "plasma-workspace-wallpapers" else path.stem
    return f"{package}__{stem}{path.suffix}"


def select_photos(package: str, root: Path) -> list[str]:
    """Photos of ``package`` extracted under ``root``, as sorted posix paths relative to ``root``."""
    rule = RULES[package]
    found: list[Path] = []
    for pattern in rule.patterns:
        matches = sorted(p for p in root.glob(pattern) if p.is_file())
        if package == "plasma-workspace-wallpapers":
            # Each folder holds the same picture pre-scaled to many screen sizes: keep only the largest.
            sized = [(int(m[1]) * int(m[2]), p) for p in matches if (m := _SIZE_NAME.match(p.stem))]
            matches = [max(sized)[1]] if sized else []
            if not matches:
                warn(f"{package}: nothing matches {pattern}")
        found += matches
    names = {p.name for p in found}
    if rule.allow is not None:
        for missing in sorted(rule.allow - names):
            warn(f"{package}: allow-listed {missing} is not in this version of the package")
        found = [p for p in found if p.name in rule.allow]
    return sorted(p.relative_to(root).as_posix() for p in found)


# ---------------------------------------------------------------------------------------------- licences


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable (DEP-5) copyright file as {field: value}; continuation lines joined."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, None
        elif line[0] in " \t" and field:
            current[field] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            field, value = line.split(":", 1)
            current[field] = value.strip()
    return paragraphs


def licence_from_copyright(text: str, source_path: str) -> tuple[str, str]:
    """(SPDX-like licence, copyright holder) for one installed file, from its package's copyright file.

    DEP-5 ``Files:`` patterns name paths in the *source* tree, which do not map onto installed paths in general.
    So: a stanza naming the file explicitly (no wildcard, same basename) wins, else the ``Files: *`` stanza.
    """
    paragraphs = [p for p in parse_dep5(text) if "Files" in p]
    if not paragraphs:
        return "unknown (not a DEP-5 copyright file)", ""
    basename = Path(source_path).name
    chosen = None
    for paragraph in paragraphs:  # the last match wins, as in DEP-5
        patterns = paragraph["Files"].split()
        if any(not any(c in p for c in "*?[") and Path(p).name == basename for p in patterns):
            chosen = paragraph
    if chosen is None:
        chosen = next((p for p in paragraphs if "*" in p["Files"].split()), paragraphs[0])
    licence = chosen.get("License", "").splitlines()[0] if chosen.get("License") else "unknown"
    licence = " AND ".join(SPDX.get(part, part) for part in licence.split(" AND "))
    holder = chosen.get("Copyright", "").splitlines()[0] if chosen.get("Copyright") else ""
    return licence, holder


def upstream_note(package: str, root: Path, source_path: str) -> str:
    """Per-image author/licence that some packages ship beside the picture (more precise than the copyright file)."""
    path = root / source_path
    if package == "plasma-workspace-wallpapers":
        meta = path.parents[2] / "metadata.json"
        if meta.is_file():
            plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
            authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
            return f"metadata.json: {plugin.get('License', '?')}, {authors}"
    if package == "palapeli-data":
        desktop = path.with_suffix(".desktop")
        if desktop.is_file():
            fields = dict(line.split("=", 1) for line in desktop.read_text(encoding="utf-8").splitlines()
                          if line.startswith("X-KDE-PluginInfo-") and "=" in line)
            return (f"desktop file: {fields.get('X-KDE-PluginInfo-License', '?')}, "
                    f"{fields.get('X-KDE-PluginInfo-Author', '?')}, {fields.get('X-KDE-PluginInfo-Website', '')}")
    return ""


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write the manifest sorted by file name, atomically: readers never see a half-written file."""
    rows = sorted(rows, key=lambda r: r["file"])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        # No quoting: fields never hold tabs or newlines (see below), so `cut -f` and line.split("\t") read it too.
        writer = csv.DictWriter(f, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE,
                                quotechar=None, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            # A tab or newline inside a field would break the one-row-per-line format for simple readers.
            writer.writerow({k: " ".join(str(row.get(k, "")).split()) for k in MANIFEST_COLUMNS})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def split_of(file_name: str) -> str:
    return "valid" if file_name in VALID_FILES else "train"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def rows_intact(rows: list[dict[str, str]], images: Path) -> bool:
    """True if every row's image exists with the recorded hash: the package needs no work."""
    return bool(rows) and all((images / r["file"]).is_file() and sha256_of(images / r["file"]) == r["sha256"]
                              for r in rows)


def make_row(package: str, version: str, root: Path, source_path: str, images: Path, copyright_text: str) -> dict:
    """Copy one selected photo into ``images`` (temp + rename) and describe it as a manifest row."""
    name = output_name(package, source_path)
    target = images / name
    tmp = images / f".{name}.tmp-{os.getpid()}"
    shutil.copyfile(root / source_path, tmp)
    os.replace(tmp, target)
    image = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FetchError(f"{package}: {source_path} is not a readable image")
    licence, holder = licence_from_copyright(copyright_text, source_path)
    note = upstream_note(package, root, source_path) or (f"© {holder}" if holder else "")
    return {
        "file": name, "package": package, "package_version": version, "source_path": source_path,
        "licence": licence, "width": image.shape[1], "height": image.shape[0], "sha256": sha256_of(target),
        "split": split_of(name), "licence_note": note,
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
        return Path(shutil.move(str(got[0]), debs / got[0].name))


def fetch_package(package: str, out: Path) -> list[dict]:
    """Download, extract, select and copy one package's photos; returns its manifest rows."""
    debs = out / ".debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = download_deb(package, debs)
    version = run(["dpkg-deb", "-f", str(deb), "Version"], package).stdout.strip()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".staging-{package}-") as staging:
        root = Path(staging)
        run(["dpkg", "-x", str(deb), str(root)], package)
        selected = select_photos(package, root)
        if not selected:
            raise FetchError(f"{package} {version}: no photo matches {RULES[package].patterns}")
        names = [output_name(package, path) for path in selected]
        if len(set(names)) != len(names):  # two photos would overwrite one another in images/
            raise FetchError(f"{package}: selected photos share an output name: {sorted(names)}")
        copyright_file = root / "usr/share/doc" / package / "copyright"
        copyright_text = copyright_file.read_text(encoding="utf-8") if copyright_file.is_file() else ""
        return [make_row(package, version, root, path, images, copyright_text) for path in selected]


def update_package(package: str, rows: list[dict], out: Path) -> list[dict]:
    """The pool's manifest rows after bringing ``package`` up to date (nothing to do if its photos are intact)."""
    images = out / "images"
    old = [r for r in rows if r["package"] == package]
    if rows_intact(old, images):
        print(f"{package}: {len(old)} photos already in the pool, skipped", flush=True)
        return rows
    print(f"{package}: fetching", flush=True)
    ensure_apt_lists()
    new = fetch_package(package, out)
    # Files the package no longer provides would otherwise linger in the pool unrecorded.
    for row in old:
        if row["file"] not in {r["file"] for r in new}:
            (images / row["file"]).unlink(missing_ok=True)
    print(f"{package}: {len(new)} photos", flush=True)
    return [r for r in rows if r["package"] != package] + new


# ---------------------------------------------------------------------------------------------- main


def summarise(rows: list[dict], images: Path, seconds: float) -> None:
    def megabytes(mine: list[dict]) -> float:
        return sum((images / r["file"]).stat().st_size for r in mine if (images / r["file"]).is_file()) / 1e6

    print(f"{'package':30s} {'photos':>6s} {'Mpixel':>8s} {'MB':>7s}  sizes (w x h)")
    for package in PACKAGES:
        mine = [r for r in rows if r["package"] == package]
        if not mine:
            continue
        pixels = sum(int(r["width"]) * int(r["height"]) for r in mine) / 1e6
        sizes = [int(r["width"]) * int(r["height"]) for r in mine]
        small, large = mine[sizes.index(min(sizes))], mine[sizes.index(max(sizes))]
        print(f"{package:30s} {len(mine):6d} {pixels:8.1f} {megabytes(mine):7.1f}  "
              f"{small['width']}x{small['height']} .. {large['width']}x{large['height']}")
    pixels = sum(int(r["width"]) * int(r["height"]) for r in rows) / 1e6
    valid = sorted(r["file"] for r in rows if r["split"] == "valid")
    print(f"{'total':30s} {len(rows):6d} {pixels:8.1f} {megabytes(rows):7.1f}  in {seconds:.1f} s")
    print(f"valid split ({len(valid)}): {', '.join(valid)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/photo_pool"), help="pool folder (default %(default)s)")
    parser.add_argument("--packages", nargs="+", choices=PACKAGES, default=PACKAGES, metavar="PKG",
                        help=f"subset of: {' '.join(PACKAGES)}")
    parser.add_argument("--keep-debs", action="store_true", help="keep the downloaded .debs in <out>/.debs")
    args = parser.parse_args()

    start = time.perf_counter()
    out: Path = args.out
    images = out / "images"
    manifest_path = out / "MANIFEST.tsv"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(manifest_path)
    failed: list[str] = []
    try:
        for package in args.packages:
            try:
                rows = update_package(package, rows, out)
                write_manifest(manifest_path, rows)  # after each package: an interrupted run keeps what it did
            except AptListsMissing:
                raise
            except FetchError as e:
                print(f"error: {e}", file=sys.stderr)
                failed.append(package)
            finally:
                # Without --keep-debs no .deb outlives its package's turn, including one that failed to extract
                # (the next run downloads it afresh) and one an earlier --keep-debs run left behind.
                if not args.keep_debs:
                    for deb in (out / ".debs").glob(f"{package}_*.deb"):
                        deb.unlink()
    except AptListsMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        debs = out / ".debs"
        if debs.is_dir() and not any(debs.iterdir()):
            debs.rmdir()

    for row in rows:  # VALID_FILES may have changed since the rows of skipped packages were written
        row["split"] = split_of(row["file"])
    write_manifest(manifest_path, rows)
    seen: dict[str, str] = {}
    for row in rows:
        if row["sha256"] in seen:
            warn(f"{row['file']} is a byte copy of {seen[row['sha256']]}")
        seen[row["sha256"]] = row["file"]
    for name in sorted(VALID_FILES - {r["file"] for r in rows}):
        if name.split("__")[0] in args.packages:
            warn(f"valid photo {name} is missing from the pool")
    summarise(rows, images, time.perf_counter() - start)
    if failed:
        print(f"error: failed packages: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
