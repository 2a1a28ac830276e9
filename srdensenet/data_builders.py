"""Sub-image folders and LMDBs, built whole or not at all: the work behind ``prepare_dataset.py subimages`` and
``lmdb``, and the building blocks of its presets.

* Sub-images: every image of a folder cut into overlapping size x size PNG crops, BasicSR style.
* LMDBs: a folder of images packed into an HR LMDB, plus LR LMDBs with the same keys (dataset.py's layout).
* The work is spread over all cores (``run_tasks``); what is said about the inputs is said once per run (``Notes``);
  every output folder is built under a hidden name, marked with its recipe (``MARKER``) and swapped into place only
  when complete (``fileio.atomic_folder``).
* An image that cannot be read (corrupt, over the pixel limit, not a regular file) is named in one line as it comes
  and the others go on; the command then fails (exit 1): ``subimages`` and ``lmdb`` keep what they built from the
  others, a preset's folder is not built (a later run would take it for complete).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
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

from .dataset import LMDB_INFO, LMDB_META, DatasetError, encode_png, list_images, prescale, to_uint8
from .fileio import OutputError, atomic_folder, write_text_atomic
from .image_files import ImageReadError, read_image_with_alpha, write_image
from .image_header import DEFAULT_MAX_PIXELS
from .imgproc import make_lr, mod_crop

MARKER = "prepared.json"  # written into every folder built here: the recipe, for idempotent re-runs


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
    refused: list[str] = field(default_factory=list)  # files that could not be read, each said as it came

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

    def check_refused(self, total: int, outcome: str) -> None:
        """PrepareError when images could not be read (each was named in its own line): the run fails, exit 1."""
        if self.refused:
            raise PrepareError(f"{len(self.refused)} of {total} images could not be read (named above); {outcome}")


def load_rgb8(path: Path, factor: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS
              ) -> tuple[np.ndarray, dict[str, list[str]]]:
    """An image as 8-bit RGB, area-downscaled by factor (as TrainDataset's jpeg_prescale), and notes about it."""
    rgb, alpha = read_image_with_alpha(path, max_pixels)
    notes = {"alpha": [path.name] if alpha is not None else [], "deep": [path.name] if rgb.dtype == np.uint16 else []}
    return prescale(to_uint8(rgb), factor), notes


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the parallelism is one process per core; OpenCV's own threads would oversubscribe them


@dataclass(frozen=True)
class Refused:
    """A task's file that could not be used: its one line (it names the file)."""

    reason: str


def _guarded(function: Callable, path: Path, *args):
    """Run one task; a failure on its file becomes a Refused naming the file (ImageReadError etc. already name it),
    and the other files go on. An output that cannot be written stops the run (raised)."""
    try:
        return function(path, *args)
    except OutputError:
        raise
    except (ImageReadError, DatasetError, PrepareError) as error:
        return Refused(str(error))
    except Exception as error:  # noqa: BLE001 -- e.g. cv2.error or MemoryError: the user needs the file name
        return Refused(f"{path}: {type(error).__name__}: {' '.join(str(error).split())}")


def run_tasks(function: Callable, tasks: list[tuple], consume: Callable, workers: int, desc: str) -> list[str]:
    """consume(function(*task)) for every task, the work in `workers` processes (here if 1), with a progress bar.

    Results arrive in completion order; a few tasks per worker are in flight at a time, so results (e.g. encoded
    images for an LMDB) never pile up in memory. A task whose file cannot be used is said in one line and the others
    go on; returns those lines. An output that cannot be written cancels the tasks not yet started and is raised.
    """
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=None, dynamic_ncols=True, leave=False)
    refused: list[str] = []

    def take(result) -> None:
        if isinstance(result, Refused):
            bar.write(f"error: {result.reason}", file=sys.stderr)
            refused.append(result.reason)
        else:
            consume(result)
        bar.update()

    try:
        if workers == 1:
            # OpenCV's own thread pool, once started here, can deadlock the next pool's forked workers (they hang in
            # cv2.setNumThreads): the work done in this process stays on one OpenCV thread, as in a worker.
            _init_worker()
            for task in tasks:
                take(_guarded(function, *task))
            return refused
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
                        take(future.result())
            except BrokenProcessPool:
                raise PrepareError("a worker process died (killed, or out of memory?); rerun with --workers 1 to "
                                   "find the image") from None
            finally:
                for future in pending:
                    future.cancel()
        return refused
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------------------------------


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def build_folder(path: Path, recipe: dict, fill: Callable[[Path], str], force: bool) -> bool:
    """Build path with fill(tmp) unless it already holds this recipe (then say so). Returns True when built."""
    marker = read_marker(path) if path.is_dir() else None
    if marker is not None and {k: v for k, v in marker.items() if k != "summary"} == recipe:
        print(f"{path}: up to date ({marker.get('summary', '')})")
        return False
    refuse_foreign([path], force)
    started = time.perf_counter()
    with atomic_folder(path) as tmp:
        summary = fill(tmp)
        write_text_atomic(tmp / MARKER, json.dumps({**recipe, "summary": summary}, indent=1) + "\n")
    print(f"{path}: {summary} in {time.perf_counter() - started:.1f} s")
    return True


def refuse_foreign(paths: Iterable[Path], force: bool) -> None:
    """Never replace a folder this script did not make (it may hold someone's data) unless told to."""
    for path in paths:
        if path.exists() and not force and read_marker(path) is None:
            raise PrepareError(f"{path}: exists and was not made by prepare_dataset.py; move it away or pass --force")


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


def _subimage_task(path: Path, name: str, out: Path, size: int, step: int, threshold: int, factor: float,
                   max_pixels: int = DEFAULT_MAX_PIXELS):
    rgb, notes = load_rgb8(path, factor, max_pixels)
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


def extract_into(out: Path, files: list[Path], names: list[str], size: int, step: int, threshold: int,
                 prescales: list[float], workers: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, Notes]:
    """Sub-images of every file (each downscaled by its own prescale first) into out; (count, notes). Files that
    cannot be read are named as they come and listed in ``notes.refused``."""
    notes, total = Notes(), 0

    def consume(result: tuple[int, dict]) -> None:
        nonlocal total
        total += result[0]
        notes.add(result[1])

    tasks = [(path, name, out, size, step, threshold, p, max_pixels)
             for path, name, p in zip(files, names, prescales)]
    notes.refused = run_tasks(_subimage_task, tasks, consume, workers, "sub-images")
    if total == 0:
        unread = f", {len(notes.refused)} unreadable" if notes.refused else ""
        raise PrepareError(f"no image is at least {size}x{size} pixels after --prescale {max(prescales):g} "
                           f"({len(notes.skipped)} too small{unread}): lower --size")
    return total, notes


def extract_subimages(input_dir: str | os.PathLike, output_dir: str | os.PathLike, size: int = 480, step: int = 240,
                      threshold: int = 0, prescale: float = 1.0, workers: int = 0, force: bool = False,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Cut every image under input_dir into size x size PNG sub-images ``<stem>_s001.png`` in output_dir.

    Returns the number of sub-images. Images smaller than size (after the optional area prescale) are skipped and
    listed. The output appears only when complete. Images that cannot be read (corrupt, over ``max_pixels``, not a
    regular file) are named one per line and left out; the output of the others is built, then PrepareError says
    how many.
    """
    started = time.perf_counter()
    _validate_crop_args(size, step, threshold, prescale)
    src, out = Path(input_dir), Path(output_dir)
    files = list_images(src)
    names = unique_names(files)
    _check_output(out, force, [src])
    with atomic_folder(out) as tmp:
        total, notes = extract_into(tmp, files, names, size, step, threshold, [prescale] * len(files),
                                    workers or available_cpus(), max_pixels)
        recipe = dict(recipe="subimages", input=str(src), size=size, step=step, threshold=threshold,
                      prescale=prescale, images=len(files), subimages=total, refused=len(notes.refused))
        write_text_atomic(tmp / MARKER, json.dumps(recipe, indent=1) + "\n")
    notes.print(f"{size}x{size}")
    used = len(files) - len(notes.skipped) - len(notes.refused)
    print(f"{out}: {total} sub-images of {size}x{size} from {used} of {len(files)} images "
          f"(step {step}, threshold {threshold}, prescale {prescale:g}) in {time.perf_counter() - started:.1f} s")
    notes.check_refused(len(files), f"{out} holds the sub-images of the others")
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
        # LMDB writes its pages in place, by design: the whole LMDB is built in a folder that is swapped in.
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


def _lmdb_task(path: Path, key: str, scales: tuple[int, ...], compression: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    rgb, notes = load_rgb8(path, max_pixels=max_pixels)
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


def _fill_lmdbs(tmps: dict[int, Path], files: list[Path], keys: list[str], scales: tuple[int, ...], compression: int,
                estimate: int, workers: int, desc: str, max_pixels: int) -> tuple[dict[int, dict[str, tuple]], Notes]:
    """Every image (and its LR per scale) into the LMDB in tmps[scale]; the shapes stored per scale, and notes."""
    writers: dict[int, _LmdbWriter] = {}
    shapes: dict[int, dict[str, tuple]] = {s: {} for s in tmps}
    notes = Notes()

    def consume(result: tuple) -> None:
        key, _, values, found = result
        notes.add(found)
        for s, (shape, data) in values.items():
            writers[s].put(key, data)
            shapes[s][key] = shape

    try:
        writers = {s: _LmdbWriter(tmp, max(4096, round(estimate / (s * s)))) for s, tmp in tmps.items()}
        tasks = [(path, key, scales, compression, max_pixels) for path, key in zip(files, keys)]
        notes.refused = run_tasks(_lmdb_task, tasks, consume, workers or available_cpus(), desc)
        for s in tmps:
            writers.pop(s).close()
    finally:
        for writer in writers.values():
            writer.env.close()
    return shapes, notes


def _fill_lmdbs_or_say_why(tmps: dict[int, Path], outputs: dict[int, Path], files: list[Path], keys: list[str],
                           scales: tuple[int, ...], compression: int, estimate: int, workers: int, max_pixels: int,
                           ) -> tuple[dict[int, dict[str, tuple]], Notes]:
    """_fill_lmdbs; LMDB's own write errors (a full disk: 'mdb_txn_commit: Input/output error') become one line
    naming the outputs."""
    import lmdb

    try:
        return _fill_lmdbs(tmps, files, keys, scales, compression, estimate, workers, f"LMDB {outputs[1].name}",
                           max_pixels)
    except lmdb.Error as error:
        raise OutputError(f"{', '.join(map(str, outputs.values()))}: cannot write ({error}); nothing was replaced "
                          f"(is the disk full?)") from None


def build_lmdb(input_dir: str | os.PathLike, output: str | os.PathLike, lr_scales: Iterable[int] = (),
               compression: int = 1, workers: int = 0, force: bool = False, initial_map_size: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """HR LMDB of every image under input_dir, plus one LR LMDB per scale with the same keys (dataset.py layout).

    LR = imgproc.make_lr of the HR mod-cropped to the scale (MATLAB bicubic, the evaluation protocol's LR). Keys are
    the plain file stems. Returns the number of images stored. Images that cannot be read are named one per line
    and left out; the LMDBs of the others are built, then PrepareError says how many.
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
    with contextlib.ExitStack() as folders:
        tmps = {s: folders.enter_context(atomic_folder(path)) for s, path in outputs.items()}
        shapes, notes = _fill_lmdbs_or_say_why(tmps, outputs, files, keys, scales, compression, estimate, workers,
                                               max_pixels)
        if not shapes[1]:
            unread = f" ({len(notes.refused)} could not be read)" if notes.refused else ""
            raise PrepareError(f"{src}: no image is at least {max(scales, default=1)} pixels on each side{unread}")
        for s, tmp in tmps.items():
            meta = "".join(f"{k}.png ({h},{w},{c}) {compression}\n" for k, (h, w, c) in sorted(shapes[s].items()))
            write_text_atomic(tmp / LMDB_META, meta)
            info = {"kind": "hr" if s == 1 else "lr", "scale": s, "count": len(shapes[s]), "source": str(src),
                    "compression": compression}
            if s > 1:
                info["lr"] = "imgproc.make_lr (MATLAB bicubic) of the HR mod-cropped to the scale"
            write_text_atomic(tmp / LMDB_INFO, json.dumps(info, indent=1) + "\n")
    notes.print(f"x{max(scales, default=1)}")
    sizes = ", ".join(f"{p} ({folder_mib(p):.1f} MiB)" for p in outputs.values())
    print(f"{len(shapes[1])} images from {src} -> {sizes} in {time.perf_counter() - started:.1f} s")
    notes.check_refused(len(files), f"{out} holds the others")
    return len(shapes[1])


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20
