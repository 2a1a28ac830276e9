"""runners.py: which runner a request resolves to, the fast path against the fp32 reference (eager NCHW,
model.forward's own operations) -- every scale, variant and layout, odd sizes, tiled and untiled, in fp32 and bf16,
with ``auto`` forced to each CPU class, and under oneDNN's AVX2-only emulation -- ONNX Runtime, shape buckets, and the
cache of prepared copies. Tolerances as in test_inference.py: fp32 to float rounding, bf16 within 8 units of bf16
rounding relative to the output's magnitude."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import BACKENDS, BF16_TOLERANCE, FP32_TOLERANCE, HAS_ORT, max_error, y_of
from torch.overrides import TorchFunctionMode

from srdensenet import hardware, inference, precision_probe, runners
from srdensenet.model import LAYOUTS, SCALES, VARIANTS, SRDenseNet
from srdensenet.runners import FastRunner, prepared_runner, resolve_plan, shape_bucket

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(num_blocks=3, layers_per_block=3, growth_rate=4, num_features=8, bottleneck_features=12)


def small_model(scale: int, variant: str, layout: str, seed: int = 0) -> SRDenseNet:
    torch.manual_seed(seed)
    return SRDenseNet(scale, variant, layout, **SMALL).eval()


# ---- which runner ----------------------------------------------------------------------------------------------------


def test_resolve_plan(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_plan("fp32", cpu) == ("torch", "fp32")
    assert resolve_plan("fp32-cl", cpu) == ("torch", "fp32-cl")
    assert resolve_plan("bf16", cpu) == ("torch", "bf16")
    if HAS_ORT:
        assert resolve_plan("fp32-cl", cpu, "onnxruntime") == ("onnxruntime", "fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_plan("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_plan("int8", cpu)
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: True)
    assert resolve_plan("auto", cpu) == ("torch", "bf16")
    monkeypatch.setattr(hardware, "cpu_bf16_is_fast", lambda: False)  # e.g. an AVX2-only CPU: bf16 is emulated
    assert resolve_plan("auto", cpu) == ("torch", "fp32-cl")
    monkeypatch.setattr(runners, "onnxruntime_available", lambda: False)
    with pytest.raises(ValueError, match="onnxruntime"):
        resolve_plan("auto", cpu, "onnxruntime")



# ---- the fast path ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", SCALES)
def test_fast_path_equals_the_reference(scale, variant, layout):
    model = small_model(scale, variant, layout)
    x = torch.rand(1, 1, 19, 30)  # odd, non-square, not a bucket size (runs padded to 32x32)
    reference = inference.predict_y(model, x, precision="fp32")
    for tile in (None, 7):  # 7 < the receptive field (11): every tile's margin reaches into its neighbours
        fp32 = inference.predict_y(model, x, precision="fp32-cl", tile=tile)
        assert fp32.shape == reference.shape == (1, 1, 19 * scale, 30 * scale)
        assert (fp32 - reference).abs().max().item() <= FP32_TOLERANCE, tile
        bf16 = inference.predict_y(model, x, precision="bf16", tile=tile)
        assert 0 < max_error(bf16, reference) <= BF16_TOLERANCE, tile


@pytest.mark.parametrize("size", [(1, 1), (2, 33), (16, 16), (47, 5)])
def test_odd_and_bucket_sizes(size):
    model = small_model(4, "all", "paper", seed=1)
    x = torch.rand(2, 1, *size)  # a batch of 2 too
    reference = inference.predict_y(model, x, precision="fp32")
    assert (inference.predict_y(model, x, precision="fp32-cl") - reference).abs().max().item() <= FP32_TOLERANCE


@pytest.mark.parametrize("fast_bf16,dtype", [("1", torch.bfloat16), ("0", torch.float32)])
def test_auto_on_each_cpu_class(monkeypatch, fast_bf16, dtype):
    # "auto" chosen by hand (precision_probe.FAST_BF16_ENV): bf16 -> the bf16 fast path, else the fp32 one.
    monkeypatch.setenv(precision_probe.FAST_BF16_ENV, fast_bf16)
    model = small_model(2, "all", "paper")
    x = torch.rand(1, 1, 21, 18)
    reference = inference.predict_y(model, x, precision="fp32")
    auto = inference.predict_y(model, x, precision="auto", tile=9)
    assert prepared_runner(model, "torch", resolve_plan("auto", torch.device("cpu"))[1]).dtype == dtype
    tolerance = BF16_TOLERANCE if dtype == torch.bfloat16 else FP32_TOLERANCE / reference.abs().max().item()
    assert max_error(auto, reference) <= tolerance


class CatRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.channels: list[int] = []
        self.storages: set[int] = set()  # where the concatenations were written

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.cat:
            self.channels.append(out.shape[1])
            self.storages.add(out.untyped_storage().data_ptr())
        return out


def test_no_concatenation_wider_than_a_block():
    # The point of the push plan: the "all" variant's growing feature stack (up to 8 + 3 * 12 = 44 maps here) is never
    # built; only a block's own layer outputs are concatenated.
    model = small_model(2, "all", "paper")
    runner = FastRunner(model, "fp32-cl")
    x = torch.rand(1, 1, 16, 16)
    with CatRecorder() as recorder:
        features = runner.trunk(x)
    block_out = SMALL["layers_per_block"] * SMALL["growth_rate"]
    assert recorder.channels and max(recorder.channels) == block_out
    # ... and every concatenation is written into one buffer, allocated once per call rather than once per layer
    assert len(recorder.channels) == SMALL["num_blocks"] * SMALL["layers_per_block"] and len(recorder.storages) == 1
    with torch.no_grad():
        expected = model.trunk(x)  # which concatenates 8 + 12 + 12 + 12 maps for the bottleneck
    assert (features - expected).abs().max().item() <= FP32_TOLERANCE


class CallRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d and args[1].shape[-1] == 1:
            self.calls.append("1x1 conv")
        elif func is torch.Tensor.addmm_:
            self.calls.append("addmm_")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_bottleneck_adds_its_shares_in_place(variant):
    # fp32-cl: the oldest source's 1x1 share starts the sum, every later one is added into it by addmm_ (no fresh
    # 256-map share per source); bf16: one 1x1 convolution over the gathered sources.
    model = small_model(2, variant, "paper")
    sources = {"all": SMALL["num_blocks"] + 1, "hl": 2, "h": 1}[variant]
    x = torch.rand(1, 1, 16, 16)
    for precision, expected in (("fp32-cl", ["1x1 conv"] + ["addmm_"] * (sources - 1)), ("bf16", ["1x1 conv"])):
        with CallRecorder() as recorder:
            FastRunner(model, precision).trunk(x)
        assert recorder.calls == expected, precision


def test_weights_are_prepared_once_in_the_path_dtype():
    model = small_model(4, "hl", "port")
    inference.predict_y(model, torch.rand(1, 1, 9, 9), precision="bf16")
    runner = prepared_runner(model, "torch", "bf16")
    assert prepared_runner(model, "torch", "bf16") is runner  # cached
    assert runner.low_level[0].dtype == torch.float32 and runner.taps.dtype == torch.float32  # the exact ends
    assert all(w.dtype == torch.bfloat16 for layers in runner.layers for w, _ in layers)
    assert all(p.weight.dtype == torch.bfloat16 for p in runner.pushes if p is not None)
    with torch.no_grad():
        model.bottleneck.weight.mul_(2)  # an in-place change of the weights is seen (the cache's state signature)
    assert prepared_runner(model, "torch", "bf16") is not runner


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reconstruction_taps_equal_the_fp32_convolution(dtype):
    model = small_model(2, "all", "paper")
    runner = FastRunner(model, "fp32-cl")
    x = torch.relu(torch.randn(2, SMALL["bottleneck_features"], 37, 3000 // 37)).to(dtype)  # > one chunk of pixels
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = F.conv2d(x.double(), model.reconstruction.weight.double(), model.reconstruction.bias.double(),
                            padding=1)
    assert (runner.reconstruct(x).double() - expected).abs().max().item() <= 1e-5


def test_bf16_under_avx2_emulation(repo_root):
    # oneDNN capped at AVX2 (an AMD EPYC's ISA) emulates bf16: the same path must still be right there. oneDNN reads
    # the cap once per process, hence the subprocess.
    code = (
        "import json, torch\n"
        "from srdensenet import inference\n"
        "from srdensenet.model import SRDenseNet\n"
        "torch.manual_seed(0)\n"
        f"m = SRDenseNet(3, 'all', 'paper', **{SMALL!r}).eval()\n"
        "x = torch.rand(1, 1, 13, 22)\n"
        "ref = inference.predict_y(m, x, precision='fp32')\n"
        "out = {p: inference.predict_y(m, x, precision=p, tile=6) for p in ('bf16', 'fp32-cl')}\n"
        "print(json.dumps({p: ((o - ref).abs().max() / ref.abs().max()).item() for p, o in out.items()}))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo_root,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < errors["bf16"] <= BF16_TOLERANCE and errors["fp32-cl"] <= 1e-5


def test_a_model_built_under_inference_mode():
    # Its parameters are inference tensors, which keep no version counter: the cache falls back to their values.
    with torch.inference_mode():
        torch.manual_seed(0)
        model = SRDenseNet(2, **SMALL).eval()
        x = torch.rand(1, 1, 9, 11)
        first = inference.predict_y(model, x, precision="fp32-cl")
        assert (first - model(x)).abs().max().item() <= FP32_TOLERANCE
        model.reconstruction.bias.add_(1.0)  # in place, untracked: seen through the values
        second = inference.predict_y(model, x, precision="fp32-cl")
    assert (second - first - 1.0).abs().max().item() <= FP32_TOLERANCE


# ---- the other fp32 paths agree with the reference ------------------------------------------------------------------


@pytest.mark.parametrize("precision,backend", [("fp32-cl", "torch"), ("fp32", "onnxruntime")])
def test_fast_fp32_backends_match_reference(tiny, photo, precision, backend):
    if backend not in BACKENDS:
        pytest.skip("onnxruntime is not installed (requirements-dev.txt)")
    y = y_of(photo)
    reference = inference.predict_y(tiny, y, precision="fp32")
    fast = inference.predict_y(tiny, y, precision=precision, backend=backend)
    assert np.abs(fast - reference).max() <= FP32_TOLERANCE



# ---- shape buckets (the fast paths' bounded set of input shapes) ---------------------------------------------------


def test_shape_buckets():
    assert [shape_bucket(n) for n in (1, 16, 17, 100, 300, 513, 1000)] == [16, 16, 32, 112, 304, 544, 1024]


def test_shape_bucket_sizes():
    buckets = [shape_bucket(n) for n in range(1, 4097)]
    assert all(b >= n and b % 16 == 0 for n, b in enumerate(buckets, 1))
    assert all(b <= n * 1.0625 for n, b in enumerate(buckets, 1) if n >= 256)
    assert buckets == sorted(buckets)
    assert len(set(buckets)) == 16 + 16 + 16 + 16 + 16  # 16..256 in steps of 16, then 16 per octave to 4096


@pytest.mark.parametrize("scale,layout,variant", [(2, "paper", "all"), (3, "paper", "h"), (4, "port", "hl"),
                                                  (8, "paper", "all")])
def test_bucketed_fast_path_equals_reference(scale, layout, variant):
    model = small_model(scale, variant, layout)
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
    monkeypatch.setattr(FastRunner, "relu_inside", staticmethod(lambda t, valid: torch.relu_(t)))
    x = torch.rand(1, 1, 17, 30)
    reference = inference.predict_y(tiny, x, precision="fp32")
    fast = inference.predict_y(tiny, x, precision="fp32-cl", backend="torch")
    assert (fast - reference).abs().max().item() > 1e-4


@pytest.mark.parametrize("precision", ["fp32-cl", "bf16"])
def test_fast_path_meets_few_shapes(tiny, precision, monkeypatch):
    # What keeps a long process's memory flat (benchmarks/soak_inference.py): 60 image sizes -> 4 conv input shapes.
    shapes = set()
    pad = FastRunner.pad

    def record(self, x, size):
        out = pad(self, x, size)
        if x.shape[1] == 1:  # the trunk's Y input (the upsampler's windows have more maps)
            shapes.add(tuple(out[0].shape))
        return out

    monkeypatch.setattr(FastRunner, "pad", record)
    for h in range(3, 63):
        inference.predict_y(tiny, torch.rand(1, 1, h, 65 - h), precision=precision, backend="torch")
    assert shapes == {(1, 1, a, b) for a, b in [(16, 64), (32, 48), (48, 32), (64, 16)]}



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
    runners.clear_prepared(tiny)
    assert (cached() - fresh(tiny)).abs().max() <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "fp32-cl", "bf16"])
def test_users_model_is_not_modified(tiny, precision):
    tiny.train()
    inference.predict_y(tiny, torch.rand(1, 1, 8, 8), precision=precision)
    assert tiny.training
    assert tiny.low_level.weight.is_contiguous() and tiny.low_level.weight.dtype == torch.float32

