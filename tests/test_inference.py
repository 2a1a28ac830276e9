"""inference.py: the API (shapes, dtypes, precision paths, whole images) and the CLI. The pieces it is built from
have their own tests: test_tiling.py, test_runners.py and test_memory.py."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import ALLOCATOR_FAILURE, BF16_TOLERANCE, SMALL, fake_available, max_error, y_of

from srdensenet import image_files, imgproc, inference, memory, metrics, precision_probe
from srdensenet.checkpoint import save_checkpoint
from srdensenet.cli import upscale as upscale_cli
from srdensenet.model import SRDenseNet
from srdensenet.protocol_check import BUTTERFLY
from srdensenet.runners import FastRunner, resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")

def psnr(a, b, peak=1.0):
    return 10 * np.log10(peak**2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))






# ---- precision paths -------------------------------------------------------------------------------------------------

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
    hr = np.ascontiguousarray(image_files.read_image(BUTTERFLY)[64:192, 64:192])
    lr = imgproc.make_lr(hr, 4)
    fp32 = inference.upscale(model, lr, precision="fp32")
    bf16 = inference.upscale(model, lr, precision="bf16")
    assert psnr(imgproc.y_channel(bf16), imgproc.y_channel(fp32), 255) >= 50
    psnr_fp32, ssim_fp32 = metrics.score_image(fp32, hr, 4)
    psnr_bf16, ssim_bf16 = metrics.score_image(bf16, hr, 4)
    assert psnr_fp32 > 26  # the trained model, well above bicubic's 23.6 dB on this crop
    assert abs(psnr_bf16 - psnr_fp32) <= 0.03 and abs(ssim_bf16 - ssim_fp32) <= 0.001



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



def quantize(x, dtype):
    """Float [0, 1] -> the image's integer type, rounding half up (the output formula of upscale)."""
    if dtype == np.uint8:
        return imgproc.quantize_uint8(x)
    return np.floor(np.clip(x, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray", "rgb16"])
def test_colour_in_strips_equals_the_whole_image_formula(tiny, photo, monkeypatch, kind, workers):
    monkeypatch.setattr(memory, "STRIP_PIXELS", 100 * workers)  # ~2 HR rows a strip, the last one shorter
    monkeypatch.setattr(memory, "colour_workers", lambda: workers)  # strips on 1 or 3 threads at once: the same bits
    image = {"rgb": photo, "rgba": np.dstack([photo, photo[:, :, 0]]), "gray": photo[:, :, 1],
             "rgb16": photo.astype(np.uint16) * 257}[kind]
    out = inference.upscale(tiny, image, precision="fp32")
    if kind == "gray":
        y = ((16.0 + 219.0 * imgproc.to_float01(image)) / 255.0).astype(np.float32)
        sr_y = inference.predict_y(tiny, y, precision="fp32").astype(np.float64)
        expected = quantize((sr_y * 255.0 - 16.0) / 219.0, image.dtype)
    else:
        ycc = imgproc.rgb_to_ycbcr(image[:, :, :3])
        sr_y = inference.predict_y(tiny, (ycc[:, :, 0] / 255.0).astype(np.float32), precision="fp32")
        cbcr = imgproc.imresize(ycc[:, :, 1:], scale=2.0)
        rgb = imgproc.ycbcr_to_rgb(np.concatenate([sr_y.astype(np.float64)[:, :, None] * 255.0, cbcr], axis=2))
        expected = quantize(rgb, image.dtype)
        if kind == "rgba":
            expected = np.dstack([expected, imgproc.imresize(image[:, :, 3], scale=2.0)])
    np.testing.assert_array_equal(out, expected)



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
    assert upscale_cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "exists, skipped" in err and "1 written, 1 skipped (already there), 0 failed, of 2 images" in err
    assert (out / "a.png").read_bytes() == b"an earlier result"
    assert cv2.imread(str(out / "b.png")).shape == (74, 58, 3)
    assert upscale_cli.main([*argv, "--force"]) == 0
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
    assert upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "-i", str(root), "-o", str(root / "results"),
                           "--precision", "fp32"]) == 0
    written = sorted(str(p.relative_to(root / "results")) for p in (root / "results").rglob("*.png"))
    assert written == ["nested/deeper/p.png", "nested/p.png", "p.png"]
    assert "3 written" in capsys.readouterr().err


@pytest.mark.parametrize("value,path", [("1", "fast path bf16"), ("0", "fast path fp32")])
def test_cli_says_what_auto_became_and_why(tmp_path, tiny, photo, monkeypatch, capsys, value, path):
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, value)
    save_checkpoint(tmp_path / "w.pth", tiny)
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    argv = ["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "a.png"), "--device", "cpu", "-o"]
    assert upscale_cli.main([*argv, str(tmp_path / "auto.png")]) == 0
    assert f"torch {path} (auto: {precision_probe.FAST_BF16_ENV}={value})," in capsys.readouterr().err
    assert upscale_cli.main([*argv, str(tmp_path / "named.png"), "--precision", "bf16"]) == 0
    assert "torch fast path bf16, " in capsys.readouterr().err  # a precision named: nothing was decided


def test_cli_usage_errors(tmp_path, tiny, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    assert upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "nope.png"),
                           "-o", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "w.pth"), "-o",
                           str(tmp_path), "--precision", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA" in capsys.readouterr().err

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
    code = upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--precision", "fp32-cl", "--backend", "torch", "--tile", "40"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if "big.png" in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'in' / 'big.png'} (29x37 px): ran out of")
    # On 29x37 px no tile saves enough memory to be worth its time: none is proposed
    assert "DefaultCPUAllocator" in lines[0] and lines[0].endswith("free some memory or try a smaller image")
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
    assert "the budget is 1 MiB (max_memory)" in errors[0] and "untiled" in errors[0]
    assert "try --max-memory " in errors[0] and "--tile" not in errors[0]  # what would be met
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out.png").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_cli_faked_low_memory_fails_every_image_cleanly(tmp_path, tiny, photo, monkeypatch, capsys):
    # No --max-memory: the budget comes from the memory "available" (faked at 1 MB), as under a real ulimit -v.
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_photos(tmp_path / "in", photo)
    fake_available(monkeypatch, 2**20)
    code = upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o",
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
            upscale_cli.main([*base, "-o", str(tmp_path / "x.png"), *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert upscale_cli.main([*base, "-o", str(tmp_path / "x.png"), "--max-memory", "4GB", "--tile", "8"]) == 2
    assert "--max-memory sets the budget of --tile auto" in capsys.readouterr().err
    for option in (["--max-memory", "1.5G"], ["--tile", "0"], ["--tile", "auto", "--max-memory", "512MB"]):
        assert upscale_cli.main([*base, "-o", str(tmp_path / "ok.png"), "--force", *option]) == 0
        captured = capsys.readouterr()
        assert "small.png" in captured.out and "untiled" in captured.out
    assert "the budget is 512 MiB (max_memory)" in captured.err

# ---- CUDA ------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reduced_precision_and_tiling(tiny, photo):
    y = y_of(photo)
    reference = inference.predict_y(tiny, y, precision="fp32")  # CPU model
    gpu = SRDenseNet(**tiny.arch)
    gpu.load_state_dict(tiny.state_dict())
    gpu = gpu.cuda().eval()
    assert resolve_plan("auto", torch.device("cuda")) == ("torch", "fp16")
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



def test_cli_photos_come_out_upright_colour_true_with_their_metadata(tmp_path, tiny, capsys):
    from helpers import DATE, exif_bytes, p3_like_profile
    from PIL import ExifTags, Image

    save_checkpoint(tmp_path / "w.pth", tiny)
    upright = np.ascontiguousarray(np.random.default_rng(1).integers(0, 256, (128, 96, 3), dtype=np.uint8)[::2, ::2])
    sideways = np.rot90(upright, 1)  # upright 48x64 (WxH), stored 64x48; Orientation 6 turns it back clockwise
    Image.fromarray(np.ascontiguousarray(sideways)).save(tmp_path / "side.jpg", exif=exif_bytes(6), quality=95)
    icc = p3_like_profile()
    Image.fromarray(upright).save(tmp_path / "p3.png", icc_profile=icc)
    base = ["--weights", str(tmp_path / "w.pth"), "--precision", "fp32", "--backend", "torch"]
    assert upscale_cli.main([*base, "-i", str(tmp_path / "side.jpg"), "-o", str(tmp_path / "out")]) == 0
    out = Image.open(tmp_path / "out" / "side.png")
    assert out.size == (96, 128) and out.getexif().get(ExifTags.Base.Orientation, 1) == 1
    stored_upright = np.asarray(Image.open(tmp_path / "side.jpg").transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(out), inference.upscale(tiny, stored_upright, precision="fp32"))
    assert upscale_cli.main([*base, "-i", str(tmp_path / "p3.png"), "-o", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "p3.png").info["icc_profile"] == icc
    assert upscale_cli.main([*base, "-i", str(tmp_path / "side.jpg"), "-o", str(tmp_path / "jpg"), "--format", "jpg",
                           "--quality", "90"]) == 0
    exif = Image.open(tmp_path / "jpg" / "side.jpg").getexif()
    assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == DATE
    assert upscale_cli.main([*base, "-i", str(tmp_path / "side.jpg"), "-o", str(tmp_path / "s.webp"),
                           "--strip-metadata"]) == 0
    assert not Image.open(tmp_path / "s.webp").getexif() and Image.open(tmp_path / "s.webp").size == (96, 128)


def test_cli_formats_and_their_refusals(tmp_path, tiny, photo, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    image_files.write_image(tmp_path / "a.png", photo)
    image_files.write_image(tmp_path / "b.jpg", photo)
    image_files.write_image(tmp_path / "deep.png", photo.astype(np.uint16) * 257)
    base = ["--weights", str(tmp_path / "w.pth"), "--precision", "fp32", "--backend", "torch"]
    files = [str(tmp_path / n) for n in ("a.png", "b.jpg")]
    for fmt, names in {"png": ["a.png", "b.png"], "jpg": ["a.jpg", "b.jpg"], "webp": ["a.webp", "b.webp"],
                       "same": ["a.png", "b.jpg"]}.items():
        assert upscale_cli.main([*base, "-i", *files, "-o", str(tmp_path / fmt), "--format", fmt]) == 0
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == names
        assert all(image_files.read_image(tmp_path / fmt / n).shape == (74, 58, 3) for n in names)
    capsys.readouterr()
    assert upscale_cli.main([*base, "-i", files[0], "-o", str(tmp_path / "x.jpg"), "--format", "png"]) == 2
    assert "--format png contradicts -o" in capsys.readouterr().err
    assert upscale_cli.main([*base, "-i", files[0], "-o", str(tmp_path / "x.png"), "--quality", "80"]) == 2
    assert "--quality applies to JPEG and WebP" in capsys.readouterr().err
    # A format that cannot hold the image: written as PNG instead, said in one line (test_first_hour_commands.py)
    assert upscale_cli.main([*base, "-i", str(tmp_path / "deep.png"), "-o", str(tmp_path / "d.jpg")]) == 0
    assert (f"warning: {tmp_path / 'deep.png'}: JPEG holds no 16-bit pixels; written as {tmp_path / 'd.png'}"
            in capsys.readouterr().err)
    assert image_files.read_image(tmp_path / "d.png").dtype == np.uint16
    assert not (tmp_path / "d.jpg").exists() and not (tmp_path / "x.jpg").exists()
