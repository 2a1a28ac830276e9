"""The first hour as a user, across the commands: a stop (Ctrl-C, SIGTERM) ends with one line and exit 130 / 143 and
leaves no temporary file; a killed run's temporary file is removed by the next run; one rule of exit codes; --outscale;
a format that cannot hold an image gets it as PNG; a run with nothing left to do answers before PyTorch loads; memory
budgets never propose a tile that is not worth its time; --help says each default once."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from srdensenet import folder_lock, imgproc, inference, memory, system_memory
from srdensenet.checkpoint import save_checkpoint
from srdensenet.cli import export_onnx, options
from srdensenet.cli import upscale as upscale_cli
from srdensenet.cli import validate as validate_cli
from srdensenet.image_files import read_image, read_image_with_alpha, write_image
from srdensenet.model import SRDenseNet

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def weights(tmp_path, tiny):
    save_checkpoint(tmp_path / "w.pth", tiny)
    return tmp_path / "w.pth"


def write_photos(folder: Path, count: int, size: int = 160) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    astronaut = skdata.astronaut()
    for i in range(count):
        write_image(folder / f"{i:02d}.png", astronaut[i * 8:i * 8 + size, i * 4:i * 4 + size])
    return folder


def hidden(folder: Path) -> list[str]:
    """Hidden files anywhere under folder: temporary files, folders, locks."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def start(repo_root, *args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=repo_root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})}, **popen)


def wait_for_line(process: subprocess.Popen, pattern: str) -> str:
    """The first stdout line matching pattern: the command has started its work."""
    for line in process.stdout:
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r}; stderr: {process.stderr.read()}")


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out, err


def last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines and "Traceback" not in stderr, stderr
    return lines[-1]


# ---- Ctrl-C and SIGTERM: one line, exit 130 / 143, nothing temporary left -------------------------------------------


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_inference_stopped_says_what_is_done_and_rerunning_continues(repo_root, tmp_path, weights, sig, code, name):
    photos, out = write_photos(tmp_path / "in", 30), tmp_path / "out"
    command = ["inference.py", "--weights", weights, "-i", photos, "-o", out, "--precision", "fp32"]
    process = start(repo_root, *command)
    wait_for_line(process, r"00\.png -> ")
    process.send_signal(sig)
    returncode, _, err = finish(process)
    assert returncode == code
    line = last_line(err)
    match = re.fullmatch(rf"stopped by {name}: (\d+) of 30 images done, (\d+) left; rerun the same command to do "
                         r"the rest \(finished images are skipped\)", line)
    assert match, line
    written = sorted(p.name for p in out.iterdir())
    assert int(match[1]) == len(written) and int(match[1]) + int(match[2]) == 30
    assert hidden(out) == []  # the image in progress left no temporary file
    rerun = subprocess.run([sys.executable, *map(str, command)], cwd=repo_root, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert last_line(rerun.stderr) == (f"{30 - len(written)} written, {len(written)} skipped (already there), "
                                       f"0 failed, of 30 images")
    assert len(list(out.iterdir())) == 30 and hidden(out) == []


def test_other_torchrun_ranks_stay_quiet_when_stopped(repo_root, tmp_path, weights):
    # RANK=1 without torchrun's other variables: one process that speaks as a non-zero rank does
    photos, out = write_photos(tmp_path / "in", 30), tmp_path / "out"
    process = start(repo_root, "inference.py", "--weights", weights, "-i", photos, "-o", out, "--precision", "fp32",
                    env={"RANK": "1"})
    wait_for_line(process, r"\.png -> ")
    process.send_signal(signal.SIGTERM)
    returncode, _, err = finish(process)
    assert returncode == 143 and "stopped" not in err and "Traceback" not in err
    assert hidden(out) == []


def test_validate_stopped_says_nothing_was_written(repo_root, tmp_path, weights):
    photos = write_photos(tmp_path / "Photos", 30, size=200)
    process = start(repo_root, "validate.py", "--weights", weights, "--valid-dirs", photos, "--device", "cpu",
                    "--json", tmp_path / "r.json", "--save-images", tmp_path / "sr")
    wait_for_line(process, r"^\s+03\.png ")  # its row comes before its image: three are saved
    process.send_signal(signal.SIGTERM)
    returncode, _, err = finish(process)
    assert returncode == 143
    saved = len(list((tmp_path / "sr").rglob("*.png")))
    assert 3 <= saved < 30
    assert last_line(err) == (f"validate.py: stopped by SIGTERM before the end: the rows above are the images scored "
                              f"so far; --json, the summary and the --report page are written only at the end, so "
                              f"none was; rerun the same command with --force to score again (it replaces the {saved} "
                              f"images already in {tmp_path / 'sr'})")
    assert not (tmp_path / "r.json").exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_prepare_dataset_stopped_discards_the_output_in_progress(repo_root, tmp_path, sig, code, name):
    photos, out = write_photos(tmp_path / "in", 12, size=400), tmp_path / "sub"
    # Ctrl-C at a terminal reaches the whole process group, the worker processes too: they must stay quiet.
    process = start(repo_root, "prepare_dataset.py", "subimages", "--input", photos, "--output", out, "--size", 16,
                    "--step", 8, "--workers", 2, start_new_session=True)
    deadline = time.time() + 120
    while not any(tmp_path.glob(".sub.tmp-*/*.png")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)  # the first sub-images are in the hidden folder: the work has started
    os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)
    returncode, _, err = finish(process)
    assert returncode == code
    assert last_line(err) == (f"prepare_dataset.py: stopped by {name}: 0 of 1 outputs built; the one in progress was "
                              f"discarded, nothing half-built is left; rerun the same command to build it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, temporary folder or lock file


def test_a_killed_runs_temporary_file_is_removed_by_the_next_run(repo_root, tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    writer = ("import sys, time\n"
              "def write(handle):\n    handle.write(b'half')\n    handle.flush()\n    print('writing', flush=True)\n"
              "    time.sleep(600)\n"
              "from srdensenet.fileio import atomic_write\natomic_write(sys.argv[1], write)\n")
    killed = start(repo_root, "-c", writer, out / "00.png")
    alive = start(repo_root, "-c", writer, out / "other.png")
    try:
        wait_for_line(killed, "writing")
        wait_for_line(alive, "writing")
        killed.kill()  # SIGKILL: no clean-up runs
        killed.wait()
        (out / ".notes.tmp").write_text("a user's hidden file")
        (out / "00.png.tmp").write_text("a user's file")
        leftover = [p.name for p in out.iterdir() if p.name.startswith(".00.png.")]
        assert len(leftover) == 1 and leftover[0].endswith(".tmp")
        result = subprocess.run([sys.executable, "inference.py", "--weights", str(weights), "-i",
                                 str(write_photos(tmp_path / "in", 1)), "-o", str(out), "--precision", "fp32"],
                                cwd=repo_root, capture_output=True, text=True, env=ENV, timeout=300)
        assert result.returncode == 0, result.stderr
        names = sorted(p.name for p in out.iterdir())
        assert leftover[0] not in names and ".notes.tmp" in names and "00.png.tmp" in names
        assert len([n for n in names if n.startswith(".other.png.")]) == 1  # a live writer's file stays
    finally:
        for process in (killed, alive):
            process.kill()
            process.communicate()


# ---- one rule of exit codes ----------------------------------------------------------------------------------------


def hide_packages(monkeypatch, *names):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else find_spec(name, *a))


def test_exit_codes_follow_one_rule(tmp_path, weights, photo, capsys, monkeypatch):
    write_image(tmp_path / "a.png", photo)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    base = ["--precision", "fp32", "-o", str(tmp_path / "out")]
    cases = [  # 2: the command line is wrong or names what does not exist; 1: the work failed
        (["--weights", str(weights), "-i", str(tmp_path / "nope.png"), *base], 2, "nope.png: no such file"),
        (["--weights", str(tmp_path / "nope.pth"), "-i", str(tmp_path / "a.png"), *base], 2,
         "--weights " + str(tmp_path / "nope.pth") + ": no such file or folder"),
        (["--weights", str(weights), "-i", str(tmp_path / "a.png"), *base, "--outscale", "3"], 2,
         "--outscale 3 is above the model's scale (x2)"),
        (["--weights", str(weights), "-i", str(tmp_path / "a.png"), *base, "--outscale", "0.5"], 2,
         "--outscale must be from 1"),
        (["--weights", str(weights), "-i", str(tmp_path / "empty"), *base], 1, "empty: folder holds no images"),
        (["--weights", str(tmp_path / "bad.pth"), "-i", str(tmp_path / "a.png"), *base], 1, "bad.pth"),
    ]
    for argv, code, message in cases:
        assert upscale_cli.main(argv) == code, argv
        assert message in last_line(capsys.readouterr().err), argv
    hide_packages(monkeypatch, "onnxruntime")
    assert upscale_cli.main(["--weights", str(weights), "-i", str(tmp_path / "a.png"), *base, "--backend",
                             "onnxruntime", "--device", "cpu"]) == 1
    assert last_line(capsys.readouterr().err) == ("error: --backend onnxruntime needs the optional package "
                                                  "onnxruntime: pip install onnx onnxruntime")
    assert export_onnx.main(["--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "m.onnx")]) == 2
    hide_packages(monkeypatch, "onnx", "onnxruntime")
    assert export_onnx.main(["--weights", str(weights), "--output", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "pip install onnx" in last_line(err) and "requirements-dev" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_an_output_has_one_writer(tmp_path, weights, photo, capsys):
    """A second inference.py into a folder (or an image file) another process writes is refused with exit 2, naming
    that process, before anything is read or written; once the owner is gone, the run goes on and leaves no lock."""
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", photo)
    folder, single = tmp_path / "out", tmp_path / "one.png"
    for source, output, lock in ((tmp_path / "in", folder, folder / upscale_cli.OUTPUT_LOCK),
                                 (tmp_path / "in" / "a.png", single, None)):
        argv = ["--weights", str(weights), "--precision", "fp32", str(source), "-o", str(output)]
        with folder_lock.hold(output, lock=lock):  # another open file description: flock refuses it as for a PID
            assert upscale_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"error: {output} is in use by PID {os.getpid()} on " in err and "or choose another -o" in err
        assert not (output / "a.png" if output == folder else output).exists()
        assert upscale_cli.main(argv) == 0
        capsys.readouterr()
        assert hidden(tmp_path) == []  # the lock file went with its owner


def test_exit_codes_are_tabled_once_for_every_command(repo_root):
    text = (repo_root / "docs" / "errors.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    assert [row.split("|")[1].strip() for row in section.splitlines() if re.match(r"\| \d+ \|", row)] == [
        "0", "1", "2", "130", "143"]
    for command in ("inference.py", "validate.py", "prepare_dataset.py", "export_onnx.py", "train.py"):
        assert f"`{command}`" in section, command


# ---- answering fast: nothing to do, no PyTorch -----------------------------------------------------------------------


def test_a_run_with_every_output_there_answers_before_pytorch_loads(repo_root, tmp_path, weights):
    photos, out = write_photos(tmp_path / "in", 2, size=40), tmp_path / "out"
    argv = ["-i", str(photos), "-o", str(out), "--precision", "fp32"]
    assert upscale_cli.main(["--weights", str(weights), *argv]) == 0
    (tmp_path / "damaged.pth").write_bytes(b"not read: the outputs are there")
    code = ("import sys\nfrom srdensenet.cli import upscale\ncode = upscale.main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was loaded'\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "--weights", str(tmp_path / "damaged.pth"), *argv],
                            cwd=repo_root, capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"{photos / n}: {out / n} exists, skipped (--force replaces it)"
                                          for n in ("00.png", "01.png")] + [
        "0 written, 2 skipped (already there), 0 failed, of 2 images"]


# ---- a format that cannot hold the image: PNG instead ----------------------------------------------------------------


def test_formats_that_cannot_hold_an_image_get_png(tmp_path, weights, photo, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a.png", np.dstack([photo, photo[:, :, 0]]))  # alpha
    write_image(folder / "b.png", photo.astype(np.uint16) * 257)  # 16-bit
    write_image(folder / "c.png", photo)
    base = ["--weights", str(weights), "--precision", "fp32", "--backend", "torch"]
    out = tmp_path / "out"
    assert upscale_cli.main([*base, "-i", str(folder), "-o", str(out), "--format", "jpg"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {folder / 'a.png'}: JPEG holds no alpha; written as {out / 'a.png'}" in err.splitlines()
    assert f"warning: {folder / 'b.png'}: JPEG holds no 16-bit pixels; written as {out / 'b.png'}" in err.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.jpg"]
    rgba, alpha = read_image_with_alpha(out / "a.png")
    assert alpha is not None and rgba.shape == (74, 58, 3) and read_image(out / "b.png").dtype == np.uint16
    np.testing.assert_array_equal(read_image(out / "b.png"),
                                  inference.upscale(load(weights), photo.astype(np.uint16) * 257, precision="fp32"))
    # Rerun: the PNGs are this job's results, skipped like any other
    assert upscale_cli.main([*base, "-i", str(folder), "-o", str(out), "--format", "jpg"]) == 0
    err = capsys.readouterr().err
    assert f"{folder / 'a.png'}: {out / 'a.png'} exists (JPEG holds no alpha), skipped (--force replaces it)" in err
    assert "0 written, 3 skipped" in err
    # WebP holds alpha but not 16 bits; a PNG of another run (c.png, an RGB image) is not taken for c's result
    webp = tmp_path / "webp"
    webp.mkdir()
    write_image(webp / "c.png", photo)
    assert upscale_cli.main([*base, "-i", str(folder), "-o", str(webp), "--format", "webp"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {folder / 'b.png'}: WebP holds no 16-bit pixels; written as {webp / 'b.png'}" in err
    assert sorted(p.name for p in webp.iterdir()) == ["a.webp", "b.png", "c.png", "c.webp"]
    # Never over the input: -o a.jpg beside an a.png with alpha
    before = (folder / "a.png").read_bytes()
    assert upscale_cli.main([*base, "-i", str(folder / "a.png"), "-o", str(folder / "a.jpg")]) == 1
    assert "the PNG it would be written as instead is the input itself" in capsys.readouterr().err
    assert (folder / "a.png").read_bytes() == before and not (folder / "a.jpg").exists()


def load(weights):
    return inference.load_model(weights, device="cpu")


def whole_image_formula(model, image):
    """upscale's output as defined before --outscale: SR Y + MATLAB-bicubic Cb/Cr (alpha: bicubic), one quantisation;
    grey g as Y = 16 + 219 g."""
    if image.ndim == 2:
        y = ((16.0 + 219.0 * imgproc.to_float01(image)) / 255.0).astype(np.float32)
        sr_y = inference.predict_y(model, y, precision="fp32").astype(np.float64)
        return imgproc.quantize_uint8((sr_y * 255.0 - 16.0) / 219.0)
    ycc = imgproc.rgb_to_ycbcr(image[:, :, :3])
    sr_y = inference.predict_y(model, (ycc[:, :, 0] / 255.0).astype(np.float32), precision="fp32")
    rgb = imgproc.ycbcr_to_rgb(np.concatenate([sr_y.astype(np.float64)[:, :, None] * 255.0,
                                               imgproc.imresize(ycc[:, :, 1:], scale=2.0)], axis=2))
    rgb = imgproc.quantize_uint8(rgb) if image.dtype == np.uint8 else \
        np.floor(np.clip(rgb, 0, 1) * 65535.0 + 0.5).astype(np.uint16)
    return np.dstack([rgb, imgproc.imresize(image[:, :, 3], scale=2.0)]) if image.shape[2] == 4 else rgb


def test_fp32_outputs_are_the_same_pixels_as_before(tmp_path, weights, photo):
    images = {"rgb.png": photo, "alpha.png": np.dstack([photo, photo[:, :, 0]]), "gray.png": photo[:, :, 1],
              "deep.png": photo.astype(np.uint16) * 257}
    (tmp_path / "in").mkdir()
    for name, image in images.items():
        write_image(tmp_path / "in" / name, image)
    assert upscale_cli.main(["--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                             "--precision", "fp32"]) == 0
    model = load(weights)
    for name, image in images.items():
        rgb, alpha = read_image_with_alpha(tmp_path / "out" / name)
        decoded = rgb[:, :, 0] if image.ndim == 2 else rgb if alpha is None else np.dstack([rgb, alpha])
        np.testing.assert_array_equal(decoded, whole_image_formula(model, image), err_msg=name)


# ---- --outscale ------------------------------------------------------------------------------------------------------


def outscale_formula(model, image, target):
    """The whole-image formula: SR Y resized to target (MATLAB bicubic, antialiased), Cb/Cr and alpha interpolated
    from the input straight to target, quantised once."""
    ycc = imgproc.rgb_to_ycbcr(image[:, :, :3])
    sr_y = inference.predict_y(model, (ycc[:, :, 0] / 255.0).astype(np.float32), precision="fp32")
    y = imgproc.imresize(sr_y, output_shape=target)[:, :, None] * 255.0
    rgb = imgproc.ycbcr_to_rgb(np.concatenate([y, imgproc.imresize(ycc[:, :, 1:], output_shape=target)], axis=2))
    if image.dtype == np.uint8:
        rgb = imgproc.quantize_uint8(rgb)
    else:
        rgb = np.floor(np.clip(rgb, 0, 1) * 65535.0 + 0.5).astype(np.uint16)
    if image.shape[2] == 4:
        rgb = np.dstack([rgb, imgproc.imresize(image[:, :, 3], output_shape=target)])
    return rgb


@pytest.mark.parametrize("kind", ["rgb", "rgba16"])
def test_outscale_resizes_the_result_with_matlab_bicubic(tiny, photo, monkeypatch, kind):
    image = photo if kind == "rgb" else np.dstack([photo, photo[:, :, 0]]).astype(np.uint16) * 257
    monkeypatch.setattr(memory, "STRIP_PIXELS", 100)  # several strips: the same bits as the whole image
    out = inference.upscale(tiny, image, precision="fp32", outscale=1.5)
    assert out.shape == (56, 44, image.shape[2]) and out.dtype == image.dtype  # 37x29 x 1.5 = 55.5x43.5, rounded
    np.testing.assert_array_equal(out, outscale_formula(tiny, image, (56, 44)))
    assert inference.output_size(tiny, (37, 29), 1.5) == (56, 44)


def test_outscale_at_the_models_scale_changes_nothing(tiny, photo):
    whole = inference.upscale(tiny, photo, precision="fp32")
    np.testing.assert_array_equal(inference.upscale(tiny, photo, precision="fp32", outscale=2), whole)
    gray = inference.upscale(tiny, photo[:, :, 1], precision="fp32", outscale=1)
    assert gray.shape == (37, 29) and gray.dtype == np.uint8
    for bad in (0.5, 2.5, float("nan"), True):
        with pytest.raises(ValueError, match="outscale must be a number from 1 to the model's scale 2"):
            inference.upscale(tiny, photo, outscale=bad)


def test_cli_outscale(tmp_path, weights, photo, capsys):
    write_image(tmp_path / "a.png", photo)
    assert upscale_cli.main(["--weights", str(weights), "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"),
                             "--precision", "fp32", "--outscale", "1.5"]) == 0
    captured = capsys.readouterr()
    assert "output x1.5 (x2, resized with MATLAB bicubic)" in captured.err and "(29x37 -> 44x56, " in captured.out
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), outscale_formula(load(weights), photo, (56, 44)))


# ---- memory budgets that make sense --------------------------------------------------------------------------------


def test_the_planner_proposes_no_tile_that_costs_more_time_than_it_saves_memory():
    # The paper model's architecture (estimates only: nothing runs). A 200x150 photo under 300 MB: a tile of 34 px
    # saved 11% of the estimate (574 -> 514 MiB) for ~6x the work, so no tile is proposed, only what would be met.
    model = SRDenseNet(4)
    assert memory.work_factor(model, (150, 200), None) == 1.0
    assert memory.work_factor(model, (150, 200), 34) > 5 > memory.work_factor(model, (150, 200), 100) > 1
    with pytest.raises(memory.InsufficientMemoryError) as caught:
        memory.plan_memory(model, (150, 200), precision="fp32-cl", channels=3, max_memory=300 * 2**20)
    error = caught.value
    assert error.smaller is None and error.tile is None
    assert "untiled; no tile saves enough memory on an image this small to be worth its time" in str(error)
    assert re.fullmatch(r"try --max-memory \d+MB if that much memory is free, or a smaller image",
                        options.memory_hint(error))
    # A 3000x2000 photo: a tile cuts the memory many times for little time; the least useful one is proposed
    for budget in (2**30, 4 * 2**30, 8 * 2**30):
        try:
            plan = memory.plan_memory(model, (1500, 2000), precision="fp32-cl", channels=3, max_memory=budget)
            tile, needed = plan.tile, plan.needed
        except memory.InsufficientMemoryError as error:
            assert error.needed > budget and error.smaller[1] > budget
            tile, needed = error.smaller
            assert f"tiles of {tile}) or " in options.memory_hint(error)
        untiled = memory.estimate_memory(model, (1500, 2000), precision="fp32-cl", channels=3)
        assert tile >= memory.useful_tile(model) == 134 and untiled >= needed * memory.work_factor(model, (1500, 2000),
                                                                                                    tile)


def test_a_tile_below_the_useful_size_is_warned_about_once(tmp_path, weights, photo, capsys):
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_image(tmp_path / "in" / f"{i}.png", photo)
    assert upscale_cli.main(["--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                             "--precision", "fp32", "--tile", "8"]) == 0
    expected = ("warning: --tile 8 is below 14 LR px, twice this model's receptive field (7 px): every tile "
                "recomputes a 7-px margin on each side, so most of the work is repeated and little memory is saved; "
                "--tile auto tiles only an image that does not fit")
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")] == [expected]
    assert validate_cli.main(["--weights", str(weights), "--valid-dirs", str(tmp_path / "in"), "--device", "cpu",
                              "--tile", "8"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")] == [expected]


def test_max_memory_says_what_it_counts():
    text = " ".join(upscale_cli.build_parser().format_help().split())
    assert "--max-memory SIZE what running the model on one image may add to the process's memory, on top of " \
           "PyTorch and the loaded model" in text
    budget = system_memory.memory_budget(torch.device("cpu"), 300 * 2**20)
    assert budget.budget == 300 * 2**20  # the estimate it is compared with counts no loaded model either


# ---- --help says each default once ----------------------------------------------------------------------------------


def test_help_says_each_default_once_and_what_it_is():
    text = " ".join(upscale_cli.build_parser("inference.py").format_help().split())
    assert "(default: None)" not in text and "(default: [])" not in text
    quality = text.split("--quality N")[-1].split(" --", 1)[0]
    assert quality.count("default") == 1 and "JPEG 95, WebP lossless" in quality
    assert "--outscale S" in text
    validate = " ".join(validate_cli.build_parser("validate.py").format_help().split())
    precision = validate.split("--precision STR")[-1].split(" --", 1)[0].strip()
    assert precision.startswith("fp32 (default here") and "'auto'" not in precision
    report = validate.split("--report DIR")[-1].split(" --", 1)[0]
    assert "self-contained" not in report and "folder" in report
