"""The training pool resident on the training device: crops, flips and the protocol LR made there, in batches.

Design note (the GPU fast path, ``train.py --data-on-device``):

* **Why.** On a GPU the loader path (CPU workers cut patches, the batch crosses PCIe, the LR is made on the device)
  costs host work every step and keeps the step from being one static piece of device work. The decoded training
  photos are small (a few hundred MB of uint8 RGB), so they live on the device and every batch is made there.
* **Storage.** The images (prescaled as TrainDataset loads them, mod-cropped to the scale) are concatenated as uint8
  HWC into one flat tensor, with per-image offsets, heights and widths. A batch is one gather from it: no padding
  to a common size, whatever the image sizes.
* **Samples.** As in the loader path, an epoch is ``len(images) * patches_per_image`` samples, sample ``i`` comes
  from image ``i // patches_per_image``, and the epoch visits them in a shuffled order without replacement; batch
  ``b`` is positions ``[b * batch, (b + 1) * batch)`` of that order (ranks of a DDP run take consecutive slices).
* **Randomness** is a counter-based integer hash of (seed, epoch, sample, draw) computed with torch integer ops, so
  a batch is a pure function of (seed, epoch, batch index) -- of (seed, step) -- on every device alike (the CPU
  gives the GPU's batches bit for bit), there is no RNG state to save, and resume is exact. All draws of an epoch
  are made at its start into one fixed buffer, so a step reads only device memory: no host sync, and a CUDA graph
  of the whole step stays valid across epochs. The sample order and draws differ from the loader path's numpy
  generator, so ``data_on_device`` is part of a run's plan.
* **The crop** is the HR patch plus ``dataset.LR_CONTEXT`` LR pixels of context on every side, mirrored at image
  borders exactly as ``dataset.hr_with_context`` (numpy's "symmetric", MATLAB's imresize border); the flips and
  transpose are ``imgproc.random_symmetry``'s, in its order; the LR and Y are ``dataset.prepare_batch``'s (MATLAB
  bicubic in float64, quantised to uint8, Y of the quantised LR), so the protocol is the loader path's own code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .dataset import LR_CONTEXT, DatasetError, TrainDataset, prepare_batch
from .imgproc import mod_crop

MASK32 = 0xFFFFFFFF
# Columns of the per-epoch draws: the sample's number, its image, the LR-grid top/left of its patch, three flips.
SAMPLE, IMAGE, TOP, LEFT, HFLIP, VFLIP, TRANSPOSE = range(7)
_ORDER_DRAW = 0  # draw number of the shuffle key; draws 1..5 are top, left and the three flips


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 tensors holding uint32 values, in 16-bit halves so no product overflows
    int64 (signed overflow is undefined in the C++ kernels)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A strong 32-bit integer finaliser (Wellons' "lowbias32"): every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_hash(seed: int, epoch: int, sample: torch.Tensor, draw: torch.Tensor | int) -> torch.Tensor:
    """uint32 (in int64) pseudo-random numbers, a pure function of (seed, epoch, sample, draw) on any device."""
    h = torch.full_like(sample, ((seed >> 32) & MASK32) ^ 0x9E3779B9)
    for value in (seed & MASK32, epoch & MASK32, sample, draw):
        h = _mix32(((h ^ value) + 0x9E3779B9) & MASK32)  # the constant keeps all-zero inputs off the fixed point 0
    return h


def uniform_below(u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Integers in [0, n) from uint32 u by multiply-shift (u * n < 2**63 for n < 2**31; bias below n / 2**32)."""
    return (u * n) >> 32


def symmetric_index(i: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Index into [0, size) of position i of numpy's "symmetric" extension (edge repeated, period 2 * size)."""
    m = torch.remainder(i, 2 * size)
    return torch.where(m < size, m, 2 * size - 1 - m)


class DevicePool:
    """Training images on ``device``; ``batch(start, size)`` gives (LR Y, HR Y) like the loader path's batches."""

    def __init__(self, images: Sequence[np.ndarray], scale: int, hr_patch_size: int, patches_per_image: int = 1,
                 augment: bool = True, seed: int = 0, device: torch.device | str = "cpu") -> None:
        """images: uint8 RGB HxWx3, already prescaled; each is mod-cropped to the scale here."""
        if hr_patch_size % scale:
            raise DatasetError(f"hr_patch_size {hr_patch_size} is not divisible by the scale {scale}")
        images = [np.ascontiguousarray(mod_crop(image, scale)) for image in images]
        small = [k for k, image in enumerate(images) if min(image.shape[:2]) < hr_patch_size]
        if not images or small or any(image.dtype != np.uint8 or image.ndim != 3 for image in images):
            raise DatasetError(f"DevicePool needs uint8 RGB images of at least {hr_patch_size}x{hr_patch_size} "
                               f"(images {small[:5]} are smaller)")
        self.device, self.scale, self.hr_patch_size = torch.device(device), scale, hr_patch_size
        self.patches_per_image, self.augment, self.seed, self.epoch = patches_per_image, augment, seed, -1
        sizes = [image.size for image in images]
        self.pixels = torch.from_numpy(np.concatenate([image.reshape(-1) for image in images])).to(self.device)
        self.offsets = torch.tensor(np.cumsum([0] + sizes[:-1]), dtype=torch.int64, device=self.device)
        self.heights = torch.tensor([image.shape[0] for image in images], dtype=torch.int64, device=self.device)
        self.widths = torch.tensor([image.shape[1] for image in images], dtype=torch.int64, device=self.device)
        self.context = LR_CONTEXT * scale
        self.crop_size = hr_patch_size + 2 * self.context
        self.draws = torch.zeros(len(self), 7, dtype=torch.int64, device=self.device)  # filled by set_epoch
        self._span = torch.arange(self.crop_size, device=self.device)
        self._channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        self._rows: dict[int, torch.Tensor] = {}

    @classmethod
    def from_dataset(cls, dataset: TrainDataset, device: torch.device | str) -> DevicePool:
        """The images of a TrainDataset (folders or HR LMDBs, prescaled as it loads them), with its settings."""
        if dataset.lr_reader is not None:
            raise DatasetError("--data-on-device makes the LR on the device; it does not read --train-lr-lmdb")
        images = [dataset.load_hr(item) for item in dataset.items]
        return cls(images, dataset.scale, dataset.hr_patch_size, dataset.patches_per_image, dataset.augment,
                   dataset.seed, device)

    def __len__(self) -> int:
        return len(self.heights) * self.patches_per_image

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def set_epoch(self, epoch: int) -> None:
        """Draw the epoch's sample order, patch positions and flips into ``draws`` (in place: a captured graph that
        reads it sees the new epoch)."""
        if epoch == self.epoch:
            return
        samples = torch.arange(len(self), device=self.device)
        key = counter_hash(self.seed, epoch, samples, _ORDER_DRAW)
        # 63-bit sort keys make ties (broken by the stable sort, so still deterministic) vanishingly rare.
        key = (key << 31) | (counter_hash(self.seed, epoch, samples, 6) >> 1)
        order = samples[torch.argsort(key, stable=True)]
        image = order // self.patches_per_image
        u = counter_hash(self.seed, epoch, order[:, None], torch.arange(1, 6, device=self.device)[None])
        p = self.hr_patch_size // self.scale
        top = uniform_below(u[:, 0], self.heights[image] // self.scale - p + 1)
        left = uniform_below(u[:, 1], self.widths[image] // self.scale - p + 1)
        flips = (u[:, 2:5] >> 31) * int(self.augment)  # the top bit: probability 1/2 each
        self.draws.copy_(torch.stack([order, image, top, left, *flips.unbind(1)], 1))
        self.epoch = epoch

    def rows(self, start: int | torch.Tensor, size: int) -> torch.Tensor:
        """Draws of positions [start, start + size) of the epoch's order; start may be a device scalar (graphs)."""
        if isinstance(start, int) and not 0 <= start <= len(self) - size:  # a device scalar is the caller's charge
            raise IndexError(f"positions {start}..{start + size - 1} are outside the epoch's {len(self)} samples")
        if size not in self._rows:
            self._rows[size] = torch.arange(size, device=self.device)
        return self.draws.index_select(0, self._rows[size] + start)

    def crops(self, draws: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, R, R): each drawn patch with its LR context, augmented -- what TrainDataset gives the loader
        path, R = hr_patch_size + 2 * LR_CONTEXT * scale."""
        image = draws[:, IMAGE]
        height, width = self.heights[image][:, None], self.widths[image][:, None]
        rows = symmetric_index(draws[:, TOP, None] * self.scale - self.context + self._span, height)
        cols = symmetric_index(draws[:, LEFT, None] * self.scale - self.context + self._span, width)
        where = self.offsets[image][:, None, None] + (rows[:, :, None] * width[:, :, None] + cols[:, None, :]) * 3
        crop = self.pixels[where[:, None] + self._channels]
        # imgproc.random_symmetry's order on HWC: flip columns, flip rows, then swap the axes.
        for column, apply in ((HFLIP, lambda c: c.flip(-1)), (VFLIP, lambda c: c.flip(-2)),
                              (TRANSPOSE, lambda c: c.transpose(-2, -1))):
            crop = torch.where(draws[:, column].view(-1, 1, 1, 1) > 0, apply(crop), crop)
        return crop

    def batch(self, start: int | torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR Y, HR Y) float32 in [0, 1] of positions [start, start + size) of this epoch: dataset.prepare_batch."""
        return prepare_batch({"hr": self.crops(self.rows(start, size))}, self.scale, self.device)


__all__ = ["DevicePool", "counter_hash", "symmetric_index", "uniform_below"]
