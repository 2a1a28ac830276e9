"""Datasets: Y-channel LR/HR training patches from image folders or LMDBs, and full-image validation sets.

Training samples are a pure function of (seed, epoch, index): every random choice (image crop, flips) comes from
``np.random.default_rng([seed, epoch, index])``. So the samples do not depend on the number of loader workers or
processes, and a resumed run sees exactly the batches an uninterrupted one would have seen.

LMDB layout (written by prepare_dataset.py; BasicSR-compatible ``meta_info.txt``)::

    name.lmdb/data.mdb, lock.mdb
    name.lmdb/meta_info.txt   one line per image, sorted by key: "<key>.png (<h>,<w>,<c>) <png compression level>"
    name.lmdb/info.json       {"kind": "hr" | "lr", "scale": 1 | s, "count": n}

Values are standard PNG files (RGB written in OpenCV's BGR channel order, like any PNG on disk).
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .image_files import IMAGE_EXTENSIONS, ImageReadError, read_image
from .image_header import DEFAULT_MAX_PIXELS, HeaderError, png_damage, probe, size_refusal
from .imgproc import imresize_torch, make_lr, mod_crop, random_symmetry, y_channel_torch
from .metrics import smallest_scored_side

LMDB_META = "meta_info.txt"
LMDB_INFO = "info.json"
# LR pixels of context kept around a patch when its LR is made on the fly: MATLAB's antialiased bicubic kernel spans
# 4 LR pixels (2 per side, plus the half-pixel centre offset), so 4 makes the patch's LR identical to the same crop
# of the whole image's LR.
LR_CONTEXT = 4


class DatasetError(ValueError):
    """A data set that cannot be used, with the path and the reason in the message."""


class MissingFolderError(DatasetError):
    """A data folder that does not exist: the command line names something that is not there (exit code 2)."""


class UnusableImageError(DatasetError):
    """One image of a set that cannot be used (unreadable, over the pixel limit, too small, an LR of the wrong
    size), named in the message: it is left out and the rest of the set goes on."""


# ---------------------------------------------------------------------------------------------------------------------
# Files and LMDB
# ---------------------------------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under folder (recursively), sorted by relative path: never in os.listdir order. A FIFO, device
    or socket with an image's name is listed too, so that reading it refuses it in a line naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFolderError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
                   and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def is_lmdb(path: str | os.PathLike) -> bool:
    return (Path(path) / "data.mdb").is_file()


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Training works on 8-bit images: 16-bit ones are rounded down to 8 bits (x / 257)."""
    if rgb.dtype == np.uint16:
        return np.floor(rgb.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    return rgb


def prescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Area downscale by factor (>1 hides JPEG block artefacts and noise from the HR targets): ``jpeg_prescale``."""
    if factor <= 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_png(rgb: np.ndarray, compression: int = 1) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def decode_png(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An LMDB value (a PNG) as uint8 RGB. Its header and chunk CRCs are checked first: a damaged value is one
    DatasetError naming ``where``, without the line libpng would print on stderr (image_header.png_damage)."""
    try:
        header = probe(data)
        why = "not a PNG" if header is None or header.format != "PNG" else size_refusal(header, max_pixels)
    except HeaderError as error:
        why = str(error)
    why = why or png_damage(data)
    if why is None:
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as error:
            bgr, why = None, f"{error.err} in {error.func}"
        if bgr is not None:
            return np.ascontiguousarray(bgr[:, :, ::-1])
    raise DatasetError(f"{where}: value is not a decodable PNG ({why or 'OpenCV cannot decode it'}; corrupt LMDB?)")


@dataclass(frozen=True)
class LmdbEntry:
    key: str
    shape: tuple[int, int, int]


def read_lmdb_meta(path: str | os.PathLike) -> tuple[list[LmdbEntry], dict]:
    """Keys and shapes from meta_info.txt plus info.json; errors name the file."""
    path = Path(path)
    meta, info_file = path / LMDB_META, path / LMDB_INFO
    if not is_lmdb(path):
        raise DatasetError(f"{path}: not an LMDB (no data.mdb); build one with prepare_dataset.py")
    if not meta.is_file():
        raise DatasetError(f"{meta}: missing; this LMDB was not built by prepare_dataset.py (or is incomplete)")
    entries = []
    for number, line in enumerate(meta.read_text().splitlines(), 1):
        match = re.fullmatch(r"(\S+)\.png \((\d+),(\d+),(\d+)\) \d+", line.strip())
        if not match:
            raise DatasetError(f"{meta}:{number}: malformed line {line!r}")
        key = match[1]
        if "/" in key or "\\" in key or key.startswith("."):
            raise DatasetError(f"{meta}:{number}: key {key!r} is not a plain name")
        entries.append(LmdbEntry(key, (int(match[2]), int(match[3]), int(match[4]))))
    if not entries:
        raise DatasetError(f"{meta}: lists no images")
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    _open_lmdb(str(path))  # damaged meta pages are named now, not later in a loader worker
    return entries, info


_OPEN_LMDBS: dict[tuple, object] = {}  # (device, inode of data.mdb) -> lmdb.Environment, shared by every reader


def _open_lmdb(path: str):
    """One read-only environment per LMDB per process: py-lmdb refuses to open the same files twice in a process
    (LMDB's locks are per process), e.g. for two datasets over one LMDB, or a worker forked from a process that had
    it open. A forked worker reuses the inherited read-only handle. Keyed by inode, so a rebuilt LMDB is reopened."""
    stat = os.stat(os.path.join(path, "data.mdb"))
    key = (stat.st_dev, stat.st_ino)
    if key not in _OPEN_LMDBS:
        import lmdb  # imported here: only LMDB users need it

        try:
            _OPEN_LMDBS[key] = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as error:  # damaged meta pages: MDB_INVALID, MDB_VERSION_MISMATCH, MDB_CORRUPTED
            raise DatasetError(f"{path}: not a readable LMDB ({_lmdb_reason(error, path)}); rebuild it with "
                               f"prepare_dataset.py") from None
    return _OPEN_LMDBS[key]


def _lmdb_reason(error: Exception, path: str) -> str:
    """py-lmdb's message without the path it starts with ('x.lmdb: MDB_INVALID: File is not an LMDB file')."""
    return str(error).removeprefix(f"{path}: ") or type(error).__name__


class LmdbReader:
    """Read-only LMDB access, opened lazily (on first use in each process; see _open_lmdb)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._env = None

    def get(self, key: str) -> np.ndarray:
        if self._env is None:
            self._env = _open_lmdb(self.path)
        import lmdb

        try:
            with self._env.begin(write=False) as txn:
                data = txn.get(key.encode("ascii"))
        except lmdb.Error as error:  # a damaged page under the key
            raise DatasetError(f"{self.path}[{key}]: not readable ({_lmdb_reason(error, self.path)}); rebuild the "
                               f"LMDB with prepare_dataset.py") from None
        if data is None:
            raise DatasetError(f"{self.path}: key {key!r} listed in {LMDB_META} is missing from the database")
        return decode_png(data, f"{self.path}[{key}]")

    def __getstate__(self) -> dict:  # never pickle an open environment into a worker
        return {"path": self.path, "_env": None}


# ---------------------------------------------------------------------------------------------------------------------
# Training patches
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    source: int  # index into TrainDataset.sources
    key: str  # file path (folder source) or LMDB key
    size: tuple[int, int]  # HR height, width after any prescale


class TrainDataset(Dataset):
    """Random training patches; item i comes from image i // patches_per_image.

    sources: image folders and/or HR LMDBs. Each item is uint8 RGB, ready for ``prepare_batch``:

    * without an LR LMDB: ``{"hr": (3, R, R)}``, the HR patch plus LR_CONTEXT LR pixels of context on every side
      (mirrored at image borders exactly as MATLAB's imresize mirrors), R = hr_patch_size + 2 * LR_CONTEXT * scale.
      The LR is made from it in ``prepare_batch``, batched and on the training device, with the MATLAB-exact
      imresize: identical to cropping the whole image's protocol LR (docs/protocol.md, step 2), at a fraction of
      the cost of doing it per sample in the loader.
    * with ``lr_lmdb`` (pre-built LR with the same keys as the single HR LMDB source): ``{"lr", "hr"}`` patches.

    Images smaller than the HR patch are skipped and listed in ``skipped``; files that cannot be read (corrupt, over
    ``max_pixels``, not a regular file) are left out, their one-line reasons in ``refused``.
    """

    def __init__(self, sources: list[str], scale: int, hr_patch_size: int, patches_per_image: int = 1,
                 augment: bool = True, seed: int = 0, lr_lmdb: str = "", jpeg_prescale: float = 1.0,
                 cache_bytes: int = 512 << 20, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if hr_patch_size % scale:
            raise DatasetError(f"hr_patch_size {hr_patch_size} is not divisible by the scale {scale}")
        if not sources:
            raise DatasetError("no training data: train_dirs is empty")
        self.sources, self.scale, self.hr_patch_size = list(sources), scale, hr_patch_size
        self.patches_per_image, self.augment, self.seed = patches_per_image, augment, seed
        self.jpeg_prescale, self.epoch, self.max_pixels = jpeg_prescale, 0, max_pixels
        self.readers: dict[int, LmdbReader] = {}
        self.lr_reader = LmdbReader(lr_lmdb) if lr_lmdb else None
        self.items, self.skipped, self.refused = [], [], []
        # Decoded images read while scanning stay in memory up to cache_bytes; loader workers forked later share
        # them copy-on-write instead of each decoding every (large JPEG) image again.
        self._cache: dict[str, np.ndarray] = {}
        self._cache_bytes = cache_bytes
        for index, source in enumerate(self.sources):
            self.items += self._scan(index, source)
        if lr_lmdb:
            self._check_lr_lmdb(lr_lmdb)
        if not self.items:
            refused = f", {len(self.refused)} unreadable: {'; '.join(self.refused[:2])}" if self.refused else ""
            raise DatasetError(f"no training image in {', '.join(self.sources)} is at least "
                               f"{hr_patch_size}x{hr_patch_size} pixels ({len(self.skipped)} too small{refused})")

    def _scan(self, index: int, source: str) -> list[_Item]:
        items = []
        if is_lmdb(source):
            entries, info = read_lmdb_meta(source)
            if info.get("kind", "hr") != "hr":
                raise DatasetError(f"{source}: is an LR LMDB; list it as train_lr_lmdb, not in train_dirs")
            self.readers[index] = LmdbReader(source)
            candidates = [(e.key, e.shape[:2]) for e in entries]
        else:
            candidates = []
            for path in list_images(source):
                # Reading every image once up front finds a corrupt file now, not hours into a run: it is left out.
                try:
                    rgb = prescale(to_uint8(read_image(path, self.max_pixels)), self.jpeg_prescale)
                except ImageReadError as error:
                    self.refused.append(str(error))
                    continue
                candidates.append((str(path), rgb.shape[:2]))
                self._remember(str(path), rgb)
        for key, (h, w) in candidates:
            if min(h - h % self.scale, w - w % self.scale) < self.hr_patch_size:
                self.skipped.append(key)
            else:
                items.append(_Item(index, key, (h, w)))
        return items

    def _check_lr_lmdb(self, lr_lmdb: str) -> None:
        entries, info = read_lmdb_meta(lr_lmdb)
        if info.get("kind") != "lr" or info.get("scale") != self.scale:
            raise DatasetError(f"{lr_lmdb}: is not an LR LMDB for x{self.scale} (its info.json says "
                               f"kind={info.get('kind')!r}, scale={info.get('scale')!r})")
        if len(self.sources) != 1 or not is_lmdb(self.sources[0]):
            raise DatasetError("train_lr_lmdb needs exactly one HR LMDB in train_dirs")
        shapes = {e.key: e.shape[:2] for e in entries}
        for item in self.items:
            h, w = item.size
            if shapes.get(item.key) != (h // self.scale, w // self.scale):
                raise DatasetError(f"{lr_lmdb}: key {item.key!r} is missing or not 1/{self.scale} of its HR size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.patches_per_image

    def load_hr(self, item: _Item) -> np.ndarray:
        if item.key in self._cache:
            return self._cache[item.key]
        if item.source in self.readers:
            rgb = self.readers[item.source].get(item.key)
        else:
            rgb = prescale(to_uint8(read_image(item.key, self.max_pixels)), self.jpeg_prescale)
        self._remember(item.key, rgb)
        return rgb

    def _remember(self, key: str, rgb: np.ndarray) -> None:
        if rgb.nbytes <= self._cache_bytes:  # keep decoded images while the budget lasts
            self._cache[key] = rgb
            self._cache_bytes -= rgb.nbytes

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = self.items[index // self.patches_per_image]
        hr = mod_crop(self.load_hr(item), self.scale)
        s, p = self.scale, self.hr_patch_size // self.scale
        top = int(rng.integers(0, hr.shape[0] // s - p + 1))
        left = int(rng.integers(0, hr.shape[1] // s - p + 1))
        if self.lr_reader is not None:
            lr = self.lr_reader.get(item.key)[top:top + p, left:left + p]
            images = [lr, hr[top * s:(top + p) * s, left * s:(left + p) * s]]
        else:
            images = [hr_with_context(hr, top * s, left * s, p * s, LR_CONTEXT * s)]
        if self.augment:
            apply = random_symmetry(rng)
            images = [apply(image) for image in images]
        tensors = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in images]
        return dict(zip(("lr", "hr"), tensors)) if len(tensors) == 2 else {"hr": tensors[0]}


def hr_with_context(hr: np.ndarray, top: int, left: int, size: int, context: int) -> np.ndarray:
    """hr[top - context : top + size + context, same for columns], mirrored where it leaves the image.

    The mirror is numpy's "symmetric" (edge pixel repeated), which is how MATLAB's imresize extends borders, so the
    LR of this region equals the whole image's LR on the patch.
    """
    h, w = hr.shape[:2]
    t0, t1 = top - context, top + size + context
    l0, l1 = left - context, left + size + context
    region = hr[max(t0, 0):min(t1, h), max(l0, 0):min(l1, w)]
    pads = ((max(0, -t0), max(0, t1 - h)), (max(0, -l0), max(0, l1 - w)), (0, 0))
    return np.pad(region, pads, mode="symmetric") if any(a or b for a, b in pads[:2]) else region


def _y01(rgb: torch.Tensor) -> torch.Tensor:
    """Y / 255 of float RGB in [0, 1] (N, 3, H, W), MATLAB's rgb2ycbcr on doubles (docs/protocol.md, step 3)."""
    return y_channel_torch(rgb) / 255.0


def prepare_batch(batch: dict[str, torch.Tensor], scale: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB batch from TrainDataset -> (LR Y, HR Y) float32 in [0, 1] on device, by the protocol.

    uint8 crosses to the device (a quarter of the bytes of float32). LR = quantise(imresize(HR, 1/s)) in float64
    (imresize_torch), then Y of the quantised LR, unrounded, as in evaluation.
    """
    hr = batch["hr"].to(device, non_blocking=True).double() / 255.0
    if "lr" in batch:
        lr = batch["lr"].to(device, non_blocking=True).double() / 255.0
    else:
        c = LR_CONTEXT
        lr = torch.floor(imresize_torch(hr, 1.0 / scale).clamp(0, 1) * 255.0 + 0.5) / 255.0
        lr = lr[:, :, c:-c, c:-c]
        hr = hr[:, :, c * scale:-c * scale, c * scale:-c * scale]
    return _y01(lr).float(), _y01(hr).float()


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also for one process) that can start an epoch part-way, for exact mid-epoch resume."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_train_loader(dataset: TrainDataset, batch_size: int, num_workers: int, device: torch.device,
                      num_replicas: int = 1, rank: int = 0, seed: int = 0) -> DataLoader:
    """A loader whose batches depend only on (seed, epoch): call loader.sampler.set_epoch and dataset.set_epoch.

    batch_size is per process. Pinned memory only when feeding a CUDA device (it is pointless on CPU).
    Workers are not persistent, so each epoch's workers see the dataset's current epoch.
    """
    sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
    if len(sampler) < batch_size:
        raise DatasetError(f"the training set ({len(dataset)} patches = {len(dataset.items)} images x "
                           f"{dataset.patches_per_image} patches_per_image) gives {len(sampler)} patches to each of "
                           f"{num_replicas} process(es), fewer than one batch of {batch_size}: add images, raise "
                           f"--patches-per-image, lower --batch-size or use fewer processes")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=_ignore_interrupts)


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C / SIGTERM are for the main process, which saves a checkpoint and then stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------------------------------
# Full-image validation sets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationImage:
    name: str  # file name of the HR image
    hr_path: Path
    lr_path: Path | None  # None: LR is made from HR by the protocol


@dataclass(frozen=True)
class ValidationSet:
    name: str
    folder: Path
    scale: int
    images: tuple[ValidationImage, ...]
    max_pixels: int = DEFAULT_MAX_PIXELS

    def load(self, image: ValidationImage) -> tuple[np.ndarray, np.ndarray]:
        """(LR, HR) as uint8 RGB; HR mod-cropped to the scale (docs/protocol.md, step 1). UnusableImageError naming
        the file for one that cannot be read or scored (too small for the scale and the border crop)."""
        hr = mod_crop(to_uint8(self._read(image.hr_path)), self.scale)
        side = smallest_scored_side(self.scale)
        if min(hr.shape[:2]) < side:
            raise UnusableImageError(f"{image.hr_path}: too small to score at x{self.scale} (mod-cropped to "
                                     f"{hr.shape[1]}x{hr.shape[0]} px; at least {side}x{side}: {self.scale} px are "
                                     f"cropped from each side, then SSIM's 11x11 window)")
        if image.lr_path is None:
            return make_lr(np.ascontiguousarray(hr), self.scale), hr
        lr = to_uint8(self._read(image.lr_path))
        expected = (hr.shape[0] // self.scale, hr.shape[1] // self.scale)
        if lr.shape[:2] != expected:
            raise UnusableImageError(f"{image.lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}, expected "
                                     f"{expected[1]}x{expected[0]} (1/{self.scale} of mod-cropped "
                                     f"{image.hr_path.name})")
        return lr, hr

    def _read(self, path: Path) -> np.ndarray:
        try:
            return read_image(path, self.max_pixels)
        except ImageReadError as error:
            raise UnusableImageError(str(error)) from None


def _lr_stem(path: Path, scale: int) -> str:
    return re.sub(rf"_?x{scale}$", "", path.stem, flags=re.I)  # "baby_x4.png" / "babyx4.png" pair with "baby.png"


def find_validation_set(folder: str | os.PathLike, scale: int, max_pixels: int = DEFAULT_MAX_PIXELS
                        ) -> ValidationSet:
    """A validation folder: HR images only, or HR/ (or GT/) with LR_bicubic/X{s}/ (or LR/), paired by file stem.

    The set is named after the folder, or after its parent when the folder itself is HR/ or GT/. Its images are
    read when scored (``ValidationSet.load``), refused over ``max_pixels``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFolderError(f"{folder}: no such folder")
    hr_dir = next((folder / d for d in ("HR", "GT") if (folder / d).is_dir()), None)
    root = folder.parent if folder.name in ("HR", "GT") else folder
    if hr_dir is None and folder.name in ("HR", "GT"):
        hr_dir = folder
    lr_dir = next((root / d for d in (f"LR_bicubic/X{scale}", f"LR_bicubic/x{scale}", "LR") if (root / d).is_dir()),
                  None) if hr_dir is not None else None
    hr_files = list_images(hr_dir or folder)
    if hr_dir is not None and lr_dir is None:
        other = sorted(p.name for p in (root / "LR_bicubic").glob("*")) if (root / "LR_bicubic").is_dir() else []
        if other:
            raise DatasetError(f"{root}: has LR_bicubic/{{{','.join(other)}}} but no LR_bicubic/X{scale} for x{scale}")
    if lr_dir is None:
        images = tuple(ValidationImage(p.name, p, None) for p in hr_files)
    else:
        lr_by_stem = {}
        for p in list_images(lr_dir):
            stem = _lr_stem(p, scale)
            if stem in lr_by_stem:
                raise DatasetError(f"{lr_dir}: two LR images for {stem!r}: {lr_by_stem[stem].name}, {p.name}")
            lr_by_stem[stem] = p
        missing = [p.name for p in hr_files if p.stem not in lr_by_stem]
        if missing:
            raise DatasetError(f"{lr_dir}: no LR image for {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''} (paired by file stem)")
        images = tuple(ValidationImage(p.name, p, lr_by_stem[p.stem]) for p in hr_files)
    return ValidationSet(root.name if hr_dir is not None else folder.name, root, scale, images, max_pixels)


def find_validation_sets(folders: list[str], scale: int, max_pixels: int = DEFAULT_MAX_PIXELS
                         ) -> list[ValidationSet]:
    """Sets for several folders, with unique names (a repeated name gets _2, _3, ...)."""
    sets, seen = [], {}
    for folder in folders:
        found = find_validation_set(folder, scale, max_pixels)
        seen[found.name] = seen.get(found.name, 0) + 1
        if seen[found.name] > 1:
            found = replace(found, name=f"{found.name}_{seen[found.name]}")
        sets.append(found)
    return sets


def batches_per_epoch(dataset_len: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps per epoch with ResumableSampler (drop_last) and a per-process batch_size."""
    return (dataset_len // world_size) // batch_size


__all__ = ["DatasetError", "UnusableImageError", "ImageReadError", "TrainDataset", "ValidationSet", "ValidationImage",
           "LmdbReader", "find_validation_set", "find_validation_sets", "make_train_loader", "list_images",
           "encode_png", "decode_png", "prescale", "to_uint8", "prepare_batch", "hr_with_context", "read_lmdb_meta",
           "is_lmdb", "batches_per_epoch"]
