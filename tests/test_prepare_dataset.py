"""prepare_dataset.py: sub-images (counts, coverage, names), LMDBs, the demo preset, bad inputs.

The command line is driven in-process through main() (exit code, stdout, stderr); one test runs the real script.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data

from srdensenet import data_builders, demo_data
from srdensenet.cli.prepare_data import main
from srdensenet.data_builders import crop_positions
from srdensenet.dataset import LmdbReader, prescale, read_lmdb_meta, to_uint8
from srdensenet.image_files import read_image, write_image
from srdensenet.imgproc import make_lr, mod_crop


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _no_leftovers(folder) -> bool:
    return not [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    write_image(root / "astronaut.png", skimage.data.astronaut()[:150, :170])
    write_image(root / "coffee.jpg", skimage.data.coffee()[:100, :140])
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Sub-images
# ---------------------------------------------------------------------------------------------------------------------


def test_crop_positions_follow_basicsr():
    assert crop_positions(10, 4, 3, 0) == [0, 3, 6]  # 6 + 4 == 10: nothing left over
    assert crop_positions(11, 4, 3, 0) == [0, 3, 6, 7]  # 1 pixel left: a last crop flush with the border
    assert crop_positions(11, 4, 3, 1) == [0, 3, 6]  # ... unless the remainder is within the threshold
    assert crop_positions(12, 4, 3, 1) == [0, 3, 6, 8]
    assert crop_positions(4, 4, 3, 0) == [0] and crop_positions(3, 4, 3, 0) == []


@pytest.mark.parametrize("threshold", [0, 10])
def test_subimages_counts_coverage_and_content(photos, tmp_path, capsys, threshold):
    out = tmp_path / "sub"
    size, step = 48, 40
    code, stdout, _ = _run(capsys, "subimages", "--input", photos, "--output", out, "--size", size, "--step", step,
                           "--threshold", threshold, "--workers", 2)
    assert code == 0 and _no_leftovers(tmp_path)
    expected_total = 0
    for source in sorted(photos.iterdir()):
        image = read_image(source)
        h, w = image.shape[:2]
        tops, lefts = crop_positions(h, size, step, threshold), crop_positions(w, size, step, threshold)
        names = sorted(p.name for p in out.glob(f"{source.stem}_s*.png"))
        assert names == [f"{source.stem}_s{k:03d}.png" for k in range(1, len(tops) * len(lefts) + 1)]
        covered = np.zeros((h, w), bool)
        for name, (top, left) in zip(names, [(t, left) for t in tops for left in lefts]):  # row-major numbering
            np.testing.assert_array_equal(read_image(out / name), image[top:top + size, left:left + size])
            covered[top:top + size, left:left + size] = True
        if threshold == 0:
            assert covered.all()
        else:  # at most `threshold` pixels are left uncovered, along the bottom and right borders only
            rows, cols = np.nonzero(~covered)
            assert (rows.size == 0 or rows.min() >= h - threshold or cols.min() >= w - threshold)
        expected_total += len(tops) * len(lefts)
    assert f"{expected_total} sub-images of 48x48 from 2 of 2 images" in stdout
    assert json.loads((out / "prepared.json").read_text())["subimages"] == expected_total


def test_subimages_prescale_uses_area_downscale(photos, tmp_path, capsys):
    out = tmp_path / "sub"
    assert _run(capsys, "subimages", "--input", photos, "--output", out, "--size", 32, "--step", 32,
                "--prescale", 2, "--workers", 1)[0] == 0
    small = prescale(read_image(photos / "astronaut.png"), 2.0)  # TrainDataset's jpeg_prescale, cv2.INTER_AREA
    assert small.shape[:2] == (75, 85)
    np.testing.assert_array_equal(read_image(out / "astronaut_s001.png"), small[:32, :32])
    np.testing.assert_array_equal(read_image(out / "astronaut_s006.png"), small[32:64, 53:85])  # 3 per row: 0 32 53


def test_subimages_of_unusual_images(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    coffee = skimage.data.coffee()[:60, :70]
    write_image(src / "deep.png", coffee.astype(np.uint16) * 257)  # 16-bit
    write_image(src / "grey.tif", skimage.data.camera()[:40, :50])  # grayscale
    write_image(src / "a.png", np.dstack([coffee, np.full(coffee.shape[:2], 9, np.uint8)]))  # RGBA
    write_image(src / "b.webp", np.dstack([coffee, np.zeros(coffee.shape[:2], np.uint8)]))  # RGBA
    write_image(src / "tiny.bmp", coffee[:20, :20])  # smaller than a sub-image
    out = tmp_path / "sub"
    code, stdout, stderr = _run(capsys, "subimages", "--input", src, "--output", out, "--size", 32, "--step", 32,
                                "--workers", 2)
    assert code == 0, stderr
    assert stdout.count("alpha channel dropped") == 1 and "a.png, b.webp" in stdout
    assert "16-bit images rounded to 8 bits (x / 257): deep.png" in stdout
    assert "skipped 1 image(s) smaller than 32x32: tiny.bmp (20x20)" in stdout
    assert "from 4 of 5 images" in stdout
    deep = read_image(out / "deep_s001.png")
    assert deep.dtype == np.uint8 and np.array_equal(deep, coffee[:32, :32])
    grey = read_image(out / "grey_s002.png")
    assert grey.shape == (32, 32, 3) and np.array_equal(grey[:, :, 0], skimage.data.camera()[:32, 18:50])
    assert read_image(out / "a_s001.png").shape == (32, 32, 3)
    assert not list(out.glob("tiny*"))


def test_corrupt_image_is_named_and_the_others_are_built(photos, tmp_path, capsys):
    good = (photos / "coffee.jpg").read_bytes()
    (photos / "broken.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    for i in range(4):  # more work queued behind the failure
        write_image(photos / f"extra{i}.png", skimage.data.astronaut()[:64, :64])
    out = tmp_path / "sub"
    code, stdout, stderr = _run(capsys, "subimages", "--input", photos, "--output", out, "--size", 32, "--step", 32,
                                "--workers", 2)
    assert code == 1
    assert stderr.count("broken.jpg: truncated JPEG") == 1 and "Traceback" not in stderr
    assert "1 of 7 images could not be read (named above)" in stderr and "from 6 of 7 images" in stdout
    assert len(list(out.glob("extra3_s*.png"))) == 4 and not list(out.glob("broken*")) and _no_leftovers(tmp_path)
    # LMDB building goes on the same way
    code, stdout, stderr = _run(capsys, "lmdb", "--input", photos, "--output", tmp_path / "x.lmdb", "--workers", 2)
    assert code == 1 and stderr.count("broken.jpg: truncated JPEG") == 1 and "Traceback" not in stderr
    assert "6 images from" in stdout and len(read_lmdb_meta(tmp_path / "x.lmdb")[0]) == 6
    assert _no_leftovers(tmp_path)


def test_empty_missing_and_unusable_inputs(tmp_path, capsys, photos):
    (tmp_path / "empty").mkdir()
    code, _, stderr = _run(capsys, "subimages", "--input", tmp_path / "empty", "--output", tmp_path / "o")
    assert code == 1 and "empty: no images found" in stderr
    code, _, stderr = _run(capsys, "lmdb", "--input", tmp_path / "nope", "--output", tmp_path / "o.lmdb")
    assert code == 2 and "--input" in stderr and "nope: no such folder" in stderr  # a path that does not exist
    code, _, stderr = _run(capsys, "subimages", "--input", photos, "--output", tmp_path / "o", "--size", 500)
    assert code == 1 and "no image is at least 500x500" in stderr and not (tmp_path / "o").exists()
    code, _, stderr = _run(capsys, "subimages", "--input", photos, "--output", tmp_path / "o", "--size", 32,
                           "--step", 40)
    assert code == 2 and "would leave gaps" in stderr  # the command line contradicts itself: nothing is read
    code, _, stderr = _run(capsys, "subimages", "--input", photos, "--output", photos / "sub")
    assert code == 2 and "must not contain each other" in stderr
    write_image(photos / "astronaut.jpg", skimage.data.astronaut()[:64, :64])
    code, _, stderr = _run(capsys, "subimages", "--input", photos, "--output", tmp_path / "o")
    assert code == 1 and "would both be named 'astronaut'" in stderr
    assert _no_leftovers(tmp_path)


def test_existing_output_needs_force(photos, tmp_path, capsys):
    out = tmp_path / "sub"
    args = ["subimages", "--input", photos, "--output", out, "--size", 64, "--step", 64, "--workers", 1]
    assert _run(capsys, *args)[0] == 0
    code, _, stderr = _run(capsys, *args)
    assert code == 2 and "already exists; pass --force" in stderr
    code, _, _ = _run(capsys, *args[:-4], "--size", 100, "--step", 100, "--force")
    assert code == 0 and sorted(p.name for p in out.glob("*.png")) == ["astronaut_s001.png", "astronaut_s002.png",
                                                                        "astronaut_s003.png", "astronaut_s004.png",
                                                                        "coffee_s001.png", "coffee_s002.png"]
    assert _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# LMDB
# ---------------------------------------------------------------------------------------------------------------------


def test_lmdb_with_lr_scales(photos, tmp_path, capsys):
    write_image(photos / "my photo ü.png", skimage.data.chelsea()[:50, :61])  # key must become a plain name
    out = tmp_path / "train.lmdb"
    code, stdout, stderr = _run(capsys, "lmdb", "--input", photos, "--output", out, "--lr-scales", 3, 2,
                                "--workers", 2)
    assert code == 0, stderr
    assert "3 images from" in stdout and "train_X2.lmdb" in stdout and "train_X3.lmdb" in stdout
    hr_entries, hr_info = read_lmdb_meta(out)
    keys = [e.key for e in hr_entries]
    assert keys == ["astronaut", "coffee", "my_photo__"]
    assert hr_info == {"kind": "hr", "scale": 1, "count": 3, "source": str(photos), "compression": 1}
    for s in (2, 3):
        entries, info = read_lmdb_meta(tmp_path / f"train_X{s}.lmdb")
        assert [e.key for e in entries] == keys and info["kind"] == "lr" and info["scale"] == s
        reader = LmdbReader(tmp_path / f"train_X{s}.lmdb")
        for entry, hr_entry in zip(entries, hr_entries):
            hr = LmdbReader(out).get(entry.key)
            assert hr.shape == hr_entry.shape
            expected = make_lr(np.ascontiguousarray(mod_crop(hr, s)), s)
            assert entry.shape == expected.shape
            np.testing.assert_array_equal(reader.get(entry.key), expected)
    assert (tmp_path / "train_X3.lmdb" / "meta_info.txt").read_text().splitlines()[0] == "astronaut.png (50,56,3) 1"
    assert _no_leftovers(tmp_path)


def test_lmdb_map_grows_instead_of_failing(photos, tmp_path):
    out = tmp_path / "small.lmdb"
    assert data_builders.build_lmdb(photos, out, workers=1, initial_map_size=16384) == 2
    np.testing.assert_array_equal(LmdbReader(out).get("coffee"), to_uint8(read_image(photos / "coffee.jpg")))


def test_lr_lmdb_path():
    assert str(data_builders.lr_lmdb_path("data/DIV2K_sub.lmdb", 4)) == "data/DIV2K_sub_X4.lmdb"


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------


def test_demo_preset_is_offline_idempotent_and_atomic(tmp_path, capsys):
    train, valid = tmp_path / "demo" / "train", tmp_path / "demo" / "valid"
    args = ["--preset", "demo", "--train-dirs", train, "--valid-dirs", valid]
    code, stdout, stderr = _run(capsys, *args)
    assert code == 0, stderr
    assert sorted(p.stem for p in valid.glob("*.png")) == ["camera", "chelsea", "coffee"]
    assert {p.stem for p in train.glob("*.png")} == set(demo_data.DEMO_TRAIN)
    assert "chelsea 451x300" in stdout and "camera 512x512 grey" in stdout
    np.testing.assert_array_equal(read_image(valid / "camera.png")[:, :, 1], skimage.data.camera())
    np.testing.assert_array_equal(read_image(train / "stereo_motorcycle.png"), skimage.data.stereo_motorcycle()[0])
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, stdout, _ = _run(capsys, *args)
    assert code == 0 and stdout.count("up to date") == 2
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert _no_leftovers(tmp_path / "demo")


def test_demo_preset_does_not_overwrite_foreign_folders(tmp_path, capsys):
    train, valid = tmp_path / "train", tmp_path / "valid"
    valid.mkdir()
    (valid / "mine.png").write_bytes(b"not ours")
    code, _, stderr = _run(capsys, "--preset", "demo", "--train-dirs", train, "--valid-dirs", valid)
    assert code == 2 and "was not made by prepare_dataset.py" in stderr
    assert (valid / "mine.png").read_bytes() == b"not ours" and not train.exists()  # checked before any work


def test_presets_without_a_recipe_point_at_the_tools(capsys):
    code, _, stderr = _run(capsys, "--preset", "paper")
    assert code == 2 and "prepare_dataset.py subimages" in stderr


def test_script_runs_from_the_command_line(repo_root, tmp_path):
    done = subprocess.run([sys.executable, "prepare_dataset.py", "subimages", "--input", str(tmp_path / "none"),
                           "--output", str(tmp_path / "out")], cwd=repo_root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "none: no such folder" in done.stderr and "Traceback" not in done.stderr


def test_bad_options_exit_2(capsys):
    for argv in (["subimages", "--input", "a", "--output", "b", "--size", "x"], ["--preset", "dmeo"],
                 ["--preset", "demo", "--bogus"], ["subimages", "--input", "a", "--output", "b", "--size", "0"],
                 ["lmdb", "--input", "a", "--output", "b", "--compression", "10"],
                 ["lmdb", "--input", "a", "--output", "b", "--lr-scales", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_lmdb_on_a_full_disk_is_one_line_and_leaves_nothing(photos, tmp_path, capsys, monkeypatch):
    import lmdb

    real_open = lmdb.open

    class FullDisk:
        """An LMDB whose writes fail as on a full disk."""

        def __init__(self, env):
            self.env = env

        def begin(self, write=False):
            raise lmdb.Error("mdb_txn_commit: Input/output error")

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(lmdb, "open", lambda *args, **kwargs: FullDisk(real_open(*args, **kwargs)))
    out = tmp_path / "x.lmdb"
    code, _, err = _run(capsys, "lmdb", "--input", photos, "--output", out, "--lr-scales", 2, "--workers", 1)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"prepare_dataset.py: error: {out}, {tmp_path / 'x_X2.lmdb'}: cannot write "
                                        f"(mdb_txn_commit: Input/output error); nothing was replaced (is the disk "
                                        f"full?)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary folder, no lock file
