"""train_step.py: the one step on both batch sources, the EMA and Adam's flags, and train.py --data-on-device on the
CPU (exact resume, plan and option checks); the CUDA-only pieces (fused Adam, the whole-step CUDA graph) skip without
CUDA and run in scripts/gpu_smoke.sh.
"""

import contextlib

import numpy as np
import pytest
import skimage.data
import torch
from helpers import losses, run_train

from srdensenet.checkpoint import load_checkpoint, model_from_checkpoint
from srdensenet.dataset import TrainDataset, make_train_loader
from srdensenet.device_pool import DevicePool
from srdensenet.hardware import exact_fp32
from srdensenet.model import SRDenseNet
from srdensenet.train_step import (
    GraphedStep,
    LoaderBatches,
    ModelEma,
    PoolBatches,
    TrainStep,
    adam_options,
    make_adam,
    restore_adam_options,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_smoke.sh)")
FAST = ["--data-on-device", "--ema-decay", "0.9", "--grad-clip", "1", "--epochs", "3"]


def test_fast_path_stop_and_resume_reproduces_uninterrupted_losses(repo_root, data, tmp_path):  # noqa: F811
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(repo_root, data, full, *FAST)
    run_train(repo_root, data, part, *FAST, "--stop-at-step", "7")  # mid-epoch 2
    assert max(losses(part)) == 7
    run_train(repo_root, data, part, *FAST, "--resume", "auto")
    assert losses(part) == losses(full) and len(losses(full)) == 15  # bit-exact on CPU
    a = load_checkpoint(full / "t" / "checkpoints" / "last.pth")
    b = load_checkpoint(part / "t" / "checkpoints" / "last.pth")
    for key in ("model", "ema"):
        assert all(torch.equal(x, y) for x, y in zip(a[key].values(), b[key].values())), key
    assert a["plan"]["data_on_device"] is True
    assert a["optimizer"]["param_groups"][0]["foreach"] is True  # the CPU fast path's Adam


def test_fast_path_learns_and_differs_from_the_loader_path(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path / "fast", *FAST)
    run_train(repo_root, data, tmp_path / "loader", "--ema-decay", "0.9", "--grad-clip", "1", "--epochs", "3")
    fast, loader = losses(tmp_path / "fast"), losses(tmp_path / "loader")
    assert fast.keys() == loader.keys() and fast != loader  # other samples (its own hash), same schedule
    steps = sorted(fast)
    assert sum(fast[s] for s in steps[-3:]) < sum(fast[s] for s in steps[:3])
    model_from_checkpoint(tmp_path / "fast" / "t" / "checkpoints" / "best.pth")  # a normal checkpoint


def test_switching_paths_on_resume_is_a_plan_change(repo_root, data, tmp_path):  # noqa: F811
    run_train(repo_root, data, tmp_path, "--epochs", "2", "--stop-at-step", "3")
    refused = run_train(repo_root, data, tmp_path, "--epochs", "2", "--resume", "auto", "--data-on-device",
                        check=False)
    assert refused.returncode == 1 and "data_on_device: False -> True" in refused.stderr
    run_train(repo_root, data, tmp_path, "--epochs", "2", "--resume", "auto", "--data-on-device",
              "--resume-override")
    state = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pth")
    assert state["step"] == 10 and state["optimizer"]["param_groups"][0]["foreach"] is True


@pytest.mark.parametrize("extra, message", [
    (["--cuda-graph"], "--cuda-graph needs --data-on-device"),
    (["--cuda-graph", "--data-on-device"], "--cuda-graph needs a CUDA device"),
    (["--compile-mode", "fast"], "--compile-mode must be one of default, reduce-overhead"),
])
def test_fast_path_options_that_cannot_work_are_refused(repo_root, data, tmp_path, extra, message):  # noqa: F811
    result = run_train(repo_root, data, tmp_path, "--epochs", "1", "--device", "cpu", *extra, check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t").exists()


def test_ema_follows_the_ramped_decay(tiny_arch):
    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch)
    ema = ModelEma(model, 0.75)
    expected = [t.clone() for t in model.state_dict().values()]
    for n in range(1, 31):  # the ramp (1 + n) / (10 + n) reaches the decay 0.75 at n = 26: both regimes run
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        decay = min(0.75, (1 + n) / (10 + n))
        expected = [e * decay + t * (1 - decay) for e, t in zip(expected, model.state_dict().values())]
    assert ema.updates == 30
    for a, b in zip(ema.module.state_dict().values(), expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ema_reaches_the_decay_and_sees_weights_loaded_in_place(tiny_arch):
    model = SRDenseNet(**tiny_arch)
    ema = ModelEma(model, 0.5)
    weight = ema.next_weight()  # n = 1: min(0.5, 2 / 11)
    assert weight == pytest.approx(1 - 2 / 11) and ema.updates == 1
    ema.updates = 100
    assert ema.next_weight() == pytest.approx(0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # what load_weights does: copies into the model's tensors
    for _ in range(40):
        ema.update()
    assert all(torch.allclose(t, torch.ones_like(t), atol=1e-6) for t in ema.floats)


def test_restore_adam_options_after_loading_a_plain_adams_state(tiny_arch):
    model = SRDenseNet(**tiny_arch)
    loader_flags = adam_options(torch.device("cpu"), data_on_device=False)
    plain = make_adam(model, 1e-3, (0.9, 0.999), 0.0, loader_flags)
    assert plain.param_groups[0]["foreach"] is None  # the loader path keeps torch's defaults
    model(torch.rand(1, 1, 6, 6)).mean().backward()
    plain.step()
    flags = adam_options(torch.device("cpu"), data_on_device=True)
    fast = make_adam(model, 1e-3, (0.9, 0.999), 0.0, flags)
    fast.load_state_dict(plain.state_dict())
    assert fast.param_groups[0]["foreach"] is None  # what load_state_dict does: the saved run's flags
    restore_adam_options(fast, flags)
    assert fast.param_groups[0]["foreach"] is True
    fast.step()  # runs with the restored flags and the loaded state
    assert all(s["step"].item() == 2 for s in fast.state.values())
    back = make_adam(model, 1e-3, (0.9, 0.999), 0.0, loader_flags)  # and the other way round
    back.load_state_dict(fast.state_dict())
    restore_adam_options(back, loader_flags)
    assert back.param_groups[0]["foreach"] is None and all(s["step"].item() == 2 for s in back.state.values())


def _pool(device: str) -> DevicePool:
    images = [skimage.data.astronaut()[:64, :80], skimage.data.coffee()[:48, :56]]
    return DevicePool([np.ascontiguousarray(i) for i in images], 2, 16, patches_per_image=16, seed=1, device=device)


def test_pool_batches_give_each_process_its_slice_of_the_batch():
    pool = _pool("cpu")
    alone, second = PoolBatches(pool, 8), PoolBatches(pool, 8, world_size=2, rank=1)
    assert list(alone.epoch(0, 1)) == [1, 2, 3] and list(second.epoch(0, 3)) == [3]  # 32 samples: 4 batches
    lr, hr = alone(2)
    lr_1, hr_1 = second(2)
    assert lr.shape == (8, 1, 8, 8) and hr.shape == (8, 1, 16, 16)
    assert torch.equal(lr_1, lr[4:]) and torch.equal(hr_1, hr[4:])


def test_loader_batches_resume_an_epoch_with_its_own_batches(data):  # noqa: F811
    dataset = TrainDataset([str(data / "train")], 2, 16, patches_per_image=10, seed=3)
    batches = LoaderBatches(make_train_loader(dataset, 4, 0, torch.device("cpu")), torch.device("cpu"))
    whole = [batches(b) for b in batches.epoch(1, 0)]
    tail = [batches(b) for b in batches.epoch(1, 3)]
    assert len(whole) == 5 and len(tail) == 2
    for (lr_a, hr_a), (lr_b, hr_b) in zip(whole[3:], tail):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    assert not torch.equal(whole[0][1], [batches(b) for b in batches.epoch(2, 0)][0][1])  # another epoch


def _steps(step_class, tiny_arch, device, dtype=torch.float32, steps=4, flags=None):
    torch.manual_seed(0)
    model = SRDenseNet(**tiny_arch).to(device)
    flags = adam_options(torch.device(device), True, step_class is GraphedStep) if flags is None else flags
    optimizer = make_adam(model, 1e-3, (0.9, 0.999), 0.0, flags)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0 / (1 + n))
    ema, pool = ModelEma(model, 0.9), _pool(device)
    pool.set_epoch(0)
    run = step_class(model, model, optimizer, scheduler, torch.amp.GradScaler(device, enabled=False), ema,
                     PoolBatches(pool, 4), dtype=dtype, grad_clip=1.0)
    assert steps * 4 <= len(pool)  # within one epoch (an index past it is a device-side assert on CUDA)
    values = [float(run(index)) for index in range(steps)]
    return values, model, ema


def test_train_step_on_cpu_is_deterministic(tiny_arch):
    first, model_a, _ = _steps(TrainStep, tiny_arch, "cpu")
    second, model_b, _ = _steps(TrainStep, tiny_arch, "cpu")
    assert first == second and all(np.isfinite(first))
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


class FakeGraph:
    """torch.cuda.CUDAGraph on the CPU for GraphedStep's bookkeeping: the 'capture' runs the body once (its effects
    are undone like the warm-up's), a replay runs it again into the same output, with grads written afresh as the
    captured backward writes them. It cannot show values a real capture would freeze; the CUDA tests below do."""

    step = None

    def replay(self) -> None:
        FakeGraph.step.optimizer.zero_grad(set_to_none=True)
        FakeGraph.step.loss.copy_(FakeGraph.step.body())


class FakeStream:
    def wait_stream(self, other) -> None:
        pass


def test_graphed_step_bookkeeping_on_cpu_matches_the_eager_step(tiny_arch, monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    original = GraphedStep.capture_graph

    def capture(self):
        FakeGraph.step = self
        original(self)

    monkeypatch.setattr(GraphedStep, "capture_graph", capture)
    plain = {"foreach": False}  # a tensor learning rate needs single-tensor Adam on the CPU
    eager, model_e, ema_e = _steps(TrainStep, tiny_arch, "cpu", steps=6, flags=plain)
    graphed, model_g, ema_g = _steps(GraphedStep, tiny_arch, "cpu", steps=6, flags=plain)
    assert graphed == pytest.approx(eager, rel=1e-5)  # the warm-up and the 'capture' step were undone
    for a, b in zip(model_e.parameters(), model_g.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(ema_e.floats, ema_g.floats):  # sub/mul/add against lerp: rounding only
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert ema_g.updates == 6 and FakeGraph.step.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 7)


@pytest.fixture
def exact_cuda(monkeypatch):
    """fp32 without TF32, deterministic cuDNN: what is left between two runs is the arithmetic compared."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with exact_fp32(torch.device("cuda")):
        yield


@CUDA
def test_fused_adam_step_matches_the_cpu_step(tiny_arch, exact_cuda):
    cpu, _, _ = _steps(TrainStep, tiny_arch, "cpu")
    cuda, _, _ = _steps(TrainStep, tiny_arch, "cuda")
    assert cuda == pytest.approx(cpu, rel=1e-3)  # the same batches; fused Adam and cuDNN round differently


@CUDA
def test_cuda_graph_step_matches_the_eager_step(tiny_arch, exact_cuda):
    eager, model_e, ema_e = _steps(TrainStep, tiny_arch, "cuda", steps=6)
    graphed, model_g, ema_g = _steps(GraphedStep, tiny_arch, "cuda", steps=6)
    assert graphed == pytest.approx(eager, rel=1e-3)  # warm-up undone: the graph starts where eager starts
    for a, b in zip(list(model_e.parameters()) + ema_e.floats, list(model_g.parameters()) + ema_g.floats):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)  # Adam's steps are ~1e-3: a wrong step shows


@CUDA
def test_cuda_graph_step_in_bf16_runs(tiny_arch):
    values, _, _ = _steps(GraphedStep, tiny_arch, "cuda", dtype=torch.bfloat16, steps=4)
    assert all(np.isfinite(values))
