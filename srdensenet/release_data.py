"""The release data, from the photo pool that scripts/fetch_photo_pool.py fetches (docs/protocol.md, Data sources).

* ``build_release``: each photo area-downscaled by its prescale and cut into sub-images (train), or center-cropped
  (valid), split by MANIFEST.tsv's ``split`` column; optionally the LMDBs of the training sub-images.
* ``build_pack``: the same photos in a form that travels (``prepare_dataset.py --preset release --pack``): training
  tiles as lossy WebP, about 25 MiB in all, beside the same validation photos.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .data_builders import (
    Notes,
    PrepareError,
    available_cpus,
    build_folder,
    build_lmdb,
    crop_positions,
    extract_into,
    folder_mib,
    load_rgb8,
    lr_lmdb_path,
    refuse_foreign,
    run_tasks,
    unique_names,
)
from .fileio import write_bytes_atomic
from .image_files import encode_image, write_image
from .image_header import DEFAULT_MAX_PIXELS
from .imgproc import y_channel

RELEASE_SUBIMAGE = dict(size=192, step=144, threshold=0)  # HR sub-images for x4 training with 100x100 patches
RELEASE_PRESCALE = 2.0  # area-downscale of the (mostly JPEG) photos, hiding their block artefacts and noise
RELEASE_VALID_CROP = 512  # validation photos: center crop to at most this side, so a validation pass stays quick
# The packed pool (--pack): the prescaled training photos cut into tiles that do not overlap (the sub-images' 48-px
# overlap would add 78% to the size), as lossy WebP. Lossless PNG or WebP of the 123 Mpixel pool take 144 / 105 MiB,
# a lot to move to a remote GPU machine; WebP quality 95 takes ~25 MiB at ~48.7 dB Y-PSNR against lossless, an error far
# below what a super-resolution model's output differs from its target by (~30 dB). Training sees Y only, which
# WebP keeps at full resolution (its 4:2:0 chroma subsampling costs nothing there).
PACK_TILE = 192
PACK_WEBP_QUALITY = 95
# A preset's folder is complete or not there: a later run would take a folder missing a photo for up to date.
NOT_BUILT = "nothing was built; fetch the pool again (scripts/fetch_photo_pool.py) or remove the photo"


def read_manifest(pool: Path) -> list[dict[str, str]]:
    """The photo pool's MANIFEST.tsv rows, every listed file checked to exist."""
    manifest = pool / "MANIFEST.tsv"
    if not manifest.is_file():
        raise PrepareError(f"{manifest}: missing; run scripts/fetch_photo_pool.py first")
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = [row["file"] for row in rows if not (pool / "images" / row["file"]).is_file()]
    if not rows or missing:
        raise PrepareError(f"{pool / 'images'}: {len(missing)} of the {len(rows)} photos in MANIFEST.tsv are missing "
                           f"({', '.join(missing[:3])}); run scripts/fetch_photo_pool.py first")
    return rows


def _valid_task(path: Path, name: str, out: Path, prescale: float, crop: int, max_pixels: int):
    rgb, notes = load_rgb8(path, prescale, max_pixels)
    h, w = rgb.shape[:2]
    # Center crop to at most crop x crop, sides multiples of 8 so that x2/x4/x8 mod-crops change nothing.
    ch, cw = min(h, crop) // 8 * 8, min(w, crop) // 8 * 8
    if not ch or not cw:
        raise PrepareError(f"{path}: {w}x{h} after the downscale is too small for a validation image")
    top, left = (h - ch) // 2, (w - cw) // 2
    write_image(out / f"{name}.png", rgb[top:top + ch, left:left + cw])
    return (name, cw, ch), notes


@dataclass
class PoolSplit:
    """The photos of one split of the pool: files, plain names and each photo's prescale (MANIFEST.tsv)."""

    files: list[Path]
    names: list[str]
    prescales: list[float]
    photos: dict[str, list]  # file -> [sha256, prescale]: what a built folder was made from (its recipe)


def pool_split(pool: Path, rows: list[dict[str, str]], split: str) -> PoolSplit:
    chosen = sorted((row for row in rows if row["split"] == split), key=lambda row: row["file"])
    if not chosen:
        raise PrepareError(f"{pool / 'MANIFEST.tsv'}: no photo has split={split}")
    files = [pool / "images" / row["file"] for row in chosen]
    # Manifests written before the prescale column existed used RELEASE_PRESCALE for every photo.
    prescales = [float(row.get("prescale") or RELEASE_PRESCALE) for row in chosen]
    photos = {row["file"]: [row["sha256"], p] for row, p in zip(chosen, prescales)}
    return PoolSplit(files, unique_names(files), prescales, photos)


def _prescale_words(prescales: list[float]) -> str:
    values = sorted(set(prescales))
    return f"downscaled by {values[0]:g}" if len(values) == 1 else f"downscaled by {values[0]:g}-{values[-1]:g}"


def _fill_valid(tmp: Path, photos: PoolSplit, workers: int, max_pixels: int) -> str:
    """The validation photos, each downscaled by its prescale and center-cropped, as PNG in tmp."""
    shapes, notes = [], Notes()

    def consume(result: tuple) -> None:
        shapes.append(result[0])
        notes.add(result[1])

    tasks = [(path, name, tmp, p, RELEASE_VALID_CROP, max_pixels) for path, name, p in
             zip(photos.files, photos.names, photos.prescales)]
    notes.refused = run_tasks(_valid_task, tasks, consume, workers, "valid")
    notes.check_refused(len(tasks), NOT_BUILT)
    notes.print()
    return (f"{len(shapes)} photos {_prescale_words(photos.prescales)}, center-cropped: "
            + ", ".join(f"{n} {w}x{h}" for n, w, h in sorted(shapes)))


def _build_valid(valid_dir: Path, valid: PoolSplit, workers: int, force: bool, max_pixels: int) -> None:
    """The validation photos, the same beside the sub-images and the packed tiles."""
    recipe = {"recipe": "release-valid", "version": 2, "crop": RELEASE_VALID_CROP, "photos": valid.photos}
    build_folder(valid_dir, recipe, lambda tmp: _fill_valid(tmp, valid, workers, max_pixels), force)


def build_release(pool: str | os.PathLike, train_dir: str | os.PathLike, valid_dir: str | os.PathLike,
                  lmdb: bool = False, lr_scales: Iterable[int] = (), workers: int = 0, force: bool = False,
                  hr_patch_size: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The release data from the photo pool (docs/protocol.md, Data sources), split by MANIFEST.tsv's `split` column.

    train: each photo area-downscaled by its prescale (2), cut into 192x192 sub-images every 144 pixels -> train_dir
    valid: each photo area-downscaled by its prescale, center crop of at most 512x512 -> valid_dir
    lmdb:  also an HR LMDB of the train sub-images beside train_dir (train.lmdb), and LR LMDBs for lr_scales.
    """
    pool, train_dir, valid_dir = Path(pool), Path(train_dir), Path(valid_dir)
    rows = read_manifest(pool)
    refuse_foreign([train_dir, valid_dir], force)
    size, step, threshold = RELEASE_SUBIMAGE["size"], RELEASE_SUBIMAGE["step"], RELEASE_SUBIMAGE["threshold"]
    if hr_patch_size > size:
        raise PrepareError(f"--hr-patch-size {hr_patch_size} is larger than the release sub-images ({size})")
    workers = workers or available_cpus()
    train, valid = pool_split(pool, rows, "train"), pool_split(pool, rows, "valid")

    def fill_train(tmp: Path) -> str:
        total, notes = extract_into(tmp, train.files, train.names, size, step, threshold, train.prescales, workers,
                                    max_pixels)
        notes.check_refused(len(train.files), NOT_BUILT)
        notes.print(f"{size}x{size}")
        return (f"{total} sub-images of {size}x{size} (step {step}) from {len(train.files) - len(notes.skipped)} "
                f"photos {_prescale_words(train.prescales)}")

    built = build_folder(train_dir, {"recipe": "release-train", "version": 2, **RELEASE_SUBIMAGE,
                                     "photos": train.photos}, fill_train, force)
    _build_valid(valid_dir, valid, workers, force, max_pixels)
    if lmdb:
        hr_lmdb = train_dir.with_name(train_dir.name + ".lmdb")
        outputs = [hr_lmdb] + [lr_lmdb_path(hr_lmdb, s) for s in lr_scales]
        if built or not all(p.is_dir() for p in outputs):
            build_lmdb(train_dir, hr_lmdb, lr_scales, workers=workers, force=True)
        else:
            print(f"{', '.join(map(str, outputs))}: up to date")


# ---------------------------------------------------------------------------------------------------------------------
# The packed pool: the release training photos in a small form that travels to a remote GPU machine
# ---------------------------------------------------------------------------------------------------------------------


def _pack_task(path: Path, name: str, out: Path, prescale: float, size: int, quality: int, max_pixels: int):
    """Tiles of one photo, downscaled by prescale, as WebP: ((name, tiles, bytes, Y squared error, pixels), notes).

    The squared error is of the protocol's Y (what training sees) between each decoded tile and the lossless one.
    """
    rgb, notes = load_rgb8(path, prescale, max_pixels)
    h, w = rgb.shape[:2]
    tops, lefts = crop_positions(h, size, size, 0), crop_positions(w, size, size, 0)
    notes["skipped"] = [] if tops and lefts else [f"{path.name} ({w}x{h})"]
    width = max(3, len(str(len(tops) * len(lefts))))
    count, size_bytes, sse = 0, 0, 0.0
    for top in tops:
        for left in lefts:
            tile = np.ascontiguousarray(rgb[top:top + size, left:left + size])
            data = encode_image(tile, ".webp", [cv2.IMWRITE_WEBP_QUALITY, quality], name=path)
            count += 1
            write_bytes_atomic(out / f"{name}_t{count:0{width}d}.webp", data)
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            sse += float(np.sum((y_channel(np.ascontiguousarray(decoded)) - y_channel(tile)) ** 2))
            size_bytes += len(data)
    return (name, count, size_bytes, sse, count * size * size), notes


def _psnr(sse: float, pixels: int) -> float:
    return 10 * math.log10(255.0 ** 2 * pixels / sse) if sse > 0 else math.inf


def _fill_pack(tmp: Path, train: PoolSplit, workers: int, max_pixels: int) -> str:
    totals, worst, notes = [0, 0, 0.0, 0], (math.inf, ""), Notes()
    tasks = [(path, name, tmp, p, PACK_TILE, PACK_WEBP_QUALITY, max_pixels) for path, name, p in
             zip(train.files, train.names, train.prescales)]

    def consume(result: tuple) -> None:
        nonlocal worst
        (name, count, size_bytes, sse, pixels), found = result
        totals[:] = [a + b for a, b in zip(totals, (count, size_bytes, sse, pixels))]
        notes.add(found)
        worst = min(worst, (_psnr(sse, pixels) if pixels else math.inf, name))

    notes.refused = run_tasks(_pack_task, tasks, consume, workers, "pack")
    notes.check_refused(len(tasks), NOT_BUILT)
    if not totals[0]:
        raise PrepareError(f"no training photo is at least {PACK_TILE}x{PACK_TILE} pixels after its prescale")
    notes.print(f"{PACK_TILE}x{PACK_TILE}")
    return (f"{totals[0]} tiles of {PACK_TILE}x{PACK_TILE} from {len(train.files) - len(notes.skipped)} photos "
            f"{_prescale_words(train.prescales)}, WebP quality {PACK_WEBP_QUALITY}: {totals[1] / 2 ** 20:.1f} MiB, "
            f"Y-PSNR {_psnr(totals[2], totals[3]):.2f} dB against the lossless tiles (lowest: {worst[1]}, "
            f"{worst[0]:.2f} dB)")


def build_pack(pool: str | os.PathLike, pack_dir: str | os.PathLike, workers: int = 0, force: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The packed release pool: <pack_dir>/train (tiles, WebP) and <pack_dir>/valid (as build_release's, PNG)."""
    pool, pack_dir = Path(pool), Path(pack_dir)
    rows = read_manifest(pool)
    train_dir, valid_dir = pack_dir / "train", pack_dir / "valid"
    refuse_foreign([train_dir, valid_dir], force)
    workers = workers or available_cpus()
    train, valid = pool_split(pool, rows, "train"), pool_split(pool, rows, "valid")
    recipe = {"recipe": "release-pack", "version": 1, "tile": PACK_TILE, "webp_quality": PACK_WEBP_QUALITY,
              "photos": train.photos}
    build_folder(train_dir, recipe, lambda tmp: _fill_pack(tmp, train, workers, max_pixels), force)
    _build_valid(valid_dir, valid, workers, force, max_pixels)
    print(f"{pack_dir}: {folder_mib(pack_dir):.1f} MiB; train with: python train.py --preset release "
          f"--train-dirs {train_dir} --valid-dirs {valid_dir}")
