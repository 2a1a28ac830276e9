"""De-duplication of the pool by content (near_copies.py): near-copies are kept once, look-alikes of a benchmark or
evaluation image never. The benchmark images shipped by pool packages are kept in ``<out>/references/`` for this."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import near_copies
import numpy as np

from photo_pool.errors import FetchError, warn
from photo_pool.manifest import EXCLUDED_COLUMNS
from photo_pool.rules import load_rules
from srdensenet.fileio import atomic_write, write_bytes_atomic, write_text_atomic
from srdensenet.image_files import ImageReadError, read_image_file

REPO = Path(__file__).resolve().parents[2]

# Besides the rules' benchmarks: images of the repository and the photos the demo validates on (scikit-image's).
REPO_REFERENCES = {"Set5 butterfly (srdensenet/golden)": "srdensenet/golden/butterfly.png"}
DEMO_EVALUATION = ("chelsea", "camera", "coffee")  # skimage photos the demo validates on (prepare_dataset.DEMO_VALID)


def reference_name(label: str, source: str) -> str:
    """File name of a benchmark image copied to <out>/references/: the label, plainly, and the source's suffix."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + Path(source).suffix.lower()


def copy_references(package: str, root: Path, references: Path) -> None:
    """Keep the benchmark images this package ships, to compare the pool with (never part of the pool)."""
    for label, (owner, source) in load_rules().benchmarks.items():
        if owner != package:
            continue
        if not (root / source).is_file():
            warn(f"{package}: benchmark image {label} ({source}) is not in this version of the package")
            continue
        references.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(references / reference_name(label, source), (root / source).read_bytes())


def references_intact(package: str, out: Path) -> bool:
    return all((out / "references" / reference_name(label, source)).is_file()
               for label, (owner, source) in load_rules().benchmarks.items() if owner == package)


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
    try:  # the header first: a damaged or hostile file is refused before OpenCV allocates what it claims
        data, _ = read_image_file(path)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (ImageReadError, cv2.error) as error:
        raise FetchError(f"{path}: not a readable image ({error})") from None
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
    benchmarks = load_rules().benchmarks
    missing = sorted(label for label in benchmarks if not (out / "references" / reference_name(
        label, benchmarks[label][1])).is_file())
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
