"""The pool's two tables, MANIFEST.tsv (one row per photo) and EXCLUDED.tsv (each candidate left out, and why), and
the manifest row of a photo copied into the pool."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import cv2
import numpy as np

from photo_pool.errors import FetchError
from photo_pool.licences import copyright_stanza, licence_from_copyright, upstream_note
from photo_pool.rules import MIN_MPIXEL, PRESCALE, TOO_SMALL, load_rules
from photo_pool.selection import output_name, read_source
from srdensenet.fileio import write_bytes_atomic, write_text_atomic
from srdensenet.image_files import ImageReadError, image_header

MANIFEST_COLUMNS = ["file", "package", "package_version", "source_path", "licence", "author", "width", "height",
                    "prescale", "sha256", "split", "tag", "licence_note"]
EXCLUDED_COLUMNS = ["file", "package", "package_version", "source_path", "reason"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


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
    return "valid" if file_name in load_rules().valid_files else "train"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def rows_intact(rows: list[dict[str, str]], images: Path) -> bool:
    """True if there are rows, all in today's format, allow-listed today, and every image exists with the recorded
    hash: the package needs no work. (A changed rule or manifest format makes the package be fetched again.)"""
    def current(row: dict[str, str]) -> bool:
        rule = load_rules().packages.get(row["package"])
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
    try:  # the header first: a damaged or hostile file is refused before OpenCV allocates what it claims
        header = image_header(data, f"{package}: {source_path}")
        image = None if header is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except (ImageReadError, cv2.error) as error:
        raise FetchError(f"{package}: {source_path} is not a readable image ({error})") from None
    if image is None:
        raise FetchError(f"{package}: {source_path} is not a readable image")
    height, width = image.shape[:2]
    row = {"file": name, "package": package, "package_version": version, "source_path": source_path}
    if width * height / PRESCALE ** 2 < MIN_MPIXEL * 1e6 and split_of(name) != "valid":
        return {**row, "reason": f"{TOO_SMALL} ({width}x{height})"}
    write_bytes_atomic(images / name, data)
    files_pattern = load_rules().packages[package].copyright_files
    licence, holder = licence_from_copyright(copyright_text, source_path, files_pattern)
    note, author = upstream_note(package, root, source_path)
    # The author is whoever the package credits for this very photo: its own credits, else a copyright stanza
    # naming it (or its folder). The "Files: *" holder is the software's, shown in the note only.
    specific = copyright_stanza(copyright_text, source_path, files_pattern)[1]
    return {
        **row, "licence": licence, "author": author or (holder if specific else ""), "width": width, "height": height,
        "prescale": f"{PRESCALE:g}", "sha256": sha256_of(images / name), "split": split_of(name),
        "tag": load_rules().tags.get(name, ""), "licence_note": note or (f"© {holder}" if holder else ""),
    }
