"""Fetch the offline "photo pool": real photographs shipped in Debian packages (docs/protocol.md, Data sources).

    python scripts/fetch_photo_pool.py                      # all packages into data/photo_pool
    python scripts/fetch_photo_pool.py --packages palapeli-data --keep-debs
    python scripts/fetch_photo_pool.py --markdown           # also print docs/data.md's tables from the manifest

For each package: ``apt-get download`` into ``<out>/.debs`` (no root needed), ``dpkg -x`` into a temporary
staging folder, keep only the photographs that the rules in photo_pool_rules.toml choose (some live inside Qt or
EFL resource archives, read by resource_archives.py), copy them to ``<out>/images/<package>__<name>`` and record
them in ``<out>/MANIFEST.tsv``.
Then every photo is compared by content (near_copies.py) with the others and with the benchmark and evaluation
images the rules name: near-copies are kept once, benchmark look-alikes never. What is left out, and why, is
listed in ``<out>/EXCLUDED.tsv``.

Re-running is cheap: a package whose manifest rows all point at intact files is skipped without downloading, and
the content comparison is skipped when nothing changed. The photos are not ours to relicense: never commit them;
the manifest keeps each file's licence and attribution.

The work is done by the modules of photo_pool/: rules (the rules file), selection, licences, manifest, apt,
dedup (near-copies) and tables (the summary and the markdown).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from photo_pool import apt, dedup, selection, tables
from photo_pool.errors import FetchError, warn
from photo_pool.manifest import EXCLUDED_COLUMNS, make_row, read_tsv, rows_intact, split_of, write_manifest, write_tsv
from photo_pool.rules import RulesError, load_rules

from srdensenet.fileio import OutputError


def fetch_package(package: str, out: Path) -> tuple[list[dict], list[dict]]:
    """Download, extract, select and copy one package's photos; returns its manifest rows and its exclusions."""
    debs = out / ".debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = apt.download_deb(package, debs)
    version = apt.deb_version(deb, package)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".staging-{package}-") as staging:
        root = Path(staging)
        apt.extract_deb(deb, root, package)
        chosen, left_out = selection.choose(package, selection.candidates(package, root))
        if not chosen:
            raise FetchError(f"{package} {version}: no photo matches {load_rules().packages[package].patterns}")
        dedup.copy_references(package, root, out / "references")
        copyright_file = root / "usr/share/doc" / package / "copyright"
        copyright_text = copyright_file.read_text(encoding="utf-8") if copyright_file.is_file() else ""
        made = [make_row(package, version, root, path, images, copyright_text) for path in chosen]
        selection.rcc_files.cache_clear()  # the staging folder goes away
    skipped = [{"file": selection.output_name(package, source), "package": package, "package_version": version,
                "source_path": source, "reason": why} for source, why in left_out]
    return [r for r in made if "reason" not in r], [r for r in made if "reason" in r] + skipped


def update_package(package: str, rows: list[dict], excluded: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """The pool's manifest and exclusion rows after bringing ``package`` up to date (nothing to do if intact)."""
    images = out / "images"
    old = [r for r in rows if r["package"] == package]
    if rows_intact(old, images) and dedup.references_intact(package, out):
        print(f"{package}: {len(old)} photos already in the pool, skipped", flush=True)
        return rows, excluded
    print(f"{package}: fetching", flush=True)
    apt.ensure_apt_lists()
    new, left_out = fetch_package(package, out)
    # Files the package no longer provides (or that are now left out) would otherwise linger unrecorded.
    for row in old:
        if row["file"] not in {r["file"] for r in new}:
            (images / row["file"]).unlink(missing_ok=True)
    print(f"{package}: {len(new)} photos, {len(left_out)} other candidates left out", flush=True)
    return ([r for r in rows if r["package"] != package] + new,
            [r for r in excluded if r["package"] != package] + left_out)


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
            except apt.AptListsMissing:
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
    try:
        rules = load_rules()
    except RulesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    packages = list(rules.packages)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/photo_pool"), help="pool folder (default %(default)s)")
    parser.add_argument("--packages", nargs="+", choices=packages, default=packages, metavar="PKG",
                        help=f"subset of: {' '.join(packages)}")
    parser.add_argument("--keep-debs", action="store_true", help="keep the downloaded .debs in <out>/.debs")
    parser.add_argument("--markdown", action="store_true", help="also print docs/data.md's tables of the pool")
    args = parser.parse_args()

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows, excluded, failed = fetch_all(args.packages, out, args.keep_debs)
        for row in rows:  # the valid photos and tags may have changed since the rows of skipped packages were written
            row["split"], row["tag"] = split_of(row["file"]), rules.tags.get(row["file"], "")
        rows, excluded = dedup.deduplicate(rows, excluded, out)
    except (FetchError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_manifest(out / "MANIFEST.tsv", rows)
    write_tsv(out / "EXCLUDED.tsv", excluded, EXCLUDED_COLUMNS)
    for name in sorted(rules.valid_files - {r["file"] for r in rows}):
        if name.split("__")[0] in args.packages:
            warn(f"valid photo {name} is missing from the pool")
    if rows:
        tables.summarise(rows, excluded, out / "images", time.perf_counter() - start)
    if args.markdown and rows:
        print("\n" + tables.markdown(rows))
    if failed:
        print(f"error: failed packages: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
