"""evaluation.evaluate: the protocol end to end (bicubic and model paths), set means, samples, mode handling, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from srdensenet import evaluation, hardware, image_files, imgproc, metrics, tiling
from srdensenet.dataset import find_validation_sets
from srdensenet.evaluation import EvaluationError, Sample, colour_sr, evaluate, evaluate_predictor
from srdensenet.model import SRDenseNet

# Crops of real photos, sizes deliberately not multiples of 3 or 4 so mod-cropping is exercised; one is grey.
IMAGES = {
    "astronaut.png": lambda: skdata.astronaut()[64:131, 120:190],
    "camera.png": lambda: skdata.camera()[100:158, 90:153],
    "chelsea.png": lambda: skdata.chelsea()[40:101, 100:166],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    (root / "SetA").mkdir()
    (root / "SetB").mkdir()
    for index, (name, make) in enumerate(IMAGES.items()):
        image_files.write_image(root / ("SetA" if index < 2 else "SetB") / name, make())
    return root


def _sets(folders, scale):
    return find_validation_sets([str(folders / "SetA"), str(folders / "SetB")], scale)


def _direct_bicubic(path, scale):
    hr = imgproc.mod_crop(image_files.read_image(path), scale)
    return metrics.score_image(imgproc.bicubic_upscale(imgproc.make_lr(np.ascontiguousarray(hr), scale), scale), hr,
                               scale)


def bicubic_y(scale: int, shift: int = 0):
    """A predictor whose output is the MATLAB-bicubic upscale of its Y input (optionally shifted by one pixel)."""
    return lambda y: np.roll(imgproc.imresize(y, scale=float(scale)), shift, axis=-1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_only_matches_direct_metric_calls(folders, scale):
    evaluated = evaluate(None, _sets(folders, scale), device="cpu")
    result = evaluated.sets
    assert list(result) == ["SetA", "SetB"]
    for set_name, entry in result.items():
        assert set(entry) == {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images"}
        for name, scores in entry["images"].items():
            assert set(scores) == set(evaluation.SCORE_KEYS)
            psnr, ssim = _direct_bicubic(folders / set_name / name, scale)
            assert scores["bicubic_psnr"] == pytest.approx(psnr, abs=1e-12)
            assert scores["bicubic_ssim"] == pytest.approx(ssim, abs=1e-12)
            assert scores["psnr"] == scores["bicubic_psnr"] and scores["ssim"] == scores["bicubic_ssim"]
        for key in evaluation.SCORE_KEYS:
            assert isinstance(entry[key], float)
            assert entry[key] == pytest.approx(np.mean([s[key] for s in entry["images"].values()]), abs=1e-12)
    assert evaluated.samples == []


def test_tiny_model_scores_mode_and_direct_computation(folders, tiny_arch):
    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch).train()
    sets = _sets(folders, 2)
    result = evaluate(model, sets, device="cpu").sets
    assert model.training, "the model's previous mode must be restored"
    bicubic = evaluate(None, sets, device="cpu").sets
    for set_name, entry in result.items():
        for key in evaluation.SCORE_KEYS:
            assert math.isfinite(entry[key])
            assert entry[key] == pytest.approx(np.mean([s[key] for s in entry["images"].values()]), abs=1e-12)
        for name, scores in entry["images"].items():
            assert scores["bicubic_psnr"] == bicubic[set_name]["images"][name]["bicubic_psnr"]
            # The protocol written out by hand: unrounded Y / 255 in, clamp + uint8 out, Y of HR, crop = scale.
            lr, hr = next(s for s in sets if s.name == set_name).load(
                next(i for i in next(s for s in sets if s.name == set_name).images if i.name == name))
            with torch.no_grad():
                out = model.eval()(torch.from_numpy((imgproc.y_channel(lr) / 255.0).astype(np.float32))[None, None])
            sr_y = np.floor(np.clip(out[0, 0].numpy().astype(np.float64), 0, 1) * 255 + 0.5)
            assert scores["psnr"] == pytest.approx(metrics.psnr_y(sr_y, imgproc.y_channel(hr), 2), abs=1e-9)
            assert scores["ssim"] == pytest.approx(metrics.ssim_y(sr_y, imgproc.y_channel(hr), 2), abs=1e-9)
    model.eval()
    evaluate(model, sets, device="cpu")
    assert not model.training


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_y_model_lines_up_with_the_baseline(folders, scale):
    """Upscaling Y instead of RGB differs by ~0.015 dB (docs/protocol.md, step 6; up to 0.019 on these small
    crops), so a bicubic-Y model must score within 0.025 dB of the baseline; a one-pixel shift costs far more."""
    sets = _sets(folders, scale)
    result = evaluate_predictor(bicubic_y(scale), scale, sets).sets
    shifted = evaluate_predictor(bicubic_y(scale, shift=1), scale, sets).sets
    for name, entry in result.items():
        for image, scores in entry["images"].items():
            assert abs(scores["psnr"] - scores["bicubic_psnr"]) <= 0.025, (name, image)
            assert abs(scores["ssim"] - scores["bicubic_ssim"]) <= 0.003, (name, image)
            assert shifted[name]["images"][image]["psnr"] < scores["psnr"] - 0.1  # 4x the tolerance


def test_self_ensemble_scores_the_mean_of_the_eight_flips(folders, tiny_arch):
    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch).eval()
    sets = _sets(folders, 2)
    ensemble = evaluate(model, sets, device="cpu", self_ensemble=True).sets

    def by_hand(y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tiling.ensemble_mean(model, torch.from_numpy(y)[None, None])[0, 0].numpy()

    expected = evaluate_predictor(by_hand, 2, sets).sets
    for name in expected:
        assert ensemble[name]["psnr"] == pytest.approx(expected[name]["psnr"], abs=1e-3)
        assert ensemble[name]["psnr"] != evaluate(model, sets, device="cpu").sets[name]["psnr"]


def test_bf16_autocast_runs(folders, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    sets = _sets(folders, 2)
    fp32 = evaluate(model, sets, device="cpu").sets
    bf16 = evaluate(model, sets, device="cpu", precision="bf16").sets
    for name in fp32:
        assert math.isfinite(bf16[name]["psnr"])
        assert bf16[name]["psnr"] == pytest.approx(fp32[name]["psnr"], abs=0.5)
        assert bf16[name]["bicubic_psnr"] == fp32[name]["bicubic_psnr"]


def test_keep_samples_and_on_image(folders, tiny_arch):
    sets = _sets(folders, 2)
    seen = []
    result = evaluate(SRDenseNet(**tiny_arch), sets, device="cpu", keep_samples=3,
                      on_image=lambda s, i, scores, sample, lr: seen.append((s, i, scores, sample)))
    samples = result.samples
    assert len(samples) == 3 and all(isinstance(s, Sample) for s in samples)
    assert [(s, i) for s, i, _, _ in seen] == [("SetA", "astronaut.png"), ("SetA", "camera.png"),
                                              ("SetB", "chelsea.png")]
    for (set_name, image, scores, sample), kept in zip(seen, samples):
        assert scores == result.sets[set_name]["images"][image]
        hr = imgproc.mod_crop(image_files.read_image(folders / set_name / image), 2)
        for array in kept:
            assert array.dtype == np.uint8 and array.shape == hr.shape
        np.testing.assert_array_equal(kept.hr, hr)
        np.testing.assert_array_equal(kept.bicubic, imgproc.bicubic_upscale(imgproc.make_lr(hr, 2), 2))
        np.testing.assert_array_equal(kept.sr, sample.sr)
        assert np.concatenate(kept, axis=1).shape == (hr.shape[0], 3 * hr.shape[1], 3)
    assert set(result.sets) == {"SetA", "SetB"}
    # bicubic-only: the "SR" sample is the bicubic image itself
    only = evaluate(None, sets, device="cpu", keep_samples=1).samples
    np.testing.assert_array_equal(only[0].sr, only[0].bicubic)


def test_colour_sr_uses_sr_y_and_bicubic_chroma():
    lr = imgproc.make_lr(skdata.chelsea()[:60, :60], 2)
    ycc = imgproc.imresize(imgproc.rgb_to_ycbcr(lr), scale=2.0)
    # SR Y = the bicubic Y: the bicubic-upscaled YCbCr image, in RGB
    expected = imgproc.quantize_uint8(imgproc.ycbcr_to_rgb(ycc))
    np.testing.assert_array_equal(colour_sr(ycc[..., 0], lr, 2), expected)
    sr_y = np.clip(ycc[..., 0] + np.random.default_rng(0).normal(0, 5, ycc.shape[:2]), 16, 235)
    out = colour_sr(np.floor(sr_y + 0.5).astype(np.uint8), lr, 2)
    assert out.dtype == np.uint8 and out.shape == (60, 60, 3)
    ycc_out = imgproc.rgb_to_ycbcr(out)
    assert np.abs(ycc_out[..., 0] - np.floor(sr_y + 0.5)).mean() < 0.6
    assert np.abs(ycc_out[..., 1:] - ycc[..., 1:]).mean() < 1.0
    with pytest.raises(ValueError):
        colour_sr(sr_y[:-1], lr, 2)


def test_samples_match_inference_py_and_tiling_changes_nothing(folders, tiny_arch):
    from srdensenet import inference

    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch)
    sets = _sets(folders, 2)
    whole = evaluate(model, sets, device="cpu", keep_samples=3)
    tiled = evaluate(model, sets[:1], device="cpu", tile=16).sets
    for name in tiled:
        for image, scores in whole.sets[name]["images"].items():
            assert tiled[name]["images"][image]["psnr"] == pytest.approx(scores["psnr"], abs=1e-3)
    for sample, image in zip(whole.samples, ["SetA/astronaut.png", "SetA/camera.png", "SetB/chelsea.png"]):
        lr = imgproc.make_lr(imgproc.mod_crop(image_files.read_image(folders / image), 2), 2)
        written = inference.upscale(model, lr, precision="fp32")  # what inference.py would write for this LR
        assert np.abs(written.astype(int) - sample.sr).max() <= 1


def test_inference_predict_y_gets_the_options(folders, monkeypatch, tiny_arch):
    calls = []

    def fake_predict_y(model, lr_y, *, precision, tile, self_ensemble, max_memory):
        calls.append((lr_y.dtype, precision, tile, self_ensemble, max_memory))
        return model(torch.from_numpy(lr_y)[None, None])[0, 0].detach().numpy()  # predict_y: (H, W) in, (sH, sW) out

    monkeypatch.setattr(evaluation, "predict_y", fake_predict_y)
    sets = _sets(folders, 2)
    model = SRDenseNet(**tiny_arch)
    result = evaluate(model, sets, device="cpu", tile=32, self_ensemble=True, precision="bf16").sets
    assert calls == [(np.float32, "bf16", 32, True, None)] * 3
    calls.clear()
    evaluate(model, sets[:1], device="cpu", max_memory=2**30)  # tiling is "auto" unless told otherwise
    assert calls == [(np.float32, "fp32", "auto", False, 2**30)] * 2
    assert math.isfinite(result["SetA"]["psnr"])
    with pytest.raises(TypeError, match="evaluate_predictor"):  # other models are scored as predictors
        evaluate(nn.Conv2d(1, 1, 1), sets, device="cpu")


def test_exact_fp32_turns_tf32_off_on_cuda_and_restores():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with hardware.exact_fp32(torch.device("cuda"), torch.float32):
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            assert conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
        else:
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp32_matches_cpu(folders, tiny_arch):
    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch)
    sets = _sets(folders, 2)
    cpu = evaluate(model, sets, device="cpu").sets
    cuda = evaluate(model.cuda(), sets, device="cuda").sets
    for name in cpu:
        assert cuda[name]["psnr"] == pytest.approx(cpu[name]["psnr"], abs=1e-3)
        assert cuda[name]["bicubic_psnr"] == cpu[name]["bicubic_psnr"]


def test_errors_name_the_problem(folders, tiny_arch):
    sets = _sets(folders, 2)
    with pytest.raises(EvaluationError, match="x3"):
        evaluate(SRDenseNet(**{**tiny_arch, "upscale_factor": 3}), sets, device="cpu")
    with pytest.raises(EvaluationError, match="SetA/astronaut.png.*NaN"):
        evaluate_predictor(lambda y: np.full((y.shape[0] * 2, y.shape[1] * 2), np.nan), 2, sets)
    with pytest.raises(EvaluationError, match="SetA/astronaut.png.*expected"):
        evaluate_predictor(lambda y: np.zeros((y.shape[0] * 2 + 1, y.shape[1] * 2)), 2, sets)
    model = SRDenseNet(**tiny_arch).train()
    with pytest.raises(EvaluationError):
        evaluate(model, find_validation_sets([str(folders / "SetA")], 3), device="cpu")
    assert model.training  # restored even after an error


def test_same_file_name_in_two_sub_folders_keeps_both(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "Set" / sub).mkdir(parents=True)
        image_files.write_image(tmp_path / "Set" / sub / "x.png", skdata.astronaut()[:40, :40] if sub == "a"
                            else skdata.chelsea()[:40, :40])
    result = evaluate(None, find_validation_sets([str(tmp_path / "Set")], 2), device="cpu").sets
    assert len(result["Set"]["images"]) == 2
