"""Build training and validation data: sub-images, LMDBs, and the data of the demo and release presets.

    python prepare_dataset.py subimages --input data/DIV2K/DIV2K_train_HR --output data/DIV2K/train_sub \
        --size 480 --step 240 --threshold 0 [--prescale 2]
    python prepare_dataset.py lmdb --input data/DIV2K/train_sub --output data/DIV2K/train_sub.lmdb [--lr-scales 2 3 4]
    python prepare_dataset.py --preset demo       # data/demo/{train,valid} from scikit-image's bundled photos
    python prepare_dataset.py --preset release    # data/photo_pool/{train,valid} from the fetched photo pool [--lmdb]
    python prepare_dataset.py --preset release --pack   # data/photo_pool_pack/{train,valid}: the same, ~25 MiB

``--preset NAME`` builds that preset's ``train_dirs[0]`` and ``valid_dirs[0]`` (config.py; override them like in
any script). Every output is built in a hidden temporary folder beside it and renamed into place only when complete,
so an interrupted or failed run never leaves something that looks finished. Work is spread over all cores; the first
image that fails stops the run with its file name and the reason (exit 1, no traceback).

Inputs: JPEG/PNG/BMP/TIFF/WebP, 8- or 16-bit (16-bit is rounded to 8 bits), grayscale (stored as RGB) or with alpha
(dropped; said once per run). A corrupt or truncated file is an error naming it. Images smaller than the sub-image
size are skipped and counted. Nothing under --input is ever modified.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from config import Config, add_bool_option, make_parser, parse_config
from dataset import LMDB_INFO, LMDB_META, DatasetError, _prescale, encode_png, list_images, to_uint8
from fileio import exit_quietly_on_broken_pipe
from imgproc import ImageReadError, ImageWriteError, make_lr, mod_crop, read_image_with_alpha, write_image, y_channel

MARKER = "prepared.json"  # written into every folder this script builds: the recipe, for idempotent re-runs
DEMO_TRAIN = ("astronaut", "rocket", "hubble_deep_field", "retina", "stereo_motorcycle", "moon", "brick", "grass",
              "gravel", "coins")
# Held out from the demo training set: three classic test photos of different kinds -- a cat's fur and whiskers
# (fine colour texture), the cameraman (grayscale, hard edges) and a coffee cup (smooth gradients, highlights) --
# small enough (<= 600x400) for a validation pass per epoch on a CPU. Training keeps the larger and texture-rich
# images (retina, hubble, brick, grass, gravel), which give more distinct patches.
DEMO_VALID = ("chelsea", "camera", "coffee")
RELEASE_SUBIMAGE = dict(size=192, step=144, threshold=0)  # HR sub-images for x4 training with 100x100 patches
RELEASE_PRESCALE = 2.0  # area-downscale of the (mostly JPEG) photos, hiding their block artefacts and noise
RELEASE_VALID_CROP = 512  # validation photos: center crop to at most this side, so a validation pass stays quick
# The packed pool (--pack): the prescaled training photos cut into tiles that do not overlap (the sub-images' 48-px
# overlap would add 78% to the size), as lossy WebP. Lossless PNG or WebP of the 123 Mpixel pool take 144 / 105 MiB,
# more than a GPU machine receives; WebP quality 95 takes ~25 MiB at ~48.7 dB Y-PSNR against lossless, an error far
# below what a super-resolution model's output differs from its target by (~30 dB). Training sees Y only, which
# WebP keeps at full resolution (its 4:2:0 chroma subsampling costs nothing there).
PACK_TILE = 192
PACK_WEBP_QUALITY = 95


class PrepareError(RuntimeError):
    """Data preparation cannot go on; the message names the file or folder and the reason."""


# ---------------------------------------------------------------------------------------------------------------------
# Names, images and parallel work
# ---------------------------------------------------------------------------------------------------------------------


def plain_name(stem: str) -> str:
    """A file stem as a plain ASCII name usable as an LMDB key and file name: other characters become "_"."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip(".") or "_"


def unique_names(files: list[Path]) -> list[str]:
    """plain_name of each file's stem; two files with the same name (even in case only) are an error naming both."""
    names, seen = [], {}
    for path in files:
        name = plain_name(path.stem)
        other = seen.setdefault(name.casefold(), path)
        if other != path:
            raise PrepareError(f"{other} and {path} would both be named {name!r}: rename one of them")
        names.append(name)
    return names


@dataclass
class Notes:
    """What was said about the inputs, once per run rather than once per file."""

    alpha: list[str] = field(default_factory=list)
    deep: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, other: dict[str, list[str]]) -> None:
        for key, values in other.items():
            getattr(self, key).extend(values)

    def print(self, too_small: str = "") -> None:
        def first(names: list[str]) -> str:
            names = sorted(names)
            return ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")

        if self.alpha:
            print(f"note: alpha channel dropped (training uses RGB) from {first(self.alpha)}")
        if self.deep:
            print(f"note: 16-bit images rounded to 8 bits (x / 257): {first(self.deep)}")
        if self.skipped:
            print(f"note: skipped {len(self.skipped)} image(s) smaller than {too_small}: {first(self.skipped)}")


def load_rgb8(path: Path, prescale: float = 1.0) -> tuple[np.ndarray, dict[str, list[str]]]:
    """An image as 8-bit RGB, area-downscaled by prescale (as TrainDataset's jpeg_prescale), and notes about it."""
    rgb, alpha = read_image_with_alpha(path)
    notes = {"alpha": [path.name] if alpha is not None else [], "deep": [path.name] if rgb.dtype == np.uint16 else []}
    return _prescale(to_uint8(rgb), prescale), notes


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the parallelism is one process per core; OpenCV's own threads would oversubscribe them


def _guarded(function: Callable, path: Path, *args):
    """Run one task; any failure becomes a PrepareError naming the file (ImageReadError etc. already name it)."""
    try:
        return function(path, *args)
    except (ImageReadError, ImageWriteError, DatasetError, PrepareError):
        raise
    except Exception as error:  # noqa: BLE001 -- e.g. cv2.error or MemoryError: the user needs the file name
        raise PrepareError(f"{path}: {type(error).__name__}: {error}") from None


def run_tasks(function: Callable, tasks: list[tuple], consume: Callable, workers: int, desc: str) -> None:
    """consume(function(*task)) for every task, the work in `workers` processes (here if 1), with a progress bar.

    Results arrive in completion order; a few tasks per worker are in flight at a time, so results (e.g. encoded
    images for an LMDB) never pile up in memory. The first failure cancels the tasks not yet started and is raised.
    """
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=None, dynamic_ncols=True, leave=False)
    try:
        if workers == 1:
            # OpenCV's own thread pool, once started here, can deadlock the next pool's forked workers (they hang in
            # cv2.setNumThreads): the work done in this process stays on one OpenCV thread, as in a worker.
            _init_worker()
            for task in tasks:
                consume(_guarded(function, *task))
                bar.update()
            return
        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            queue, pending = iter(tasks), set()
            try:
                while True:
                    for task in itertools.islice(queue, 4 * workers - len(pending)):
                        pending.add(pool.submit(_guarded, function, *task))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        consume(future.result())
                        bar.update()
            except BrokenProcessPool:
                raise PrepareError("a worker process died (killed, or out of memory?); rerun with --workers 1 to "
                                   "find the image") from None
            finally:
                for future in pending:
                    future.cancel()
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------------------------
# Atomic output folders
# ---------------------------------------------------------------------------------------------------------------------


def _temporary(path: Path) -> Path:
    """A fresh hidden folder beside path; leftovers of killed runs (their process gone) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished tmp to path, replacing an older path only after the new one is complete."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _check_output(path: Path, force: bool, sources: Iterable[Path] = ()) -> None:
    for source in sources:
        if path.resolve().is_relative_to(source.resolve()) or source.resolve().is_relative_to(path.resolve()):
            raise PrepareError(f"{path}: the output and the input folder {source} must not contain each other")
    if path.exists() and not force:
        raise PrepareError(f"{path}: already exists; pass --force to replace it")


# ---------------------------------------------------------------------------------------------------------------------
# Sub-images
# ---------------------------------------------------------------------------------------------------------------------


def crop_positions(length: int, size: int, step: int, threshold: int) -> list[int]:
    """BasicSR's sub-image starts along one axis: every `step`, plus one flush with the far border when the
    remainder left uncovered exceeds `threshold` (threshold 0 covers every pixel). Empty when length < size."""
    if length < size:
        return []
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > threshold:
        starts.append(length - size)
    return starts


def _subimage_task(path: Path, name: str, out: Path, size: int, step: int, threshold: int, prescale: float):
    rgb, notes = load_rgb8(path, prescale)
    h, w = rgb.shape[:2]
    tops, lefts = crop_positions(h, size, step, threshold), crop_positions(w, size, step, threshold)
    count = len(tops) * len(lefts)
    notes["skipped"] = [] if count else [f"{path.name} ({w}x{h})"]
    width = max(3, len(str(count)))  # s001..s999, then s0001..: names of one image always sort in crop order
    number = 0
    for top in tops:  # row by row, left to right
        for left in lefts:
            number += 1
            write_image(out / f"{name}_s{number:0{width}d}.png", rgb[top:top + size, left:left + size])
    return count, notes


def _validate_crop_args(size: int, step: int, threshold: int, prescale: float) -> None:
    if size < 1 or step < 1 or threshold < 0:
        raise PrepareError(f"--size {size} and --step {step} must be >= 1 and --threshold {threshold} >= 0")
    if step > size:
        raise PrepareError(f"--step {step} is larger than --size {size}: the sub-images would leave gaps")
    if not prescale >= 1.0:
        raise PrepareError(f"--prescale {prescale} must be >= 1 (it is a downscale factor)")


def _extract_into(out: Path, files: list[Path], names: list[str], size: int, step: int, threshold: int,
                  prescales: list[float], workers: int) -> tuple[int, Notes]:
    """Sub-images of every file (each downscaled by its own prescale first) into out; (count, notes)."""
    notes, total = Notes(), 0

    def consume(result: tuple[int, dict]) -> None:
        nonlocal total
        total += result[0]
        notes.add(result[1])

    tasks = [(path, name, out, size, step, threshold, p) for path, name, p in zip(files, names, prescales)]
    run_tasks(_subimage_task, tasks, consume, workers, "sub-images")
    if total == 0:
        raise PrepareError(f"no image is at least {size}x{size} pixels after --prescale {max(prescales):g} "
                           f"({len(notes.skipped)} too small): lower --size")
    return total, notes


def extract_subimages(input_dir: str | os.PathLike, output_dir: str | os.PathLike, size: int = 480, step: int = 240,
                      threshold: int = 0, prescale: float = 1.0, workers: int = 0, force: bool = False) -> int:
    """Cut every image under input_dir into size x size PNG sub-images ``<stem>_s001.png`` in output_dir.

    Returns the number of sub-images. Images smaller than size (after the optional area prescale) are skipped and
    listed. The output appears only when complete.
    """
    started = time.perf_counter()
    _validate_crop_args(size, step, threshold, prescale)
    src, out = Path(input_dir), Path(output_dir)
    files = list_images(src)
    names = unique_names(files)
    _check_output(out, force, [src])
    tmp = _temporary(out)
    try:
        total, notes = _extract_into(tmp, files, names, size, step, threshold, [prescale] * len(files),
                                     workers or available_cpus())
        recipe = dict(recipe="subimages", input=str(src), size=size, step=step, threshold=threshold,
                      prescale=prescale, images=len(files), subimages=total)
        (tmp / MARKER).write_text(json.dumps(recipe, indent=1) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes.print(f"{size}x{size}")
    print(f"{out}: {total} sub-images of {size}x{size} from {len(files) - len(notes.skipped)} of {len(files)} images "
          f"(step {step}, threshold {threshold}, prescale {prescale:g}) in {time.perf_counter() - started:.1f} s")
    return total


# ---------------------------------------------------------------------------------------------------------------------
# LMDB
# ---------------------------------------------------------------------------------------------------------------------


def lr_lmdb_path(hr_lmdb: str | os.PathLike, scale: int) -> Path:
    """Where the x`scale` LR LMDB of an HR LMDB goes: train.lmdb -> train_X4.lmdb."""
    hr_lmdb = Path(hr_lmdb)
    return hr_lmdb.with_name(f"{hr_lmdb.name.removesuffix('.lmdb')}_X{scale}.lmdb")


class _LmdbWriter:
    """Puts values in batched transactions; when LMDB reports its map full, doubles the map and retries the batch,
    so MapFullError never reaches the user whatever the initial estimate."""

    def __init__(self, path: Path, map_size: int) -> None:
        import lmdb

        self.error = lmdb.MapFullError
        self.env = lmdb.open(str(path), map_size=map_size, subdir=True, meminit=False)
        self.pending: list[tuple[bytes, bytes]] = []
        self.pending_bytes = 0

    def put(self, key: str, value: bytes) -> None:
        self.pending.append((key.encode("ascii"), value))
        self.pending_bytes += len(value)
        if len(self.pending) >= 512 or self.pending_bytes >= 64 << 20:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
            except self.error:  # the transaction was aborted: grow the map and write the whole batch again
                self.env.set_mapsize(2 * self.env.info()["map_size"])
                continue
            self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.env.sync(True)
        self.env.close()


def _lmdb_task(path: Path, key: str, scales: tuple[int, ...], compression: int):
    rgb, notes = load_rgb8(path)
    h, w = rgb.shape[:2]
    if scales and min(h, w) < max(scales):
        notes["skipped"] = [f"{path.name} ({w}x{h})"]
        return key, None, {}, notes
    values = {1: (rgb.shape, encode_png(rgb, compression))}
    for s in scales:
        lr = make_lr(np.ascontiguousarray(mod_crop(rgb, s)), s)
        values[s] = (lr.shape, encode_png(lr, compression))
    notes["skipped"] = []
    return key, rgb.shape, values, notes


def build_lmdb(input_dir: str | os.PathLike, output: str | os.PathLike, lr_scales: Iterable[int] = (),
               compression: int = 1, workers: int = 0, force: bool = False, initial_map_size: int = 0) -> int:
    """HR LMDB of every image under input_dir, plus one LR LMDB per scale with the same keys (dataset.py layout).

    LR = imgproc.make_lr of the HR mod-cropped to the scale (MATLAB bicubic, the evaluation protocol's LR). Keys are
    the plain file stems. Returns the number of images stored.
    """
    started = time.perf_counter()
    src, out = Path(input_dir), Path(output)
    scales = tuple(sorted(set(int(s) for s in lr_scales)))
    if any(s < 2 for s in scales):
        raise PrepareError(f"--lr-scales {' '.join(map(str, scales))}: scales must be integers >= 2")
    if not 0 <= compression <= 9:
        raise PrepareError(f"--compression {compression}: PNG compression is 0..9")
    files = list_images(src)
    keys = unique_names(files)
    outputs = {1: out, **{s: lr_lmdb_path(out, s) for s in scales}}
    for path in outputs.values():
        _check_output(path, force, [src])
    # A first guess at the map size (decoded JPEGs grow ~4x as PNG); _LmdbWriter doubles it whenever it is too small.
    input_bytes = sum(p.stat().st_size for p in files)
    estimate = initial_map_size or int(4 * input_bytes * (1 + sum(1 / s ** 2 for s in scales)) * 1.5) + (64 << 20)
    tmps = {s: _temporary(path) for s, path in outputs.items()}
    writers: dict[int, _LmdbWriter] = {}
    try:
        writers = {s: _LmdbWriter(tmp, max(4096, round(estimate / (s * s)))) for s, tmp in tmps.items()}
        shapes: dict[int, dict[str, tuple]] = {s: {} for s in outputs}
        notes = Notes()

        def consume(result: tuple) -> None:
            key, _, values, found = result
            notes.add(found)
            for s, (shape, data) in values.items():
                writers[s].put(key, data)
                shapes[s][key] = shape

        tasks = [(path, key, scales, compression) for path, key in zip(files, keys)]
        run_tasks(_lmdb_task, tasks, consume, workers or available_cpus(), f"LMDB {out.name}")
        if not shapes[1]:
            raise PrepareError(f"{src}: no image is at least {max(scales)} pixels on each side")
        for s, tmp in tmps.items():
            writers.pop(s).close()
            meta = "".join(f"{k}.png ({h},{w},{c}) {compression}\n" for k, (h, w, c) in sorted(shapes[s].items()))
            (tmp / LMDB_META).write_text(meta)
            info = {"kind": "hr" if s == 1 else "lr", "scale": s, "count": len(shapes[s]), "source": str(src),
                    "compression": compression}
            if s > 1:
                info["lr"] = "imgproc.make_lr (MATLAB bicubic) of the HR mod-cropped to the scale"
            (tmp / LMDB_INFO).write_text(json.dumps(info, indent=1) + "\n")
        for s, tmp in tmps.items():
            _move_into_place(tmp, outputs[s])
    finally:
        for writer in writers.values():
            writer.env.close()
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)
    notes.print(f"x{max(scales, default=1)}")
    sizes = ", ".join(f"{p} ({_folder_mib(p):.1f} MiB)" for p in outputs.values())
    print(f"{len(shapes[1])} images from {src} -> {sizes} in {time.perf_counter() - started:.1f} s")
    return len(shapes[1])


def _folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20


# ---------------------------------------------------------------------------------------------------------------------
# Presets: the demo data and the release data
# ---------------------------------------------------------------------------------------------------------------------


def _build_folder(path: Path, recipe: dict, fill: Callable[[Path], str], force: bool) -> bool:
    """Build path with fill(tmp) unless it already holds this recipe (then say so). Returns True when built."""
    marker = _read_marker(path) if path.is_dir() else None
    if marker is not None and {k: v for k, v in marker.items() if k != "summary"} == recipe:
        print(f"{path}: up to date ({marker.get('summary', '')})")
        return False
    _refuse_foreign([path], force)
    started = time.perf_counter()
    tmp = _temporary(path)
    try:
        summary = fill(tmp)
        (tmp / MARKER).write_text(json.dumps({**recipe, "summary": summary}, indent=1) + "\n")
        _move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{path}: {summary} in {time.perf_counter() - started:.1f} s")
    return True


def _refuse_foreign(paths: Iterable[Path], force: bool) -> None:
    """Never replace a folder this script did not make (it may hold someone's data) unless told to."""
    for path in paths:
        if path.exists() and not force and _read_marker(path) is None:
            raise PrepareError(f"{path}: exists and was not made by prepare_dataset.py; move it away or pass --force")


def _single_dir(dirs: list[str], field_name: str) -> Path:
    if len(dirs) != 1 or dirs[0].endswith(".lmdb"):
        raise PrepareError(f"--{field_name.replace('_', '-')} {' '.join(dirs)}: the preset's data builds exactly one "
                           f"image folder here")
    return Path(dirs[0])


def _demo_images(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named scikit-image photos that load offline (others are downloaded at run time: skipped, said so)."""
    import skimage.data

    images = {}
    for name in names:
        try:
            image = getattr(skimage.data, name)()
        except Exception as error:  # noqa: BLE001 -- any failure to load means "not available here"
            print(f"note: skimage.data.{name} is not available offline ({type(error).__name__}); skipped")
            continue
        images[name] = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disp.)
    return images


def build_demo(train_dir: str | os.PathLike, valid_dir: str | os.PathLike, force: bool = False) -> None:
    """data/demo/{train,valid}: scikit-image's bundled photos as PNG (grayscale ones stay 1-channel). No network."""
    import skimage

    _refuse_foreign([Path(train_dir), Path(valid_dir)], force)
    for folder, names in ((Path(train_dir), DEMO_TRAIN), (Path(valid_dir), DEMO_VALID)):
        recipe = {"recipe": "demo", "version": 1, "skimage": skimage.__version__, "images": list(names)}

        def fill(tmp: Path, names: tuple[str, ...] = names) -> str:
            images = _demo_images(names)
            if not images:
                raise PrepareError("none of the scikit-image demo photos loads; is scikit-image installed?")
            for name, image in images.items():
                write_image(tmp / f"{name}.png", image)
            return ", ".join(f"{n} {im.shape[1]}x{im.shape[0]}{'' if im.ndim == 3 else ' grey'}"
                             for n, im in images.items())

        _build_folder(folder, recipe, fill, force)


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


def _valid_task(path: Path, name: str, out: Path, prescale: float, crop: int):
    rgb, notes = load_rgb8(path, prescale)
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


def _fill_valid(tmp: Path, photos: PoolSplit, workers: int) -> str:
    """The validation photos, each downscaled by its prescale and center-cropped, as PNG in tmp."""
    shapes, notes = [], Notes()

    def consume(result: tuple) -> None:
        shapes.append(result[0])
        notes.add(result[1])

    tasks = [(path, name, tmp, p, RELEASE_VALID_CROP) for path, name, p in
             zip(photos.files, photos.names, photos.prescales)]
    run_tasks(_valid_task, tasks, consume, workers, "valid")
    notes.print()
    return (f"{len(shapes)} photos {_prescale_words(photos.prescales)}, center-cropped: "
            + ", ".join(f"{n} {w}x{h}" for n, w, h in sorted(shapes)))


def build_release(pool: str | os.PathLike, train_dir: str | os.PathLike, valid_dir: str | os.PathLike,
                  lmdb: bool = False, lr_scales: Iterable[int] = (), workers: int = 0, force: bool = False,
                  hr_patch_size: int = 0) -> None:
    """The release data from the photo pool (docs/protocol.md, Data sources), split by MANIFEST.tsv's `split` column.

    train: each photo area-downscaled by its prescale (2), cut into 192x192 sub-images every 144 pixels -> train_dir
    valid: each photo area-downscaled by its prescale, center crop of at most 512x512 -> valid_dir
    lmdb:  also an HR LMDB of the train sub-images beside train_dir (train.lmdb), and LR LMDBs for lr_scales.
    """
    pool, train_dir, valid_dir = Path(pool), Path(train_dir), Path(valid_dir)
    rows = read_manifest(pool)
    _refuse_foreign([train_dir, valid_dir], force)
    size, step, threshold = RELEASE_SUBIMAGE["size"], RELEASE_SUBIMAGE["step"], RELEASE_SUBIMAGE["threshold"]
    if hr_patch_size > size:
        raise PrepareError(f"--hr-patch-size {hr_patch_size} is larger than the release sub-images ({size})")
    workers = workers or available_cpus()
    train, valid = pool_split(pool, rows, "train"), pool_split(pool, rows, "valid")

    def fill_train(tmp: Path) -> str:
        total, notes = _extract_into(tmp, train.files, train.names, size, step, threshold, train.prescales, workers)
        notes.print(f"{size}x{size}")
        return (f"{total} sub-images of {size}x{size} (step {step}) from {len(train.files) - len(notes.skipped)} "
                f"photos {_prescale_words(train.prescales)}")

    built = _build_folder(train_dir, {"recipe": "release-train", "version": 2, **RELEASE_SUBIMAGE,
                                      "photos": train.photos}, fill_train, force)
    _build_folder(valid_dir, {"recipe": "release-valid", "version": 2, "crop": RELEASE_VALID_CROP,
                              "photos": valid.photos}, lambda tmp: _fill_valid(tmp, valid, workers), force)
    if lmdb:
        hr_lmdb = train_dir.with_name(train_dir.name + ".lmdb")
        outputs = [hr_lmdb] + [lr_lmdb_path(hr_lmdb, s) for s in lr_scales]
        if built or not all(p.is_dir() for p in outputs):
            build_lmdb(train_dir, hr_lmdb, lr_scales, workers=workers, force=True)
        else:
            print(f"{', '.join(map(str, outputs))}: up to date")


# ---------------------------------------------------------------------------------------------------------------------
# The packed pool: the release training photos in a form that travels (a GPU machine receives at most 64 MiB)
# ---------------------------------------------------------------------------------------------------------------------


def _pack_task(path: Path, name: str, out: Path, prescale: float, size: int, quality: int):
    """Tiles of one photo, downscaled by prescale, as WebP: ((name, tiles, bytes, Y squared error, pixels), notes).

    The squared error is of the protocol's Y (what training sees) between each decoded tile and the lossless one.
    """
    rgb, notes = load_rgb8(path, prescale)
    h, w = rgb.shape[:2]
    tops, lefts = crop_positions(h, size, size, 0), crop_positions(w, size, size, 0)
    notes["skipped"] = [] if tops and lefts else [f"{path.name} ({w}x{h})"]
    width = max(3, len(str(len(tops) * len(lefts))))
    count, size_bytes, sse = 0, 0, 0.0
    for top in tops:
        for left in lefts:
            tile = np.ascontiguousarray(rgb[top:top + size, left:left + size])
            ok, data = cv2.imencode(".webp", tile[:, :, ::-1], [cv2.IMWRITE_WEBP_QUALITY, quality])
            if not ok:
                raise PrepareError(f"{path}: WebP encoding failed")
            count += 1
            (out / f"{name}_t{count:0{width}d}.webp").write_bytes(data.tobytes())
            decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
            sse += float(np.sum((y_channel(np.ascontiguousarray(decoded)) - y_channel(tile)) ** 2))
            size_bytes += len(data)
    return (name, count, size_bytes, sse, count * size * size), notes


def _psnr(sse: float, pixels: int) -> float:
    return 10 * math.log10(255.0 ** 2 * pixels / sse) if sse > 0 else math.inf


def _fill_pack(tmp: Path, train: PoolSplit, workers: int) -> str:
    totals, worst, notes = [0, 0, 0.0, 0], (math.inf, ""), Notes()
    tasks = [(path, name, tmp, p, PACK_TILE, PACK_WEBP_QUALITY) for path, name, p in
             zip(train.files, train.names, train.prescales)]

    def consume(result: tuple) -> None:
        nonlocal worst
        (name, count, size_bytes, sse, pixels), found = result
        totals[:] = [a + b for a, b in zip(totals, (count, size_bytes, sse, pixels))]
        notes.add(found)
        worst = min(worst, (_psnr(sse, pixels) if pixels else math.inf, name))

    run_tasks(_pack_task, tasks, consume, workers, "pack")
    if not totals[0]:
        raise PrepareError(f"no training photo is at least {PACK_TILE}x{PACK_TILE} pixels after its prescale")
    notes.print(f"{PACK_TILE}x{PACK_TILE}")
    return (f"{totals[0]} tiles of {PACK_TILE}x{PACK_TILE} from {len(train.files) - len(notes.skipped)} photos "
            f"{_prescale_words(train.prescales)}, WebP quality {PACK_WEBP_QUALITY}: {totals[1] / 2 ** 20:.1f} MiB, "
            f"Y-PSNR {_psnr(totals[2], totals[3]):.2f} dB against the lossless tiles (lowest: {worst[1]}, "
            f"{worst[0]:.2f} dB)")


def build_pack(pool: str | os.PathLike, pack_dir: str | os.PathLike, workers: int = 0, force: bool = False) -> None:
    """The packed release pool: <pack_dir>/train (tiles, WebP) and <pack_dir>/valid (as build_release's, PNG)."""
    pool, pack_dir = Path(pool), Path(pack_dir)
    rows = read_manifest(pool)
    train_dir, valid_dir = pack_dir / "train", pack_dir / "valid"
    _refuse_foreign([train_dir, valid_dir], force)
    workers = workers or available_cpus()
    train, valid = pool_split(pool, rows, "train"), pool_split(pool, rows, "valid")
    recipe = {"recipe": "release-pack", "version": 1, "tile": PACK_TILE, "webp_quality": PACK_WEBP_QUALITY,
              "photos": train.photos}
    _build_folder(train_dir, recipe, lambda tmp: _fill_pack(tmp, train, workers), force)
    _build_folder(valid_dir, {"recipe": "release-valid", "version": 2, "crop": RELEASE_VALID_CROP,
                              "photos": valid.photos}, lambda tmp: _fill_valid(tmp, valid, workers), force)
    print(f"{pack_dir}: {_folder_mib(pack_dir):.1f} MiB; train with: python train.py --preset release "
          f"--train-dirs {train_dir} --valid-dirs {valid_dir}")


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare_dataset.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subimages", help="cut large images into overlapping sub-images (BasicSR style)")
    sub.add_argument("--input", required=True, help="folder of images (searched recursively)")
    sub.add_argument("--output", required=True, help="folder to create with <stem>_s001.png, ...")
    sub.add_argument("--size", type=int, default=480, help="sub-image side (default %(default)s)")
    sub.add_argument("--step", type=int, default=240, help="distance between sub-image starts (default %(default)s)")
    sub.add_argument("--threshold", type=int, default=0,
                     help="add a last sub-image flush with the border when more than this many pixels are "
                          "left (default %(default)s: cover every pixel)")
    sub.add_argument("--prescale", type=float, default=1.0,
                     help="area-downscale every image by this factor first (2-3 for JPEG photos; default 1)")
    db = commands.add_parser("lmdb", help="pack a folder of images (e.g. sub-images) into an LMDB")
    db.add_argument("--input", required=True, help="folder of HR images (searched recursively)")
    db.add_argument("--output", required=True, help="HR LMDB to create, e.g. data/DIV2K/train_sub.lmdb")
    db.add_argument("--lr-scales", type=int, nargs="*", default=[],
                    help="also build MATLAB-bicubic LR LMDBs <output>_X<s>.lmdb with the same keys")
    db.add_argument("--compression", type=int, default=1, help="PNG compression level of the values (0-9, default 1)")
    for command in (sub, db):
        command.add_argument("--workers", type=int, default=0, help="processes (default 0: one per core)")
        add_bool_option(command, "--force", "replace the output if it exists", default=False)
    return parser


# The config fields a preset's data recipe reads; --help lists only these (the preset supplies the rest).
CONFIG_FIELDS = ("train_dirs", "valid_dirs", "hr_patch_size", "jpeg_prescale")
COMMANDS = ("subimages", "lmdb")
USAGE = """prepare_dataset.py [--preset {demo,release}] [options]   the data of a preset
       prepare_dataset.py subimages --input DIR --output DIR [options]
       prepare_dataset.py lmdb --input DIR --output DB [options]"""
EPILOG = """commands:
  subimages   cut large images into overlapping sub-images (prepare_dataset.py subimages --help)
  lmdb        pack a folder of images into an LMDB (prepare_dataset.py lmdb --help)"""


def preset_parser() -> argparse.ArgumentParser:
    parser = make_parser("Build training and validation data: the data of a preset (demo, release), or, with a "
                         "command, sub-images and LMDBs.", fields=CONFIG_FIELDS, usage=USAGE, epilog=EPILOG)
    parser.prog = "prepare_dataset.py"
    group = parser.add_argument_group("preset data")
    group.add_argument("--pool", default="data/photo_pool", help="release: the fetched photo pool")
    add_bool_option(group, "--lmdb", "release: also pack the train sub-images into an LMDB", default=False)
    group.add_argument("--lr-scales", type=int, nargs="*", default=[], help="release --lmdb: also LR LMDBs")
    group.add_argument("--pack", action="store_true",
                       help="release: instead, write the training pool as WebP tiles (~25 MiB, visually lossless) and "
                            "the validation photos into --pack-dir, to carry to a GPU machine")
    group.add_argument("--pack-dir", default="data/photo_pool_pack", help="release --pack: output folder")
    group.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    add_bool_option(group, "--force", "replace output folders not made by this script", default=False)
    return parser


def build_preset(config: Config, args: argparse.Namespace) -> None:
    train_dir, valid_dir = _single_dir(config.train_dirs, "train_dirs"), _single_dir(config.valid_dirs, "valid_dirs")
    if args.preset == "demo":
        build_demo(train_dir, valid_dir, force=args.force)
    elif args.preset == "release" and args.pack:
        build_pack(args.pool, args.pack_dir, workers=args.workers, force=args.force)
    elif args.preset == "release":
        build_release(args.pool, train_dir, valid_dir, lmdb=args.lmdb, lr_scales=args.lr_scales,
                      workers=args.workers, force=args.force, hr_patch_size=config.hr_patch_size)
        if config.jpeg_prescale > 1.0:
            shrunk = math.floor(RELEASE_SUBIMAGE["size"] / config.jpeg_prescale)
            print(f"warning: --jpeg-prescale {config.jpeg_prescale:g} would shrink these already downscaled "
                  f"sub-images again (to {shrunk}x{shrunk}); train them with --jpeg-prescale 1")
    else:
        raise PrepareError(f"preset {args.preset!r} has no data recipe: build your data with `prepare_dataset.py "
                           f"subimages` / `lmdb` (README: Data layouts) and pass --train-dirs / --valid-dirs, or use "
                           f"--preset demo or --preset release")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in COMMANDS:
            args = tool_parser().parse_args(argv)
            if args.command == "subimages":
                extract_subimages(args.input, args.output, args.size, args.step, args.threshold, args.prescale,
                                  args.workers, args.force)
            else:
                build_lmdb(args.input, args.output, args.lr_scales, args.compression, args.workers, args.force)
        else:
            config, args = parse_config(argv, preset_parser())
            build_preset(config, args)
    except (PrepareError, DatasetError, ImageReadError, ImageWriteError, OSError) as error:
        print(f"prepare_dataset.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare_dataset.py: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
