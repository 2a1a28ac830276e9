"""validate.py as users run it: bicubic tables at x2/x3/x4, the JSON schema, paired folders, checkpoints, errors,
and --self-check. The command line is run in a subprocess where the exit code and stderr matter; the error paths
that only need the exit code and message call main() in-process (a subprocess costs seconds of torch import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from srdensenet import image_files, imgproc, metrics, precision_probe
from srdensenet.checkpoint import model_from_checkpoint, save_checkpoint
from srdensenet.cli import validate
from srdensenet.dataset import find_validation_sets
from srdensenet.evaluation import evaluate
from srdensenet.model import SRDenseNet

ROOT = Path(__file__).resolve().parent.parent
# Real photos, cropped (fast) to sizes that are not multiples of 3 or 4; camera is grey.
IMAGES = {
    "astronaut.png": lambda: skdata.astronaut()[40:161, 150:280],
    "camera.png": lambda: skdata.camera()[60:170, 200:303],
    "chelsea.png": lambda: skdata.chelsea()[30:145, 110:230],
}
SCORES = {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "validate.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = validate.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sets") / "Photos"
    folder.mkdir()
    for name, make in IMAGES.items():
        image_files.write_image(folder / name, make())
    return folder


@pytest.fixture(scope="module")
def checkpoint_x2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_x2.pth"
    save_checkpoint(path, SRDenseNet(upscale_factor=2, num_blocks=2, layers_per_block=2, growth_rate=4,
                                     num_features=8, bottleneck_features=8))
    return path


def check_schema(report: dict, scale: int, weights: str, names: dict[str, set[str]]) -> None:
    assert set(report) == {"upscale_factor", "weights", "protocol", "meta", "datasets"}
    assert report["upscale_factor"] == scale and report["weights"] == weights
    assert report["protocol"] == metrics.PROTOCOL
    assert {"versions", "git_commit", "device"} <= set(report["meta"])
    assert set(report["meta"]["versions"]) == {"python", "torch", "numpy", "opencv", "skimage"}
    assert isinstance(report["meta"]["git_commit"], str) and report["meta"]["device"] == "cpu"
    assert set(report["datasets"]) == set(names)
    for set_name, entry in report["datasets"].items():
        assert set(entry) == SCORES | {"images"}
        assert set(entry["images"]) == names[set_name]
        for scores in entry["images"].values():
            assert set(scores) == SCORES and all(isinstance(v, float) for v in scores.values())
        for key in SCORES:
            assert isinstance(entry[key], float)
            assert entry[key] == pytest.approx(np.mean([s[key] for s in entry["images"].values()]), abs=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_table_and_json(photos, tmp_path, scale, capsys):
    # x3 with the paper preset: its 100-pixel training patch must not make validation reject x3.
    out = tmp_path / "results" / f"bicubic_x{scale}.json"
    argv = ["--preset", "paper", "--weights", "bicubic", "--upscale-factor", str(scale), "--valid-dirs", str(photos),
            "--device", "cpu", "--json", str(out)]
    if scale == 3:  # one real command line; the other scales in-process (same code, no torch import per run)
        result = cli(*argv)
        assert result.returncode == 0, result.stderr
        stdout = result.stdout
    else:
        code, stdout, err = run_main(argv, capsys)
        assert code == 0, err
    report = json.loads(out.read_text())
    check_schema(report, scale, "bicubic", {"Photos": set(IMAGES)})
    for name, scores in report["datasets"]["Photos"]["images"].items():
        hr = imgproc.mod_crop(image_files.read_image(photos / name), scale)
        psnr, ssim = metrics.score_image(imgproc.bicubic_upscale(imgproc.make_lr(hr, scale), scale), hr, scale)
        assert scores["bicubic_psnr"] == pytest.approx(psnr, abs=1e-9)
        assert scores["bicubic_ssim"] == pytest.approx(ssim, abs=1e-9)
        assert scores["psnr"] == scores["bicubic_psnr"]
        assert name in stdout
    mean = report["datasets"]["Photos"]["bicubic_psnr"]
    assert f"{mean:.3f}" in stdout and "summary" in stdout
    assert "auto_precision" not in report["meta"]  # fp32, the protocol: nothing was decided
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_auto_precision_typed_records_what_the_cpu_decided(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, "1")
    out = tmp_path / "auto.json"
    code, _, err = run_main(["--weights", "bicubic", "--upscale-factor", "2", "--valid-dirs", str(photos), "--device",
                             "cpu", "--precision", "auto", "--json", str(out)], capsys)
    assert code == 0, err
    meta = json.loads(out.read_text())["meta"]
    assert meta["precision"] == "bf16"
    assert meta["auto_precision"] == {"decision": "bf16", "fp32_over_bf16": None, "source": "SRDENSENET_FAST_BF16",
                                      "reason": "SRDENSENET_FAST_BF16=1"}


def test_paired_layout_is_paired_by_stem(photos, tmp_path, capsys):
    """HR/ + LR_bicubic/X2/ with '<stem>_x2.png' names, written in reverse order: same scores as the HR-only
    folder (whose LR is made by the protocol), so every LR met its own HR."""
    root = tmp_path / "Paired"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    for name in reversed(sorted(IMAGES)):
        hr = imgproc.mod_crop(image_files.read_image(photos / name), 2)
        image_files.write_image(root / "LR_bicubic" / "X2" / f"{Path(name).stem}_x2.png", imgproc.make_lr(hr, 2))
    for name in sorted(IMAGES):
        image_files.write_image(root / "HR" / name, image_files.read_image(photos / name))
    out = tmp_path / "paired.json"
    code, _, err = run_main(["--weights", "bicubic", "--upscale-factor", "2", "--device", "cpu", "--valid-dirs",
                             str(root), str(root / "HR"), str(photos), "--json", str(out)], capsys)
    assert code == 0, err
    datasets = json.loads(out.read_text())["datasets"]
    assert list(datasets) == ["Paired", "Paired_2", "Photos"]  # HR/ is named after its parent, names made unique
    for name in IMAGES:
        expected = datasets["Photos"]["images"][name]
        assert datasets["Paired"]["images"][name] == pytest.approx(expected, abs=1e-12)
        assert datasets["Paired_2"]["images"][name] == pytest.approx(expected, abs=1e-12)


def test_checkpoint_round_trip(photos, checkpoint_x2, tmp_path):
    out, images = tmp_path / "tiny.json", tmp_path / "sr"
    result = cli("--weights", str(checkpoint_x2), "--valid-dirs", str(photos), "--device", "cpu",
                 "--json", str(out), "--save-images", str(images))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    check_schema(report, 2, str(checkpoint_x2), {"Photos": set(IMAGES)})  # scale taken from the checkpoint
    assert report["meta"]["precision"] == "fp32"
    expected = evaluate(model_from_checkpoint(checkpoint_x2), find_validation_sets([str(photos)], 2),
                        device="cpu").sets["Photos"]
    for name, scores in report["datasets"]["Photos"]["images"].items():
        assert scores == pytest.approx(expected["images"][name], abs=1e-6)
        saved = image_files.read_image(images / "Photos" / name)
        assert saved.shape == imgproc.mod_crop(image_files.read_image(photos / name), 2).shape
    assert "dPSNR" in result.stdout


def test_existing_results_are_replaced_only_with_force(photos, checkpoint_x2, tmp_path, capsys):
    out, images = tmp_path / "r.json", tmp_path / "sr"
    argv = ["--weights", str(checkpoint_x2), "--valid-dirs", str(photos), "--device", "cpu", "--json", str(out)]
    out.write_text("an earlier result")
    code, _, err = run_main(argv, capsys)
    assert code == 2 and str(out) in err and "--force" in err
    assert out.read_text() == "an earlier result"
    assert run_main([*argv, "--force"], capsys)[0] == 0
    assert json.loads(out.read_text())["upscale_factor"] == 2
    argv = ["--weights", str(checkpoint_x2), "--valid-dirs", str(photos), "--device", "cpu", "--save-images",
            str(images)]
    assert run_main(argv, capsys)[0] == 0
    saved = sorted(images.rglob("*.png"))
    before = [p.stat().st_mtime_ns for p in saved]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "already there" in err and [p.stat().st_mtime_ns for p in saved] == before
    assert run_main([*argv, "--force"], capsys)[0] == 0


def test_conflicting_scale_is_an_error(photos, checkpoint_x2, capsys):
    code, _, err = run_main(["--weights", str(checkpoint_x2), "--upscale-factor", "4", "--valid-dirs", str(photos),
                             "--device", "cpu"], capsys)
    assert code == 2
    assert "--upscale-factor 4" in err and "x2" in err and str(checkpoint_x2) in err
    code, _, err = run_main(["--weights", str(checkpoint_x2), "--upscale-factor", "2", "--valid-dirs", str(photos),
                             "--device", "cpu"], capsys)
    assert code == 0, err  # repeating the checkpoint's scale is fine


def test_self_check_passes():
    result = cli("--self-check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "self-check: PASS" in result.stdout
    for golden in ("27.43", "24.04", "22.10"):
        assert golden in result.stdout


def test_errors_name_the_file_and_exit_nonzero(photos, tmp_path, capsys):
    missing = tmp_path / "no_such_set"
    code, _, err = run_main(["--weights", "bicubic", "--valid-dirs", str(missing)], capsys)
    assert code == 2 and str(missing) in err and "no such folder" in err  # a path that does not exist

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main(["--weights", "bicubic", "--valid-dirs", str(empty)], capsys)
    assert code == 1 and "no images" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes((photos / "camera.png").read_bytes()[:300])
    code, _, err = run_main(["--weights", "bicubic", "--valid-dirs", str(broken)], capsys)
    assert code == 1 and "bad.png" in err

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_main(["--weights", str(junk), "--valid-dirs", str(photos)], capsys)
    assert code == 1 and str(junk) in err

    code, _, err = run_main(["--weights", str(tmp_path / "absent.pth"), "--valid-dirs", str(photos)], capsys)
    assert code == 2 and "absent.pth: no such file" in err

    code, _, err = run_main(["--valid-dirs", str(photos)], capsys)
    assert code == 2 and "--weights" in err

    code, _, err = run_main(["--weights", "bicubic", "--upscale-factor", "5", "--valid-dirs", str(photos)], capsys)
    assert code == 2 and "--upscale-factor" in err


def test_memory_options_and_a_budget_too_small(photos, checkpoint_x2, capsys):
    base = ["--weights", str(checkpoint_x2), "--valid-dirs", str(photos), "--device", "cpu"]
    code, _, err = run_main([*base, "--max-memory", "1MB"], capsys)  # tile "auto" by default
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert "Photos/astronaut.png (" in line and "LR px): needs about" in line and "1 MiB (max_memory)" in line
    assert "untiled" in line and "try --max-memory " in line  # what would be met, never a tile not worth its time
    code, _, err = run_main([*base, "--tile", "3"], capsys)
    assert code == 2 and "--tile must be auto, 0 (untiled) or at least 8" in err
    code, _, err = run_main([*base, "--tile", "16", "--max-memory", "4GB"], capsys)
    assert code == 2 and "--max-memory sets the budget of --tile auto" in err
    code, _, err = run_main([*base, "--max-memory", "lots"], capsys)
    assert code == 2 and "expected a size such as 4GB" in err
    code, out, _ = run_main([*base, "--tile", "0"], capsys)
    assert code == 0 and "Photos" in out
