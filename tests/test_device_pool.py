"""device_pool.py: crops are real crops at the drawn positions, augmentation is imgproc.random_symmetry's, the LR is
the protocol's, and batches are a pure function of (seed, epoch, position) on every device."""

import numpy as np
import pytest
import torch
from helpers import assert_lr_equal, ties, y01

from srdensenet import dataset
from srdensenet.dataset import DatasetError, TrainDataset
from srdensenet.device_pool import (
    HFLIP,
    IMAGE,
    LEFT,
    SAMPLE,
    TOP,
    TRANSPOSE,
    VFLIP,
    DevicePool,
    counter_hash,
    symmetric_index,
)
from srdensenet.image_files import read_image
from srdensenet.imgproc import make_lr, mod_crop, random_symmetry

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_smoke.sh)")


class FixedDraws:
    """Stands in for the numpy generator random_symmetry draws from: answers its three questions with our bits."""

    def __init__(self, bits) -> None:
        self.values = iter([0.0 if bit else 1.0 for bit in bits])

    def random(self) -> float:
        return next(self.values)


def make_pool(folder, scale=2, patch=16, per_image=5, augment=True, seed=3, device="cpu"):  # noqa: F811
    data = TrainDataset([str(folder)], scale, patch, patches_per_image=per_image, augment=augment, seed=seed)
    return data, DevicePool.from_dataset(data, device)


def reference_crop(data, row, scale, patch) -> np.ndarray:
    """The loader path's sample for one row of draws: hr_with_context, then random_symmetry with the same flips."""
    hr = np.ascontiguousarray(mod_crop(read_image(data.items[int(row[IMAGE])].key), scale))
    c = dataset.LR_CONTEXT * scale
    region = dataset.hr_with_context(hr, int(row[TOP]) * scale, int(row[LEFT]) * scale, patch, c)
    return random_symmetry(FixedDraws(row[[HFLIP, VFLIP, TRANSPOSE]].tolist()))(region)


@pytest.mark.parametrize("scale, patch", [(2, 16), (4, 16), (3, 12)])
def test_crops_are_the_drawn_patches_with_their_context_and_flips(folder, scale, patch):  # noqa: F811
    data, pool = make_pool(folder, scale, patch)
    pool.set_epoch(2)
    rows = pool.rows(0, len(pool))
    crops = pool.crops(rows)
    assert crops.dtype == torch.uint8 and crops.shape == (len(pool), 3, pool.crop_size, pool.crop_size)
    for k, row in enumerate(rows.numpy()):
        expected = reference_crop(data, row, scale, patch)
        assert np.array_equal(crops[k].numpy().transpose(1, 2, 0), expected), k


def test_lr_is_the_protocol_lr_of_the_crop_and_hr_its_centre(folder):  # noqa: F811
    scale, patch = 2, 16
    data, pool = make_pool(folder, scale, patch)
    pool.set_epoch(0)
    lr_y, hr_y = pool.batch(0, len(pool))
    c = dataset.LR_CONTEXT
    assert lr_y.shape == (len(pool), 1, patch // scale, patch // scale) and hr_y.shape == (len(pool), 1, patch, patch)
    for k, row in enumerate(pool.rows(0, len(pool)).numpy()):
        crop = reference_crop(data, row, scale, patch)
        lr = make_lr(crop, scale)[c:-c, c:-c]
        assert_lr_equal(lr_y[k, 0], lr, ties(crop, scale)[c:-c, c:-c])
        assert torch.equal(hr_y[k, 0], y01(np.ascontiguousarray(crop[c * scale:-c * scale, c * scale:-c * scale])))


def test_unaugmented_lr_equals_the_whole_images_protocol_lr(folder):  # noqa: F811
    scale, patch = 4, 16
    data, pool = make_pool(folder, scale, patch, augment=False)
    pool.set_epoch(1)
    rows = pool.rows(0, len(pool))
    assert not rows[:, HFLIP:].any()
    lr_y, _ = pool.batch(0, len(pool))
    p = patch // scale
    for k, row in enumerate(rows.numpy()):
        hr = np.ascontiguousarray(mod_crop(read_image(data.items[int(row[IMAGE])].key), scale))
        top, left = int(row[TOP]), int(row[LEFT])
        tie_mask = ties(hr, scale)[top:top + p, left:left + p]
        assert_lr_equal(lr_y[k, 0], make_lr(hr, scale)[top:top + p, left:left + p], tie_mask)


def test_an_epoch_visits_every_sample_once_in_bounds(folder):  # noqa: F811
    data, pool = make_pool(folder, 2, 16, per_image=40)
    pool.set_epoch(5)
    rows = pool.draws
    assert sorted(rows[:, SAMPLE].tolist()) == list(range(len(pool)))
    assert torch.equal(rows[:, IMAGE], rows[:, SAMPLE] // 40)
    assert rows[:, SAMPLE].tolist() != list(range(len(pool)))  # shuffled
    p = 16 // 2
    assert (rows[:, TOP] >= 0).all() and (rows[:, LEFT] >= 0).all()
    assert (rows[:, TOP] <= pool.heights[rows[:, IMAGE]] // 2 - p).all()
    assert (rows[:, LEFT] <= pool.widths[rows[:, IMAGE]] // 2 - p).all()
    flips = rows[:, HFLIP:].double().mean(0)
    assert ((flips > 0.35) & (flips < 0.65)).all(), flips  # 120 draws of a fair bit each
    assert len(set(rows[:, TOP].tolist())) > 10


def test_batches_depend_only_on_seed_epoch_and_position(folder):  # noqa: F811
    _, a = make_pool(folder, seed=7)
    _, b = make_pool(folder, seed=7)
    _, other = make_pool(folder, seed=8)
    for pool in (a, b, other):
        pool.set_epoch(3)
    assert torch.equal(a.draws, b.draws) and not torch.equal(a.draws, other.draws)
    lr_a, hr_a = a.batch(4, 6)
    lr_b, hr_b = b.batch(torch.tensor(4), 6)  # a device scalar start (as a CUDA graph passes it) is the same batch
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    halves = [b.batch(4, 3), b.batch(7, 3)]
    assert torch.equal(torch.cat([h[1] for h in halves]), hr_a)  # DDP ranks' slices make up the global batch
    with pytest.raises(IndexError, match="outside the epoch"):
        a.batch(len(a) - 2, 3)
    first = a.draws.clone()
    a.set_epoch(4)
    assert not torch.equal(first, a.draws)
    a.set_epoch(3)
    assert torch.equal(first, a.draws)  # an epoch is recomputed, not remembered: resume needs no saved state


def test_hash_is_a_fixed_function():
    samples = torch.arange(4)
    # Pinned values: a change of the hash changes every run's batches (data_on_device runs could not resume).
    assert counter_hash(0, 0, samples, 0).tolist() == [2065937115, 3047229758, 721744348, 1590753575]
    assert counter_hash(2**40 + 5, 7, samples[:2], 3).tolist() == [3340435157, 2257844698]  # seeds above 32 bits
    values = counter_hash(123, 4, torch.arange(20000), 1)
    assert values.min() >= 0 and values.max() < 2**32 and len(set(values.tolist())) > 19990
    assert abs(values.double().mean().item() / 2**32 - 0.5) < 0.01


def test_symmetric_index_is_numpys_symmetric_pad():
    for size in (1, 2, 5):
        padded = np.pad(np.arange(size), 12, mode="symmetric")
        got = symmetric_index(torch.arange(-12, size + 12), torch.tensor(size))
        assert got.tolist() == padded.tolist()


def test_images_too_small_or_an_lr_lmdb_are_refused(folder):  # noqa: F811
    with pytest.raises(DatasetError, match="at least 200x200"):
        DevicePool([np.zeros((100, 300, 3), np.uint8)], 2, 200)
    data = TrainDataset([str(folder)], 2, 16)
    data.lr_reader = object()
    with pytest.raises(DatasetError, match="train-lr-lmdb"):
        DevicePool.from_dataset(data, "cpu")


@CUDA
def test_cuda_pool_gives_the_cpu_pools_batches(folder):  # noqa: F811
    _, cpu = make_pool(folder, 4, 16)
    _, gpu = make_pool(folder, 4, 16, device="cuda")
    for pool in (cpu, gpu):
        pool.set_epoch(9)
    assert torch.equal(cpu.draws, gpu.draws.cpu())
    assert torch.equal(cpu.crops(cpu.rows(0, 12)), gpu.crops(gpu.rows(0, 12)).cpu())
    (lr_c, hr_c), (lr_g, hr_g) = cpu.batch(0, 12), gpu.batch(torch.tensor(0, device="cuda"), 12)
    assert torch.equal(hr_c, hr_g.cpu())
    assert (lr_c - lr_g.cpu()).abs().max() <= 1.0 / 255.0 + 1e-6  # float64 matmul order: only exact .5 ties differ
    assert (lr_c != lr_g.cpu()).float().mean() < 0.01
