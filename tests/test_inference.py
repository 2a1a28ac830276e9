"""inference.py: the API (shapes, dtypes, precision paths, tiling, self-ensemble, caching) and the CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data

import hardware
import image_files
import imgproc
import inference
import metrics
from checkpoint import save_checkpoint
from fast_inference import FastRunner
from imgproc import rgb_to_ycbcr
from model import SRDenseNet

# ONNX Runtime is a dev requirement (requirements-dev.txt); without it its cases are skipped, the rest still run.
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
BACKENDS = ["torch", "onnxruntime"] if HAS_ORT else ["torch"]
SMALL = dict(num_blocks=2, layers_per_block=2, growth_rate=4, num_features=8, bottleneck_features=8)
# The paths by name (never through "auto", whose choice depends on the CPU: see test_resolve_plan): "fp32" is the
# eager NCHW reference, "fp32-cl" and "bf16" the fast path (fast_inference.py) in fp32 and in bf16.
# fp32 paths must agree to float rounding. bf16 keeps 8 significant bits (unit roundoff u = 2**-8); each bf16 layer
# of the tiny models (at most 8: 4 dense layers, the bottleneck, up to 3 deconvolutions) rounds its inputs, weights and
# output, a few u each in the worst case. Over 20 random tiny models the max error was 3.4 u of the output's largest
# magnitude (on both CPU classes); BF16_TOLERANCE allows 8 u.
FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 8 * 2.0**-8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The models here are tiny: one thread avoids OpenMP barriers that stall when the CI cores are busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny(tiny_arch):
    torch.manual_seed(0)
    return SRDenseNet(**tiny_arch).eval()


@pytest.fixture(scope="module")
def photo():
    return np.ascontiguousarray(data.astronaut()[100:137, 180:209])  # 37x29: odd, non-square, real content


def y_of(rgb):
    return (rgb_to_ycbcr(rgb, y_only=True) / 255.0).astype(np.float32)


def psnr(a, b, peak=1.0):
    return 10 * np.log10(peak**2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


# ---- the model split and its receptive field -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["all", "h", "hl"])
@pytest.mark.parametrize("scale,layout", [(2, "paper"), (3, "paper"), (4, "port"), (8, "paper")])
def test_trunk_then_upsampler_is_exactly_forward(variant, scale, layout):
    model = SRDenseNet(scale, variant, layout, **SMALL).eval()
    x = torch.rand(2, 1, 11, 7)
    with torch.no_grad():
        assert torch.equal(model.upsample_features(model.trunk(x)), model(x))


def test_receptive_field_of_paper_models():
    # 1 low-level conv + 8 blocks x 8 layers = 65 LR pixels in the trunk; upsampler: paper 3x3 deconvs reach 1 input
    # pixel each (1 + 1/2 [+ 1/4]) plus 1 HR pixel for the last conv, rounded up; port / stride-3 deconvs reach none.
    assert inference.receptive_field(SRDenseNet(4)) == 65 + 2
    assert inference.receptive_field(SRDenseNet(2)) == 65 + 2
    assert inference.receptive_field(SRDenseNet(8)) == 65 + 2
    assert inference.receptive_field(SRDenseNet(3)) == 65 + 1
    assert inference.receptive_field(SRDenseNet(4, layout="port")) == 65 + 1


@pytest.mark.parametrize("scale,layout", [(2, "paper"), (3, "paper"), (4, "port"), (8, "paper")])
def test_receptive_field_bounds_and_nearly_equals_the_measured_reach(scale, layout):
    torch.manual_seed(1)
    model = SRDenseNet(scale, "all", layout, **SMALL).double().eval()
    x = torch.rand(1, 1, 31, 31, dtype=torch.float64)
    bumped = x.clone()
    bumped[..., 15, 15] += 0.5
    with torch.no_grad():
        changed = (model(bumped) - model(x)).abs()[0, 0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max((rows // scale - 15).abs().max().item(), (cols // scale - 15).abs().max().item())
    rf = inference.receptive_field(model)
    assert rf - 1 <= reach <= rf


# ---- tiling ----------------------------------------------------------------------------------------------------------


def max_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest difference, relative to the reference's largest magnitude (random weights: outputs are not in [0, 1])."""
    return ((out - reference).abs().max() / reference.abs().max()).item()


# Exact (fp32) paths: tiled output equals untiled output to float rounding.
FP32_PLANS = [("fp32", "torch"), ("fp32-cl", "torch"), ("fp32", "onnxruntime")]


@pytest.mark.parametrize("tile,plans", [(5, [("fp32", "torch")]), (8, FP32_PLANS), (13, [("fp32-cl", "torch")]),
                                        (100, [("fp32-cl", "torch")])])
def test_tiled_equals_untiled(tiny, tile, plans):
    x = torch.rand(2, 1, 37, 29)  # sizes not divisible by the tiles; 5 < receptive field (7): margins span tiles
    reference = inference.predict_y(tiny, x, precision="fp32")
    for precision, backend in [p for p in plans if p[1] in BACKENDS]:
        tiled = inference.predict_y(tiny, x, precision=precision, tile=tile, backend=backend)
        assert tiled.shape == (2, 1, 74, 58)
        assert (tiled - reference).abs().max().item() <= FP32_TOLERANCE, (precision, backend)


@pytest.mark.parametrize("tile", [5, 13])
def test_tiled_bf16_within_bf16_rounding(tiny, tile):
    # bf16 is not exact, so tiled bf16 equals untiled bf16 only up to bf16 rounding (kernels may block differently
    # for other shapes): both lie within BF16_TOLERANCE of fp32, so within twice that of each other.
    x = torch.rand(2, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    untiled = inference.predict_y(tiny, x, precision="bf16")
    tiled = inference.predict_y(tiny, x, precision="bf16", tile=tile)
    assert max_error(untiled, reference) <= BF16_TOLERANCE
    assert max_error(tiled, reference) <= BF16_TOLERANCE
    assert max_error(tiled, untiled) <= 2 * BF16_TOLERANCE
    assert max_error(untiled, reference) > 0  # really computed in bf16


@pytest.mark.parametrize("tile", [None, 11])
def test_upsampler_pieces_equal_untiled(tiny, monkeypatch, tile):
    x = torch.rand(1, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    monkeypatch.setattr(inference, "upsampler_window", lambda model: 8)  # many windows, margins across them
    for precision, backend in [p for p in FP32_PLANS if p[1] in BACKENDS]:
        out = inference.predict_y(tiny, x, precision=precision, tile=tile, backend=backend)
        assert (out - reference).abs().max().item() <= FP32_TOLERANCE, (precision, backend)
    bf16 = inference.predict_y(tiny, x, precision="bf16", tile=tile)
    assert max_error(bf16, reference) <= BF16_TOLERANCE


@pytest.mark.parametrize("bucketed", [False, True])
def test_upsampler_windows_cover_the_core_exactly_once(bucketed):
    rng = np.random.default_rng(0)
    for _ in range(2000):
        length = int(rng.integers(1, 400))
        c0 = int(rng.integers(0, length))
        c1 = int(rng.integers(c0 + 1, length + 1))
        margin, size = int(rng.integers(0, 4)), int(rng.integers(8, 120))
        valid = (max(0, c0 - margin), min(length, c1 + margin))
        windows, padded = inference._windows((c0, c1), valid, length, size, margin, bucketed)
        assert [k for _, _, k, _ in windows] == [c0] + [k1 for _, _, _, k1 in windows[:-1]] and windows[-1][3] == c1
        assert len({w1 - w0 for w0, w1, _, _ in windows}) == 1  # one shape per line
        for w0, w1, k0, k1 in windows:
            assert valid[0] <= w0 and w1 <= valid[1] and k0 < k1
            assert k0 - w0 >= margin or w0 == 0
            assert w1 - k1 >= margin or w1 == length
        window = windows[0][1] - windows[0][0]
        if not bucketed:
            assert padded == window
        elif window == valid[1] - valid[0] <= size:
            assert padded == inference.shape_bucket(window)  # a short line: one window, padded to its bucket
        else:
            assert padded == window and (window % 8 == 0 or window == valid[1] - valid[0])


def test_tiling_with_a_too_small_margin_differs(tiny, monkeypatch):
    # Sanity check of the test above: it would catch a margin smaller than the receptive field.
    x = torch.rand(1, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    monkeypatch.setattr(inference, "trunk_radius", lambda model: 2)
    tiled = inference.predict_y(tiny, x, precision="fp32", tile=8)
    assert (tiled - reference).abs().max().item() > 1e-4


# ---- precision paths -------------------------------------------------------------------------------------------------


def test_resolve_plan(monkeypatch):
    cpu = torch.device("cpu")
    assert inference.resolve_plan("fp32", cpu) == ("torch", "fp32")
    assert inference.resolve_plan("fp32-cl", cpu) == ("torch", "fp32-cl")
    assert inference.resolve_plan("bf16", cpu) == ("torch", "bf16")
    if HAS_ORT:
        assert inference.resolve_plan("fp32-cl", cpu, "onnxruntime") == ("onnxruntime", "fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        inference.resolve_plan("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        inference.resolve_plan("int8", cpu)
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: True)
    assert inference.resolve_plan("auto", cpu) == ("torch", "bf16")
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: False)  # e.g. an AVX2-only CPU: bf16 is emulated
    assert inference.resolve_plan("auto", cpu) == ("torch", "fp32-cl")
    monkeypatch.setattr(inference, "_onnxruntime_available", lambda: False)
    with pytest.raises(ValueError, match="onnxruntime"):
        inference.resolve_plan("auto", cpu, "onnxruntime")


@pytest.mark.parametrize("scale,layout,variant", [(2, "paper", "all"), (3, "paper", "h"), (4, "port", "hl"),
                                                  (8, "paper", "all")])
def test_bf16_close_to_fp32(scale, layout, variant, photo):
    torch.manual_seed(0)
    model = SRDenseNet(scale, variant, layout, **SMALL).eval()
    y = y_of(photo)
    fp32 = inference.predict_y(model, y, precision="fp32")
    bf16 = inference.predict_y(model, y, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert 0 < max_error(torch.from_numpy(bf16), torch.from_numpy(fp32)) <= BF16_TOLERANCE


def test_bf16_scores_like_fp32_on_a_real_photo(repo_root):
    # The shipped x4 weights on a 128x128 crop of Set5 butterfly (32x32 LR: a few seconds where bf16 is emulated).
    # Measured on both CPU classes: bf16 output 58-59 dB from fp32 (Y, uint8), PSNR against HR 0.008-0.010 dB lower.
    model = inference.load_model(repo_root / "weights" / "srdensenet_x4_all_paper.safetensors", device="cpu")
    hr = np.ascontiguousarray(image_files.read_image(repo_root / "tests" / "data" / "butterfly.png")[64:192, 64:192])
    lr = imgproc.make_lr(hr, 4)
    fp32 = inference.upscale(model, lr, precision="fp32")
    bf16 = inference.upscale(model, lr, precision="bf16")
    assert psnr(imgproc.y_channel(bf16), imgproc.y_channel(fp32), 255) >= 50
    psnr_fp32, ssim_fp32 = metrics.score_image(fp32, hr, 4)
    psnr_bf16, ssim_bf16 = metrics.score_image(bf16, hr, 4)
    assert psnr_fp32 > 26  # the trained model, well above bicubic's 23.6 dB on this crop
    assert abs(psnr_bf16 - psnr_fp32) <= 0.03 and abs(ssim_bf16 - ssim_fp32) <= 0.001


@pytest.mark.parametrize("precision,backend", [("fp32-cl", "torch"), ("fp32", "onnxruntime")])
def test_fast_fp32_backends_match_reference(tiny, photo, precision, backend):
    if backend not in BACKENDS:
        pytest.skip("onnxruntime is not installed (requirements-dev.txt)")
    y = y_of(photo)
    reference = inference.predict_y(tiny, y, precision="fp32")
    fast = inference.predict_y(tiny, y, precision=precision, backend=backend)
    assert np.abs(fast - reference).max() <= FP32_TOLERANCE


# ---- shape buckets (the fast paths' bounded set of input shapes) ---------------------------------------------------


def test_shape_bucket_sizes():
    buckets = [inference.shape_bucket(n) for n in range(1, 4097)]
    assert all(b >= n and b % 16 == 0 for n, b in enumerate(buckets, 1))
    assert all(b <= n * 1.0625 for n, b in enumerate(buckets, 1) if n >= 256)
    assert buckets == sorted(buckets)
    assert len(set(buckets)) == 16 + 16 + 16 + 16 + 16  # 16..256 in steps of 16, then 16 per octave to 4096


@pytest.mark.parametrize("scale,layout,variant", [(2, "paper", "all"), (3, "paper", "h"), (4, "port", "hl"),
                                                  (8, "paper", "all")])
def test_bucketed_fast_path_equals_reference(scale, layout, variant):
    torch.manual_seed(0)
    model = SRDenseNet(scale, variant, layout, **SMALL).eval()
    for h, w in [(17, 30), (5, 16), (33, 47)]:  # padded to (32, 32), (16, 16), (48, 48)
        x = torch.rand(1, 1, h, w)
        reference = inference.predict_y(model, x, precision="fp32")
        fast = inference.predict_y(model, x, precision="fp32-cl", backend="torch")
        assert fast.shape == reference.shape == (1, 1, h * scale, w * scale)
        assert (fast - reference).abs().max().item() <= FP32_TOLERANCE
        bf16 = inference.predict_y(model, x, precision="bf16", backend="torch")  # bucketed too
        assert max_error(bf16, reference) <= BF16_TOLERANCE


def test_padding_without_zeroing_differs(tiny, monkeypatch):
    # Sanity check of the test above: the bottom/right padding is visible unless every layer re-zeroes it.
    monkeypatch.setattr(FastRunner, "_relu", staticmethod(lambda t, valid: torch.relu_(t)))
    x = torch.rand(1, 1, 17, 30)
    reference = inference.predict_y(tiny, x, precision="fp32")
    fast = inference.predict_y(tiny, x, precision="fp32-cl", backend="torch")
    assert (fast - reference).abs().max().item() > 1e-4


@pytest.mark.parametrize("precision", ["fp32-cl", "bf16"])
def test_fast_path_meets_few_shapes(tiny, precision, monkeypatch):
    # What keeps a long process's memory flat (benchmarks/soak_inference.py): 60 image sizes -> 4 conv input shapes.
    shapes = set()
    padded = FastRunner._padded

    def record(self, x, size):
        out = padded(self, x, size)
        if x.shape[1] == 1:  # the trunk's Y input (the upsampler's windows have more maps)
            shapes.add(tuple(out[0].shape))
        return out

    monkeypatch.setattr(FastRunner, "_padded", record)
    for h in range(3, 63):
        inference.predict_y(tiny, torch.rand(1, 1, h, 65 - h), precision=precision, backend="torch")
    assert shapes == {(1, 1, a, b) for a, b in [(16, 64), (32, 48), (48, 32), (64, 16)]}


# ---- self-ensemble ---------------------------------------------------------------------------------------------------


def test_self_ensemble_is_the_mean_of_the_8_transforms(tiny):
    x = torch.rand(1, 1, 9, 14)
    ensemble = inference.predict_y(tiny, x, precision="fp32", self_ensemble=True)
    assert ensemble.shape == (1, 1, 18, 28)
    outputs = []
    for transpose in (False, True):
        for flip_h in (False, True):
            for flip_w in (False, True):
                t = x.flip(-1) if flip_w else x
                t = t.flip(-2) if flip_h else t
                t = t.transpose(-2, -1) if transpose else t
                out = inference.predict_y(tiny, t, precision="fp32")
                out = out.transpose(-2, -1) if transpose else out
                out = out.flip(-2) if flip_h else out
                outputs.append(out.flip(-1) if flip_w else out)
    assert torch.allclose(ensemble, torch.stack(outputs).mean(0), atol=1e-6)
    assert not torch.allclose(ensemble, outputs[0], atol=1e-4)  # really not the plain output
    tiled = inference.predict_y(tiny, x, precision="fp32", self_ensemble=True, tile=4)
    assert (tiled - ensemble).abs().max().item() <= 1e-5


# ---- whole images ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp32-cl", "bf16"])
def test_upscale_keeps_kind_of_image(tiny, photo, precision):
    gray = photo[:, :, 1]
    cases = [photo, gray, gray[:, :, None], photo.astype(np.uint16) * 257,
             np.dstack([photo, gray]), np.dstack([photo, gray]).astype(np.uint16) * 257]
    for image in cases:
        out = inference.upscale(tiny, image, precision=precision)
        assert out.dtype == image.dtype
        assert out.shape == (74, 58) + image.shape[2:]
    with pytest.raises(TypeError):
        inference.upscale(tiny, photo.astype(np.float32))


def test_grayscale_is_the_replicated_rgb_image(tiny, photo):
    gray = photo[:, :, 1]
    as_gray = inference.upscale(tiny, gray, precision="fp32")
    as_rgb = inference.upscale(tiny, np.repeat(gray[:, :, None], 3, axis=2), precision="fp32")
    assert np.abs(as_rgb.astype(int) - as_gray[:, :, None]).max() <= 1


def test_uint16_agrees_with_uint8(tiny, photo):
    out8 = inference.upscale(tiny, photo, precision="fp32")
    out16 = inference.upscale(tiny, photo.astype(np.uint16) * 257, precision="fp32")
    assert np.abs(out16 / 257.0 - out8).max() <= 0.51


def test_load_model(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    ema = SRDenseNet(**tiny_arch)
    save_checkpoint(tmp_path / "w.pth", model, ema_model=ema)
    loaded = inference.load_model(tmp_path / "w.pth", device="cpu")
    assert not loaded.training and loaded.upscale_factor == tiny_arch["upscale_factor"]
    assert torch.equal(loaded.low_level.weight, ema.low_level.weight)  # EMA weights preferred


# ---- the prepared-model cache ----------------------------------------------------------------------------------------


def test_cache_follows_weight_changes(tiny):
    x = torch.rand(1, 1, 12, 10)

    def fresh(model):
        with torch.no_grad():
            return model(x)

    plans = [("fp32", "torch"), ("fp32-cl", "torch"), ("fp32", "onnxruntime")][:3 if HAS_ORT else 2]
    for precision, backend in plans:
        inference.predict_y(tiny, x, precision=precision, backend=backend)  # prepares and caches
    with torch.no_grad():
        tiny.low_level.weight.mul_(1.5)  # in-place edit
    for precision, backend in plans:
        assert (inference.predict_y(tiny, x, precision=precision, backend=backend) - fresh(tiny)).abs().max() <= 1e-5
    optimizer = torch.optim.SGD(tiny.parameters(), lr=0.1)  # one training step
    tiny.train()
    tiny(x).mean().backward()
    optimizer.step()
    tiny.eval()

    def cached():
        return inference.predict_y(tiny, x, precision="fp32-cl", backend="torch")

    assert (cached() - fresh(tiny)).abs().max() <= 1e-5
    other = SRDenseNet(**tiny.arch)  # load_state_dict
    tiny.load_state_dict(other.state_dict())
    assert (cached() - fresh(tiny)).abs().max() <= 1e-5
    tiny.reconstruction.bias = torch.nn.Parameter(torch.ones(1))  # replaced parameter
    assert (cached() - fresh(tiny)).abs().max() <= 1e-5
    tiny.reconstruction.bias.data.add_(1.0)  # .data bypasses version counters: the documented exception
    inference.clear_prepared(tiny)
    assert (cached() - fresh(tiny)).abs().max() <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "fp32-cl", "bf16"])
def test_users_model_is_not_modified(tiny, precision):
    tiny.train()
    inference.predict_y(tiny, torch.rand(1, 1, 8, 8), precision=precision)
    assert tiny.training
    assert tiny.low_level.weight.is_contiguous() and tiny.low_level.weight.dtype == torch.float32


# ---- command line ----------------------------------------------------------------------------------------------------


def run_cli(args, repo_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(repo_root / "inference.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=repo_root, timeout=120, env=env)


def test_cli_folder_of_every_kind(tmp_path, tiny, photo, repo_root):
    save_checkpoint(tmp_path / "w.pth", tiny)
    folder = tmp_path / "in"
    folder.mkdir()
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    cv2.imwrite(str(folder / "rgb.png"), bgr)
    cv2.imwrite(str(folder / "photo.jpg"), bgr)
    cv2.imwrite(str(folder / "gray.png"), photo[:, :, 1])
    cv2.imwrite(str(folder / "deep.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([bgr, photo[:, :, 0]]))
    result = run_cli(["--weights", tmp_path / "w.pth", "-i", folder, "-o", tmp_path / "out", "--tile", "16",
                      "--backend", "torch", "--precision", "fp32-cl"],
                     repo_root)
    assert result.returncode == 0, result.stderr
    expected = {"rgb.png": (3, np.uint8), "photo.png": (3, np.uint8), "gray.png": (None, np.uint8),
                "deep.png": (3, np.uint16), "alpha.png": (4, np.uint8)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for name, (channels, dtype) in expected.items():
        out = cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
        assert out.dtype == dtype and out.shape[:2] == (74, 58), name
        assert (out.shape[2] if out.ndim == 3 else None) == channels, name


def test_cli_bad_input_reports_file_without_traceback(tmp_path, tiny, photo, repo_root):
    save_checkpoint(tmp_path / "w.pth", tiny)
    good, bad = tmp_path / "good.png", tmp_path / "broken.png"
    cv2.imwrite(str(good), photo)
    bad.write_bytes(good.read_bytes()[:200])  # truncated PNG
    result = run_cli(["--weights", tmp_path / "w.pth", "-i", good, bad, "-o", tmp_path / "out", "--backend", "torch",
                      "--precision", "fp32"],
                     repo_root)
    assert result.returncode != 0
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert (tmp_path / "out" / "good.png").is_file()  # the other image is still done
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temporary files left

    weights_bad = run_cli(["--weights", bad, "-i", good, "-o", tmp_path / "out2"], repo_root)
    assert weights_bad.returncode != 0 and "broken.png" in weights_bad.stderr
    assert "Traceback" not in weights_bad.stderr


def test_cli_never_replaces_an_earlier_result_unless_forced(tmp_path, tiny, photo, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), photo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier result")
    argv = ["--weights", str(tmp_path / "w.pth"), "-i", str(folder), "-o", str(out), "--precision", "fp32"]
    assert inference.main(argv) == 0
    err = capsys.readouterr().err
    assert "exists, skipped" in err and "1 written, 1 skipped (already there), 0 failed, of 2 images" in err
    assert (out / "a.png").read_bytes() == b"an earlier result"
    assert cv2.imread(str(out / "b.png")).shape == (74, 58, 3)
    assert inference.main([*argv, "--force"]) == 0
    assert "2 written, 0 skipped" in capsys.readouterr().err
    assert cv2.imread(str(out / "a.png")).shape == (74, 58, 3)


def test_cli_folders_are_searched_recursively_and_mirrored(tmp_path, tiny, photo, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    root = tmp_path / "in"
    for sub in ("", "nested", "nested/deeper", ".hidden", "results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / sub / "p.jpg"), photo)
    cv2.imwrite(str(root / ".secret.png"), photo)
    # The output folder lies inside the input: its images (an earlier run's results) must not be read as inputs.
    assert inference.main(["--weights", str(tmp_path / "w.pth"), "-i", str(root), "-o", str(root / "results"),
                           "--precision", "fp32"]) == 0
    written = sorted(str(p.relative_to(root / "results")) for p in (root / "results").rglob("*.png"))
    assert written == ["nested/deeper/p.png", "nested/p.png", "p.png"]
    assert "3 written" in capsys.readouterr().err


def test_cli_usage_errors(tmp_path, tiny, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    assert inference.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "nope.png"),
                           "-o", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert inference.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "w.pth"), "-o",
                           str(tmp_path), "--precision", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA" in capsys.readouterr().err


# ---- memory: the estimate, automatic tiling, out-of-memory reports ---------------------------------------------------

# Wide enough that tensors, not the first call's fixed cost, make most of the peak, and still fast on a CPU.
MID = dict(upscale_factor=4, num_blocks=3, layers_per_block=4, growth_rate=16, num_features=64, bottleneck_features=128)
ALLOCATOR_FAILURE = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to " \
                    "allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"


@pytest.mark.parametrize("cases", [[
    dict(size=96, tile=40, precision="fp32-cl"),  # upscale: bucketed tiles, the upsampler windows and the colour
    dict(size=80, tile=0, precision="fp32", y_only=True),  # the unbucketed NCHW reference, untiled
    dict(size=40, tile=0, precision="bf16"),  # small: bf16 is emulated (slow) on CPUs without native bf16
]])
def test_estimate_bounds_the_measured_peak(repo_root, cases):
    # Each case in a fresh process (benchmarks/bench_inference.py's memory child): ru_maxrss above the RSS after
    # loading the model and the image, against estimate_memory for the same call. An upper bound, and not a vacuous
    # one: within 3x (1.4-2.4x on the paper model at 128-512 px, bench_inference.py --memory).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, str(repo_root / "benchmarks" / "bench_inference.py"),
                                  "--memory-child", json.dumps(dict(arch=MID, backend="torch", **case)), ""],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo_root)
                for case in cases]
    for case, child in zip(cases, children):
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        row = json.loads(out.strip().splitlines()[-1])
        assert row["peak_bytes"] <= row["estimate_bytes"] <= 3 * row["peak_bytes"], (case, row)


def fake_available(monkeypatch, available):
    monkeypatch.setattr(hardware, "available_memory", lambda device: (int(available), "MemAvailable"))


@pytest.mark.parametrize("precision", ["fp32", "fp32-cl", "bf16"])
def test_auto_tiling_under_a_tight_budget_gives_the_untiled_result(tiny, monkeypatch, precision):
    x = torch.rand(1, 1, 90, 75)
    untiled = inference.predict_y(tiny, x, precision=precision, tile=0)
    needed = inference.estimate_memory(tiny, (90, 75), tile=None, precision=precision)
    fake_available(monkeypatch, (needed - 1) / hardware.BUDGET_FRACTION)  # untiled no longer fits
    plan = inference.plan_memory(tiny, (90, 75), precision=precision)
    assert plan.tile is not None and plan.needed <= plan.budget.budget < needed
    larger = [t for t in inference._candidate_tiles(90, 75)[1:] if t > plan.tile]
    assert all(inference.estimate_memory(tiny, (90, 75), tile=t, precision=precision) > plan.budget.budget
               for t in larger)  # the largest tile that fits
    cores = []
    forward = inference._forward_tile
    monkeypatch.setattr(inference, "_forward_tile", lambda runner, x, core, *a: cores.append(core) or
                        forward(runner, x, core, *a))
    auto = inference.predict_y(tiny, x, precision=precision)  # tile="auto" is the default
    assert len(cores) > 1 and max(y1 - y0 for y0, y1, _, _ in cores) <= plan.tile
    tolerance = FP32_TOLERANCE if precision != "bf16" else 2 * BF16_TOLERANCE * untiled.abs().max().item()
    assert (auto - untiled).abs().max().item() <= tolerance


def test_auto_with_room_runs_untiled(tiny, monkeypatch):
    fake_available(monkeypatch, 64 * 2**30)
    assert inference.plan_memory(tiny, (90, 75), precision="fp32").tile is None
    monkeypatch.setattr(hardware, "available_memory", lambda device: (None, "unknown"))  # no limit readable
    assert inference.plan_memory(tiny, (90, 75), precision="fp32").tile is None


def test_no_tile_fits_raises_with_the_numbers(tiny):
    with pytest.raises(inference.InsufficientMemoryError) as caught:
        inference.predict_y(tiny, torch.rand(1, 1, 90, 75), precision="fp32", max_memory=2**20)
    error = caught.value
    assert error.tile == inference._candidate_tiles(90, 75)[-1] == 38  # the smallest automatic tile: ceil(75 / 2)
    assert error.size == (90, 75) and error.needed > 2**20 and error.cause is None
    assert "needs about" in str(error) and "1 MiB (--max-memory)" in str(error)
    with pytest.raises(ValueError, match="tile must be"):
        inference.predict_y(tiny, torch.rand(1, 1, 9, 9), tile="big")


def test_estimate_follows_the_architecture_and_the_tile():
    # The paper model at x4 on the fast path: ~5 KB per LR pixel untiled (measured 3.9-4.2 KB at 512 px), so a
    # 12-megapixel photo needs ~55 GB untiled; tiles bring it within a 24 GB machine's budget. The reference keeps the
    # growing feature stack of the "all" variant: more than twice that, and 3x the chained "h" variant's.
    model = SRDenseNet(4)
    photo = (3000, 4000)
    untiled = inference.estimate_memory(model, photo, precision="fp32-cl", channels=3)
    assert 40 * 2**30 < untiled < 80 * 2**30
    sizes = [inference.estimate_memory(model, photo, tile=t, precision="fp32-cl", channels=3) for t in (1000, 500, 64)]
    assert untiled > sizes[0] > sizes[1] > sizes[2]
    plan = inference.plan_memory(model, photo, precision="fp32-cl", channels=3, max_memory=int(0.8 * 24 * 2**30))
    assert plan.tile is not None and plan.needed <= 0.8 * 24 * 2**30
    reference = inference.estimate_memory(model, photo, precision="fp32")
    assert reference > 2 * inference.estimate_memory(model, photo, precision="fp32-cl")
    assert inference.estimate_memory(SRDenseNet(4, variant="h"), photo, precision="fp32") < reference / 3
    assert inference.estimate_memory(model, photo, tile=500, precision="fp32", backend="onnxruntime") > sizes[1]


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray", "rgb16"])
def test_colour_in_strips_equals_the_whole_image_formula(tiny, photo, monkeypatch, kind):
    monkeypatch.setattr(inference, "STRIP_PIXELS", 100)  # ~2 HR rows a strip, the last one shorter
    image = {"rgb": photo, "rgba": np.dstack([photo, photo[:, :, 0]]), "gray": photo[:, :, 1],
             "rgb16": photo.astype(np.uint16) * 257}[kind]
    out = inference.upscale(tiny, image, precision="fp32")
    if kind == "gray":
        y = ((16.0 + 219.0 * imgproc.to_float01(image)) / 255.0).astype(np.float32)
        sr_y = inference.predict_y(tiny, y, precision="fp32").astype(np.float64)
        expected = inference._quantize((sr_y * 255.0 - 16.0) / 219.0, image.dtype)
    else:
        ycc = imgproc.rgb_to_ycbcr(image[:, :, :3])
        sr_y = inference.predict_y(tiny, (ycc[:, :, 0] / 255.0).astype(np.float32), precision="fp32")
        cbcr = imgproc.imresize(ycc[:, :, 1:], scale=2.0)
        rgb = imgproc.ycbcr_to_rgb(np.concatenate([sr_y.astype(np.float64)[:, :, None] * 255.0, cbcr], axis=2))
        expected = inference._quantize(rgb, image.dtype)
        if kind == "rgba":
            expected = np.dstack([expected, imgproc.imresize(image[:, :, 3], scale=2.0)])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("failure", [RuntimeError(ALLOCATOR_FAILURE), MemoryError("Unable to allocate 4.5 GiB"),
                                     torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_allocation_failure_becomes_one_clear_error(tiny, photo, monkeypatch, failure):
    def fail(self, x):
        raise failure

    monkeypatch.setattr(FastRunner, "trunk", fail)
    with pytest.raises(inference.InsufficientMemoryError) as caught:
        inference.upscale(tiny, photo, precision="fp32-cl", tile=16)
    error = caught.value
    assert error.cause.split()[0] in str(failure) and error.tile == 16 and error.size == (37, 29)
    assert "ran out of memory" in str(error) and "\n" not in str(error)
    assert "--tile 8" in error.hint() and "--device cpu" not in error.hint()
    assert "--device cpu" in error.hint(torch.device("cuda"))


def test_other_runtime_errors_are_not_called_memory(tiny, photo, monkeypatch):
    def fail(self, x):
        raise RuntimeError("expected input to have 1 channel")

    monkeypatch.setattr(FastRunner, "trunk", fail)
    with pytest.raises(RuntimeError, match="1 channel") as caught:
        inference.upscale(tiny, photo, precision="fp32-cl")
    assert not isinstance(caught.value, MemoryError)


def write_photos(folder, photo):
    folder.mkdir()
    cv2.imwrite(str(folder / "big.png"), np.ascontiguousarray(photo[:, :, ::-1]))  # 29x37
    cv2.imwrite(str(folder / "small.png"), np.ascontiguousarray(photo[:20, :24, ::-1]))  # 24x20


def test_cli_allocation_failure_skips_that_image_only(tmp_path, tiny, photo, monkeypatch, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_photos(tmp_path / "in", photo)
    trunk = FastRunner.trunk

    def fail_on_big(self, x):
        if x.shape[-2] > 30:  # only big.png's tiles (37 rows; tiles of 40 leave it whole)
            raise RuntimeError(ALLOCATOR_FAILURE)
        return trunk(self, x)

    monkeypatch.setattr(FastRunner, "trunk", fail_on_big)
    code = inference.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--precision", "fp32-cl", "--backend", "torch", "--tile", "40"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if "big.png" in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'in' / 'big.png'} (29x37 px): ran out of")
    assert "DefaultCPUAllocator" in lines[0] and "try --tile 20" in lines[0] and "--max-memory" in lines[0]
    assert "Traceback" not in err and "1 of 2 images failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.png"]  # no half file, no temporary


def test_cli_budget_too_small_for_any_tile(tmp_path, tiny, photo, repo_root):
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_photos(tmp_path / "in", photo)
    result = run_cli(["--weights", tmp_path / "w.pth", "-i", tmp_path / "in" / "big.png", "-o", tmp_path / "out.png",
                      "--max-memory", "1MB", "--precision", "fp32"], repo_root)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "big.png (29x37 px): needs about" in errors[0], result.stderr
    assert "the budget is 1 MiB (--max-memory)" in errors[0] and "try --tile" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out.png").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_cli_faked_low_memory_fails_every_image_cleanly(tmp_path, tiny, photo, monkeypatch, capsys):
    # No --max-memory: the budget comes from the memory "available" (faked at 1 MB), as under a real ulimit -v.
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_photos(tmp_path / "in", photo)
    fake_available(monkeypatch, 2**20)
    code = inference.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("needs about") == 2 and "80% of the 1 MiB available (MemAvailable)" in err
    assert "2 of 2 images failed" in err and not any((tmp_path / "out").iterdir())


def test_cli_memory_options(tmp_path, tiny, photo, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_photos(tmp_path / "in", photo)
    base = ["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in" / "small.png"), "--precision", "fp32"]
    for bad, message in [(["--max-memory", "4XB"], "expected a size such as 4GB, 512MB or 1.5G, got '4XB'"),
                         (["--max-memory", "0"], "positive size"), (["--tile", "big"], "expected auto, 0"),
                         (["--tile", "-3"], "expected auto, 0")]:
        with pytest.raises(SystemExit) as exit_:
            inference.main([*base, "-o", str(tmp_path / "x.png"), *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert inference.main([*base, "-o", str(tmp_path / "x.png"), "--max-memory", "4GB", "--tile", "8"]) == 2
    assert "--max-memory sets the budget of --tile auto" in capsys.readouterr().err
    for option in (["--max-memory", "1.5G"], ["--tile", "0"], ["--tile", "auto", "--max-memory", "512MB"]):
        assert inference.main([*base, "-o", str(tmp_path / "ok.png"), "--force", *option]) == 0
        captured = capsys.readouterr()
        assert "small.png" in captured.out and "untiled" in captured.out
    assert "the budget is 512 MiB (--max-memory)" in captured.err


# ---- CUDA ------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reduced_precision_and_tiling(tiny, photo):
    y = y_of(photo)
    reference = inference.predict_y(tiny, y, precision="fp32")  # CPU model
    gpu = SRDenseNet(**tiny.arch)
    gpu.load_state_dict(tiny.state_dict())
    gpu = gpu.cuda().eval()
    assert inference.resolve_plan("auto", torch.device("cuda")) == ("torch", "fp16")
    peak = reference.max() - reference.min()
    for precision in ("fp32", "fp16", "bf16", "auto"):
        whole = inference.predict_y(gpu, y, precision=precision)
        tiled = inference.predict_y(gpu, y, precision=precision, tile=8)
        limit = 60 if precision == "fp32" else 40
        assert psnr(whole, reference, peak) > limit, precision
        assert psnr(tiled, whole, peak) > limit, precision
        x = torch.from_numpy(y)[None, None].cuda()
        assert inference.predict_y(gpu, x, precision=precision, tile=8).device.type == "cuda"
    out = inference.upscale(gpu, photo, tile=8, self_ensemble=True)
    assert out.shape == (74, 58, 3) and out.dtype == np.uint8
