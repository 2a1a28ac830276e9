"""release_data.py, through prepare_dataset.py --preset release: the release data and the packed pool from a
photo pool, per-photo prescales, and a missing pool."""

import re

import numpy as np
import skimage.data

from srdensenet.cli.prepare_data import main
from srdensenet.dataset import prescale, read_lmdb_meta
from srdensenet.image_files import read_image, write_image


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fake_pool(root):
    images = root / "images"
    images.mkdir(parents=True)
    rows = {"a.jpg": (skimage.data.astronaut()[:500, :400], "train"),
            "b.png": (skimage.data.coffee()[:300, :300], "train"),
            "s.jpg": (skimage.data.coffee()[:100, :100], "train"),
            "v.jpg": (skimage.data.retina()[:1200, :1100], "valid")}
    lines = ["file\tpackage\tsplit\tsha256"]
    for name, (image, split) in rows.items():
        write_image(images / name, image)
        lines.append(f"{name}\tpkg\t{split}\t{name}-hash")
    (root / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_release_preset_from_the_photo_pool(tmp_path, capsys):
    pool = _fake_pool(tmp_path / "pool")
    train, valid = pool / "train", pool / "valid"
    args = ["--preset", "release", "--pool", pool, "--train-dirs", train, "--valid-dirs", valid, "--lmdb",
            "--workers", 2]
    code, stdout, stderr = _run(capsys, *args, "--jpeg-prescale", 2)
    assert code == 0, stderr
    # a.jpg 400x500 -> 200x250 -> rows [0, 58] x cols [0, 8]; b.png 300x300 -> 150x150: too small; s.jpg too small
    assert sorted(p.name for p in train.glob("*.png")) == ["a_s001.png", "a_s002.png", "a_s003.png", "a_s004.png"]
    assert "skipped 2 image(s) smaller than 192x192: b.png (150x150), s.jpg (50x50)" in stdout
    small = prescale(read_image(pool / "images" / "a.jpg"), 2.0)
    np.testing.assert_array_equal(read_image(train / "a_s004.png"), small[58:250, 8:200])
    v = read_image(valid / "v.png")
    assert v.shape == (512, 512, 3)  # 1100x1200 -> 550x600 -> center 512x512
    np.testing.assert_array_equal(v, prescale(read_image(pool / "images" / "v.jpg"), 2.0)[44:556, 19:531])
    assert [e.key for e in read_lmdb_meta(pool / "train.lmdb")[0]] == [f"a_s00{k}" for k in range(1, 5)]
    assert "--jpeg-prescale 2 would shrink" in stdout  # training would downscale the sub-images a second time
    code, stdout, _ = _run(capsys, *args, "--jpeg-prescale", 1)
    assert code == 0 and stdout.count("up to date") == 3 and "would shrink" not in stdout


def test_release_preset_follows_each_photosprescale(tmp_path, capsys):
    pool = _fake_pool(tmp_path / "pool")
    manifest = pool / "MANIFEST.tsv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + "\tprescale"] + [line + ("\t1" if line.startswith("b.png") else "\t2")
                                                              for line in lines[1:]]) + "\n")
    train = pool / "train"
    code, stdout, stderr = _run(capsys, "--preset", "release", "--pool", pool, "--train-dirs", train,
                                "--valid-dirs", pool / "valid", "--workers", 1)
    assert code == 0, stderr
    # b.png 300x300 at prescale 1 now gives sub-images ([0, 108] x [0, 108]); a.jpg as before.
    assert sorted(p.name for p in train.glob("b_*.png")) == [f"b_s00{k}.png" for k in range(1, 5)]
    np.testing.assert_array_equal(read_image(train / "b_s004.png"), read_image(pool / "images" / "b.png")[108:, 108:])
    assert "photos downscaled by 1-2" in stdout


def test_release_pack_is_small_lossy_and_read_by_training(tmp_path, capsys):
    pool = _fake_pool(tmp_path / "pool")
    pack = tmp_path / "pack"
    args = ["--preset", "release", "--pool", pool, "--pack", "--pack-dir", pack, "--workers", 2]
    code, stdout, stderr = _run(capsys, *args)
    assert code == 0, stderr
    # a.jpg 400x500 -> 200x250: tiles at rows [0, 58] x cols [0, 8] (the last flush with the border); the others small
    tiles = sorted(p.name for p in (pack / "train").glob("*.webp"))
    assert tiles == ["a_t001.webp", "a_t002.webp", "a_t003.webp", "a_t004.webp"]
    small = prescale(read_image(pool / "images" / "a.jpg"), 2.0)
    tile = read_image(pack / "train" / "a_t004.webp")
    assert tile.shape == (192, 192, 3)
    rgb_psnr = 10 * np.log10(255 ** 2 / np.mean((tile.astype(float) - small[58:250, 8:200]) ** 2))
    assert 30 < rgb_psnr < 99  # lossy; RGB carries WebP's chroma subsampling, Y (below) does not
    match = re.search(r"Y-PSNR (\d+\.\d+) dB against the lossless tiles", stdout)
    assert match and float(match[1]) > 40
    assert sorted(p.name for p in (pack / "valid").glob("*.png")) == ["v.png"]
    np.testing.assert_array_equal(read_image(pack / "valid" / "v.png"),
                                  prescale(read_image(pool / "images" / "v.jpg"), 2.0)[44:556, 19:531])
    assert "train with: python train.py --preset release --train-dirs" in stdout
    from srdensenet.dataset import TrainDataset
    dataset = TrainDataset([str(pack / "train")], scale=4, hr_patch_size=100, patches_per_image=2)
    assert len(dataset.items) == 4 and dataset[7]["hr"].shape == (3, 132, 132)
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and stdout.count("up to date") == 2


def test_release_preset_without_the_pool(tmp_path, capsys):
    code, _, stderr = _run(capsys, "--preset", "release", "--pool", tmp_path / "none")
    # A path that does not exist is a usage error (2), with the command that makes it.
    assert code == 2 and "fetch the photo pool first: python scripts/fetch_photo_pool.py" in stderr
    pool = _fake_pool(tmp_path / "pool")
    (pool / "images" / "v.jpg").unlink()
    code, _, stderr = _run(capsys, "--preset", "release", "--pool", pool, "--train-dirs", pool / "t",
                           "--valid-dirs", pool / "v")
    assert code == 1 and "1 of the 4 photos in MANIFEST.tsv are missing (v.jpg)" in stderr
