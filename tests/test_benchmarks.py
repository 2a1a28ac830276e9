"""benchmarks/: OpenVINO on the project's ONNX export (engines.py) against the fp32 reference, the speed table's
rows and ratios (bench_inference.py, without timing assertions), other engines in the quality table
(precision_quality.py) and when bf16 counts as emulated (machine.py)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import bench_inference
import bench_parts
import cold_start
import engines
import precision_quality
import pytest
import torch
from helpers import BF16_TOLERANCE, FP32_TOLERANCE

from srdensenet import imgproc, inference, precision_probe, runners
from srdensenet.checkpoint import save_checkpoint
from srdensenet.image_files import read_image, write_image

EMULATED = "bf16 emulated (no native bf16 instructions)"
CHILD_ENV = "SRDENSENET_TEST_OPENVINO_CHILD"
CELL = re.compile(r"[\d.]+ s, \*\*[\d.]+x\*\*, (\d+) GFLOP/s \((\d+)% of (fp32|bf16)\)")


def photo_y(photo) -> torch.Tensor:
    return torch.from_numpy(imgproc.y_channel(photo) / 255.0).float()[None, None]


@pytest.fixture
def openvino_in_a_child(request, repo_root) -> bool:
    """True when the test has been run, and passed, in a child pytest: OpenVINO loaded beside PyTorch in the suite's
    process made it crash later on (a segfault dozens of tests on, in about half the runs with openvino installed;
    none in five runs with it hidden), so a test that loads OpenVINO gets a process of its own."""
    if os.environ.get(CHILD_ENV) or importlib.util.find_spec("openvino") is None:
        return False
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                            cwd=repo_root, env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return True


def test_openvino_matches_the_fp32_reference(tiny, photo, openvino_in_a_child):
    pytest.importorskip("openvino")  # optional: requirements-bench.txt
    if openvino_in_a_child:
        return
    y = photo_y(photo)
    expected = inference.predict_y(tiny, y, precision="fp32")
    models = engines.openvino_models(tiny)
    assert len(models) == 2
    f32 = models["OpenVINO f32"]
    assert f32.runs_in == "f32" and f32.compile_s > 0
    got = f32(y)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=FP32_TOLERANCE, rtol=0)
    # Dynamic shapes: another size runs on the same compiled model, and does not overwrite the first result.
    smaller = f32(y[..., :20, :16])
    torch.testing.assert_close(smaller, inference.predict_y(tiny, y[..., :20, :16], precision="fp32"),
                               atol=FP32_TOLERANCE, rtol=0)
    torch.testing.assert_close(got, expected, atol=FP32_TOLERANCE, rtol=0)
    # The bf16 hint: bf16 where OpenVINO runs it natively (its name says so where it does not), else f32.
    (name, hinted), = ((n, m) for n, m in models.items() if n != "OpenVINO f32")
    assert hinted.runs_in in ("bf16", "f32") and ("(runs f32 here)" in name) == (hinted.runs_in == "f32")
    torch.testing.assert_close(hinted(y), expected, atol=BF16_TOLERANCE, rtol=0)


def test_an_openvino_hint_that_cannot_compile_here_is_left_out_with_one_line(tiny, monkeypatch, capsys):
    # As under ONEDNN_MAX_CPU_ISA=AVX2, which OpenVINO obeys: its bf16 hint then fails to compile a deconvolution.
    class FakeEngine:
        def __init__(self, graph: bytes, hint: str) -> None:
            if hint == "bf16":
                raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                                   "could not create a primitive descriptor for the deconvolution")
            self.runs_in = hint

    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    monkeypatch.setattr(engines, "model_onnx_bytes", lambda model: b"graph")
    monkeypatch.setattr(engines, "OpenVinoModel", FakeEngine)
    models = engines.openvino_models(tiny)
    assert list(models) == ["OpenVINO f32"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["OpenVINO bf16 hint row skipped: OpenVINO could not compile the model here (could not create "
                       "a primitive descriptor for the deconvolution)"]


def test_bench_parts_times_each_half_beside_openvino(tiny, monkeypatch, capsys, request):
    names = ["trunk, `auto` (fp32-cl)", "upsampler, `auto` (fp32-cl)"]  # the suite fakes an fp32 CPU
    if not os.environ.get(CHILD_ENV):  # OpenVINO hidden, as where it is not installed: the project's rows only
        with monkeypatch.context() as patch:
            patch.setattr(engines, "openvino_available", lambda: False)
            assert list(bench_parts.part_functions(tiny, 16)[1]) == names
            assert engines.OPENVINO_MISSING in capsys.readouterr().out
            times = bench_parts.part_times(tiny, 16, repeats=1)
        assert list(times) == names and all(seconds > 0 for seconds in times.values())
        request.getfixturevalue("openvino_in_a_child")  # where OpenVINO is installed: the rest, in a child
        return
    precision, rows = bench_parts.part_functions(tiny, 16)
    assert precision == "fp32-cl" and list(rows)[:2] == names and len(rows) == 4
    with torch.no_grad():  # OpenVINO on the same half computes the same features
        ours, theirs = rows[names[0]](), rows["trunk, OpenVINO f32 hint (runs f32)"]()
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def fake_peaks(dtype: torch.dtype) -> float:
    # Tiny peaks (GFLOP/s), different per precision, so the % column shows which peak a row is compared with.
    return {torch.float32: 1e-3, torch.bfloat16: 2e-3}[dtype]


@pytest.mark.parametrize("emulated,hide_openvino", [("", False), (EMULATED, True)])
def test_speed_table_rows_and_openvino_ratios(tiny, monkeypatch, capsys, emulated, hide_openvino, request):
    if not hide_openvino and request.getfixturevalue("openvino_in_a_child"):
        return
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, "0")  # auto is fp32-cl whatever this CPU is
    monkeypatch.setattr(bench_inference, "matmul_peak", fake_peaks)
    monkeypatch.setattr(precision_probe, "bf16_emulated", lambda: emulated)
    if hide_openvino:  # as where it is not installed: its rows are left out, with one line saying so
        monkeypatch.setattr(engines, "openvino_available", lambda: False)
    sizes = [16]
    lines, results = bench_inference.speed_table(tiny, sizes, {16: 1}, with_bf16=True)
    printed = capsys.readouterr().out

    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    auto = results["auto_row"]
    assert {bench_inference.EAGER, auto, bench_inference.STOCK["fp32"], bench_inference.UPSCALE} <= rows.keys()
    bf16_rows = {bench_inference.STOCK["bf16"], "`predict_y` fast path bf16"}
    if emulated:  # not timed, and the reason printed
        assert not bf16_rows & rows.keys() and emulated in printed
    else:
        assert bf16_rows <= rows.keys()
    assert ("ONNX Runtime fp32" in rows) == runners.onnxruntime_available()
    openvino = list(results["openvino_compile_s"])
    assert len(openvino) == (2 if engines.openvino_available() else 0) and set(openvino) <= rows.keys()
    assert (engines.OPENVINO_MISSING in printed) != engines.openvino_available()

    for name, cells in rows.items():
        for size, cell in zip(sizes, cells):
            match = CELL.search(cell)
            assert match, (name, cell)
            precision = match[3]
            runs_bf16 = name in bf16_rows or (name.startswith("OpenVINO bf16") and "runs f32" not in name)
            assert precision == ("bf16" if runs_bf16 else "fp32"), name
            gflops = results["flops_per_px"] * size * size / results[size][name] / 1e9
            assert int(match[1]) == round(gflops)
            peak = fake_peaks({"fp32": torch.float32, "bf16": torch.bfloat16}[precision])
            assert abs(int(match[2]) - 100 * gflops / peak) <= 1

    # auto against OpenVINO's faster mode, as a speed ratio (OpenVINO's time / auto's).
    ratios = bench_inference.engine_ratio_lines(results, sizes)
    if not openvino:
        assert ratios == []
        return
    times = results[16]
    fastest = min(openvino, key=times.__getitem__)
    assert len(ratios) == 3 and f"| {fastest} |" in ratios[2]
    assert f"**{times[fastest] / times[auto]:.2f}x**" in ratios[2]
    assert f"{times[fastest] / times[bench_inference.UPSCALE]:.2f}x" in ratios[2]


def test_quality_scores_other_engines_beside_the_precisions(tiny, photo):
    # Another engine (here: the fp32 reference itself, and the same shifted by one grey level) gets the Y the
    # precisions get and is scored the same way.
    hr = photo[:36, :28]
    others = {"same": lambda y: inference.predict_y(tiny, y, precision="fp32"),
              "brighter": lambda y: inference.predict_y(tiny, y, precision="fp32") + 1 / 255}
    result = precision_quality.scores(tiny, hr, ["fp32-cl"], others)
    assert set(result) == {"fp32", "fp32-cl", "same", "brighter"}
    assert result["same"] == result["fp32"] and result["brighter"] != result["fp32"]


def test_the_cold_start_child_times_every_step_of_the_command(tmp_path, tiny, photo, capsys):
    """cold_start.py's child (a fresh process there; in-process here) times each step the command takes and the
    warm compute the overhead is counted against."""
    save_checkpoint(tmp_path / "w.pth", tiny)
    write_image(tmp_path / "lr.png", photo[:24, :32])
    cold_start.child(str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), str(tmp_path / "w.pth"))
    times = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert list(times) == [*cold_start.STEPS, "warm predict_y", "warm upscale"]
    assert all(seconds >= 0 or name == cold_start.STEPS[5] for name, seconds in times.items())
    lr = read_image(tmp_path / "lr.png")
    assert read_image(tmp_path / "sr.png").shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
