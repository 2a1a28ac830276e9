"""dataset.py: LMDB round trip, the protocol LR of training patches, loader determinism, errors, validation pairing.

Small crops of scikit-image photos in tmp_path and tiny patches keep this fast on two cores.
"""

import json
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from helpers import assert_lr_equal, dataset_images, ties, y01
from torch.utils.data import default_collate

from srdensenet import data_builders, dataset
from srdensenet.dataset import (
    DatasetError,
    LmdbReader,
    TrainDataset,
    find_validation_set,
    find_validation_sets,
    make_train_loader,
    prepare_batch,
    read_lmdb_meta,
    to_uint8,
)
from srdensenet.image_files import read_image, write_image
from srdensenet.imgproc import make_lr, mod_crop

CPU = torch.device("cpu")


@pytest.fixture
def lmdbs(folder, tmp_path):
    """HR LMDB of `folder` plus x2 and x3 LR LMDBs, built by data_builders.build_lmdb in this process."""
    hr = tmp_path / "train.lmdb"
    data_builders.build_lmdb(folder, hr, lr_scales=[2, 3], workers=1)
    return hr, data_builders.lr_lmdb_path(hr, 2), data_builders.lr_lmdb_path(hr, 3)


def _position(seed: int, epoch: int, index: int, hr_shape: tuple, scale: int, p: int) -> tuple[int, int]:
    """The LR-grid (top, left) of sample `index`: the dataset's own draws, top first, from its generator."""
    rng = np.random.default_rng([seed, epoch, index])
    return int(rng.integers(0, hr_shape[0] // scale - p + 1)), int(rng.integers(0, hr_shape[1] // scale - p + 1))


# ---------------------------------------------------------------------------------------------------------------------
# LMDB
# ---------------------------------------------------------------------------------------------------------------------


def test_lmdb_round_trip_is_bit_exact(folder, tmp_path):
    deep = (skimage.data.coffee()[:40, :50].astype(np.uint16) * 257 + 3)  # 16-bit input: stored as 8-bit
    write_image(folder / "deep.png", deep)
    rgba = np.dstack([skimage.data.chelsea()[:30, :40], np.full((30, 40), 128, np.uint8)])
    write_image(folder / "rgba.png", rgba)
    out = tmp_path / "round.lmdb"
    data_builders.build_lmdb(folder, out, workers=1)
    entries, info = read_lmdb_meta(out)
    assert info["kind"] == "hr" and info["scale"] == 1 and info["count"] == 5
    assert [e.key for e in entries] == ["astronaut", "camera", "coffee", "deep", "rgba"]
    lines = (out / "meta_info.txt").read_text().splitlines()
    assert lines[0] == "astronaut.png (97,123,3) 1" and lines == sorted(lines)
    reader = LmdbReader(out)
    for entry in entries:
        original = to_uint8(read_image(folder / f"{entry.key}.png"))
        stored = reader.get(entry.key)
        assert stored.dtype == np.uint8 and stored.shape == entry.shape
        np.testing.assert_array_equal(stored, original)


def test_lmdb_values_are_standard_rgb_pngs(lmdbs):
    import cv2
    import lmdb

    with lmdb.open(str(lmdbs[0]), readonly=True, lock=False) as env, env.begin() as txn:
        data = txn.get(b"astronaut")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # any PNG reader: stored channel order
    np.testing.assert_array_equal(bgr[:, :, ::-1], dataset_images()["astronaut"])


def test_two_readers_and_datasets_share_one_lmdb(lmdbs):
    # py-lmdb refuses to open the same files twice in a process: readers must share the environment.
    hr = lmdbs[0]
    first, second = TrainDataset([str(hr)], 2, 16, seed=1), TrainDataset([str(hr), str(hr)], 2, 16, seed=1)
    assert torch.equal(first[0]["hr"], second[0]["hr"])
    assert len(second.items) == 2 * len(first.items)
    np.testing.assert_array_equal(LmdbReader(hr).get("coffee"), LmdbReader(str(hr)).get("coffee"))


def test_lmdb_errors_are_clear(lmdbs, tmp_path):
    hr, x2, x3 = lmdbs
    with pytest.raises(DatasetError, match=r"not an LR LMDB for x2 .*scale=3"):
        TrainDataset([str(hr)], 2, 16, lr_lmdb=str(x3))
    with pytest.raises(DatasetError, match="not an LR LMDB for x2 .*kind='hr'"):
        TrainDataset([str(hr)], 2, 16, lr_lmdb=str(hr))
    with pytest.raises(DatasetError, match="is an LR LMDB"):
        TrainDataset([str(x2)], 2, 16)
    with pytest.raises(DatasetError, match="not an LMDB"):
        TrainDataset([str(hr)], 2, 16, lr_lmdb=str(tmp_path / "missing_X2.lmdb"))
    with pytest.raises(DatasetError, match="no such folder"):
        TrainDataset([str(tmp_path / "missing.lmdb")], 2, 16)
    damaged = shutil.copytree(x3, tmp_path / "damaged_X3.lmdb")  # a copy: py-lmdb opens a path once per process
    (damaged / "data.mdb").write_bytes(bytes(8192) + (x3 / "data.mdb").read_bytes()[8192:])  # both meta pages gone
    with pytest.raises(DatasetError, match=r"damaged_X3.lmdb: not a readable LMDB \(MDB_INVALID: .*\); rebuild it"):
        TrainDataset([str(hr)], 3, 18, lr_lmdb=str(damaged))
    (x2 / "meta_info.txt").unlink()
    with pytest.raises(DatasetError, match="meta_info.txt: missing"):
        TrainDataset([str(hr)], 2, 16, lr_lmdb=str(x2))
    (hr / "meta_info.txt").write_text("astronaut.png (97,123) 1\n")
    with pytest.raises(DatasetError, match="meta_info.txt:1: malformed"):
        TrainDataset([str(hr)], 2, 16)


# ---------------------------------------------------------------------------------------------------------------------
# Training patches: the protocol LR
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_patch_lr_equals_the_whole_images_protocol_lr(folder, scale):
    seed, epoch, patch, per_image = 11, 3, 8 * scale, 6
    data = TrainDataset([str(folder)], scale, patch, patches_per_image=per_image, augment=False, seed=seed)
    data.set_epoch(epoch)
    indices = list(range(len(data)))
    lr_y, hr_y = prepare_batch(default_collate([data[i] for i in indices]), scale, CPU)
    assert lr_y.shape == (len(indices), 1, 8, 8) and hr_y.shape == (len(indices), 1, patch, patch)
    p = patch // scale
    for i in indices:
        item = data.items[i // per_image]
        hr = np.ascontiguousarray(mod_crop(read_image(item.key), scale))
        top, left = _position(seed, epoch, i, hr.shape, scale, p)
        lr_full = make_lr(hr, scale)
        tie_mask = ties(hr, scale)[top:top + p, left:left + p]
        assert_lr_equal(lr_y[i, 0], lr_full[top:top + p, left:left + p], tie_mask)
        hr_patch = hr[top * scale:(top + p) * scale, left * scale:(left + p) * scale]
        assert torch.equal(hr_y[i, 0], y01(hr_patch))


def test_patches_at_every_border_have_the_protocol_lr(folder):
    # Corners and edges: hr_with_context mirrors the image as MATLAB's imresize does.
    scale, p = 2, 10
    hr = np.ascontiguousarray(mod_crop(read_image(folder / "astronaut.png"), scale))
    lr_full, tie_mask = make_lr(hr, scale), ties(hr, scale)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    corners = [(0, 0), (0, w - p), (h - p, 0), (h - p, w - p), (0, w // 2), (h // 2, 0)]
    c = dataset.LR_CONTEXT
    regions = [dataset.hr_with_context(hr, t * scale, left * scale, p * scale, c * scale) for t, left in corners]
    batch = {"hr": torch.from_numpy(np.stack(regions).transpose(0, 3, 1, 2).copy())}
    lr_y, _ = prepare_batch(batch, scale, CPU)
    for k, (t, left) in enumerate(corners):
        assert_lr_equal(lr_y[k, 0], lr_full[t:t + p, left:left + p], tie_mask[t:t + p, left:left + p])


@pytest.mark.parametrize("augment", [False, True])
def test_lr_lmdb_gives_the_same_patches_as_on_the_fly(lmdbs, augment):
    hr, x2, _ = lmdbs
    scale, patch, seed = 2, 16, 5
    stored = TrainDataset([str(hr)], scale, patch, patches_per_image=4, augment=augment, seed=seed, lr_lmdb=str(x2))
    fly = TrainDataset([str(hr)], scale, patch, patches_per_image=4, augment=augment, seed=seed)
    for data in (stored, fly):
        data.set_epoch(2)
    indices = list(range(len(fly)))
    lr_a, hr_a = prepare_batch(default_collate([stored[i] for i in indices]), scale, CPU)
    lr_b, hr_b = prepare_batch(default_collate([fly[i] for i in indices]), scale, CPU)
    assert torch.equal(hr_a, hr_b)
    differ = lr_a != lr_b
    assert (lr_a - lr_b).abs().max() <= 1.0 / 255.0 + 1e-6
    assert differ.sum() <= max(1, differ.numel() // 10000)  # only at exact .5 ties (see helpers.ties)
    if not augment:  # the LMDB LR is exactly make_lr's: check it against the on-the-fly one tie by tie
        for i in indices:
            item, p = fly.items[i // 4], patch // scale
            image = np.ascontiguousarray(mod_crop(LmdbReader(hr).get(item.key), scale))
            top, left = _position(seed, 2, i, image.shape, scale, p)
            assert not (differ[i, 0].numpy() & ~ties(image, scale)[top:top + p, left:left + p]).any()


def test_samples_depend_only_on_seed_epoch_index(folder):
    a = TrainDataset([str(folder)], 2, 16, patches_per_image=3, seed=4)
    b = TrainDataset([str(folder)], 2, 16, patches_per_image=3, seed=4)
    a.set_epoch(1)
    b.set_epoch(1)
    assert all(torch.equal(a[i]["hr"], b[i]["hr"]) for i in reversed(range(len(a))))
    b.set_epoch(2)
    assert not all(torch.equal(a[i]["hr"], b[i]["hr"]) for i in range(len(a)))


# ---------------------------------------------------------------------------------------------------------------------
# Loaders: workers and processes
# ---------------------------------------------------------------------------------------------------------------------


def _epoch(loader, data, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    data.set_epoch(epoch)
    return [batch["hr"] for batch in loader]


@pytest.mark.parametrize("source", ["folder", "lmdb"])
def test_workers_give_the_same_batches_as_the_main_process(folder, lmdbs, source):
    data = TrainDataset([str(folder if source == "folder" else lmdbs[0])], 2, 16, patches_per_image=4, seed=9)
    serial = _epoch(make_train_loader(data, 4, 0, CPU, seed=9), data, 1)
    parallel = _epoch(make_train_loader(data, 4, 2, CPU, seed=9), data, 1)
    assert len(serial) == len(parallel) == 3
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel))


def test_two_replicas_cover_the_single_process_batch(folder):
    data = TrainDataset([str(folder)], 2, 16, patches_per_image=8, seed=3)
    single = _epoch(make_train_loader(data, 8, 0, CPU, seed=3), data, 0)[0]
    ranks = [_epoch(make_train_loader(data, 4, 0, CPU, num_replicas=2, rank=r, seed=3), data, 0)[0] for r in (0, 1)]

    def samples(batch: torch.Tensor) -> list[bytes]:
        return sorted(x.numpy().tobytes() for x in batch)

    assert samples(torch.cat(ranks)) == samples(single)


def test_resumable_sampler_starts_mid_epoch(folder):
    data = TrainDataset([str(folder)], 2, 16, patches_per_image=8, seed=3)
    sampler = make_train_loader(data, 4, 0, CPU, seed=3).sampler
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_start(8)
    assert list(sampler) == full[8:] and len(sampler) == len(full) - 8


def test_too_few_patches_for_a_batch(folder):
    data = TrainDataset([str(folder)], 2, 16, patches_per_image=1)
    with pytest.raises(DatasetError, match="fewer than one batch"):
        make_train_loader(data, 8, 0, CPU)


# ---------------------------------------------------------------------------------------------------------------------
# Bad folders and images
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_training_folders(tmp_path, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty: no images found"):
        TrainDataset([str(empty)], 2, 16)
    with pytest.raises(DatasetError, match="no such folder"):
        TrainDataset([str(tmp_path / "nope")], 2, 16)
    with pytest.raises(DatasetError, match="no training image .* at least 200x200"):
        TrainDataset([str(folder)], 2, 200)
    data = TrainDataset([str(folder)], 2, 100)  # astronaut (97x123) and camera (90x103) are too small
    assert len(data.items) == 1 and len(data.skipped) == 2
    good = (folder / "coffee.png").read_bytes()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + good[:200])
    data = TrainDataset([str(folder)], 2, 16)  # a file that cannot be read is left out, named; the others train
    assert len(data.items) == 3 and len(data.refused) == 1 and "broken.jpg" in data.refused[0]


def test_training_finds_every_image_format_inference_reads(tmp_path):
    root = tmp_path / "netpbm"
    root.mkdir()
    coffee = dataset_images()["coffee"]
    write_image(root / "a.ppm", coffee)
    write_image(root / "b.pgm", coffee[:, :, 0])
    write_image(root / "c.pnm", coffee)
    (root / "notes.txt").write_text("not an image")
    assert [p.name for p in dataset.list_images(root)] == ["a.ppm", "b.pgm", "c.pnm"]
    data = TrainDataset([str(root)], 2, 32)
    side = 32 + 2 * dataset.LR_CONTEXT * 2
    assert len(data.items) == 3 and data[0]["hr"].shape == (3, side, side)


# ---------------------------------------------------------------------------------------------------------------------
# Validation sets
# ---------------------------------------------------------------------------------------------------------------------


def _paired_set(root, scale: int = 2, names=("astronaut", "coffee")):
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / f"X{scale}").mkdir(parents=True)
    for name in names:
        hr = dataset_images()[name]
        write_image(root / "HR" / f"{name}.png", hr)
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png", make_lr(mod_crop(hr, scale), scale))
    return root


def test_validation_pairs_hr_and_lr_by_stem(tmp_path):
    root = _paired_set(tmp_path / "Set2")
    found = find_validation_set(root, 2)
    assert found.name == "Set2" and [im.name for im in found.images] == ["astronaut.png", "coffee.png"]
    assert all(im.lr_path.name == f"{im.hr_path.stem}x2.png" for im in found.images)
    lr, hr = found.load(found.images[0])
    assert hr.shape == (96, 122, 3) and lr.shape == (48, 61, 3)
    np.testing.assert_array_equal(lr, make_lr(hr, 2))
    assert find_validation_set(root / "HR", 2).name == "Set2"  # pointing at HR/ finds its LR too
    assert [s.name for s in find_validation_sets([str(root), str(root)], 2)] == ["Set2", "Set2_2"]


def test_validation_missing_or_wrong_lr(tmp_path):
    root = _paired_set(tmp_path / "Set2")
    (root / "LR_bicubic" / "X2" / "coffeex2.png").unlink()
    with pytest.raises(DatasetError, match="no LR image for coffee.png"):
        find_validation_set(root, 2)
    with pytest.raises(DatasetError, match=r"LR_bicubic/\{X2\} but no LR_bicubic/X4"):
        find_validation_set(root, 4)
    write_image(root / "LR_bicubic" / "X2" / "coffeex2.png", np.zeros((10, 10, 3), np.uint8))
    found = find_validation_set(root, 2)
    with pytest.raises(DatasetError, match="coffeex2.png: LR is 10x10, expected 55x50"):
        found.load(found.images[1])


def test_validation_hr_only_makes_the_protocol_lr(folder):
    found = find_validation_set(folder, 4)
    assert found.name == "images" and all(im.lr_path is None for im in found.images)
    lr, hr = found.load(found.images[1])  # camera: grey, replicated to RGB
    assert hr.shape == (88, 100, 3) and np.array_equal(lr, make_lr(hr, 4))


def test_info_json_is_what_the_dataset_reads(lmdbs):
    for path, scale in zip(lmdbs, (1, 2, 3)):
        info = json.loads((path / "info.json").read_text())
        assert info["scale"] == scale and info["kind"] == ("hr" if scale == 1 else "lr") and info["count"] == 3
