import subprocess
import sys

import pytest
import torch

from checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
    strip_prefixes,
)
from model import SRDenseNet


def test_round_trip_is_bit_exact_and_weights_only(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 1, 8, 8)).mean().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, optimizer=optimizer.state_dict(), epoch=3, step=7, rng=capture_rng_state(),
                    config={"upscale_factor": 2})
    raw = torch.load(path, weights_only=True)  # must not need unsafe unpickling
    assert raw["arch"] == tiny_arch and raw["epoch"] == 3
    loaded = model_from_checkpoint(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training and loaded.upscale_factor == 2


def test_ema_weights_preferred(tmp_path, tiny_arch):
    model, ema = SRDenseNet(**tiny_arch), SRDenseNet(**tiny_arch)
    save_checkpoint(tmp_path / "c.pth", model, ema_model=ema)
    loaded = model_from_checkpoint(tmp_path / "c.pth")
    raw_model = model_from_checkpoint(tmp_path / "c.pth", prefer_ema=False)
    assert torch.equal(loaded.low_level.weight, ema.low_level.weight)
    assert torch.equal(raw_model.low_level.weight, model.low_level.weight)


def test_half_storage_loads_into_fp32(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    save_checkpoint(tmp_path / "h.pth", model, half=True)
    loaded = model_from_checkpoint(tmp_path / "h.pth")
    assert loaded.low_level.weight.dtype == torch.float32
    assert torch.allclose(loaded.low_level.weight, model.low_level.weight, atol=1e-3)


def test_prefixes_stripped():
    sd = {"module._orig_mod.low_level.weight": 1, "_orig_mod.module.bottleneck.bias": 2, "reconstruction.bias": 3}
    assert strip_prefixes(sd) == {"low_level.weight": 1, "bottleneck.bias": 2, "reconstruction.bias": 3}


def test_ddp_style_checkpoint_loads(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    save_checkpoint(tmp_path / "c.pth", model)
    raw = torch.load(tmp_path / "c.pth", weights_only=True)
    raw["model"] = {"module." + k: v for k, v in raw["model"].items()}
    torch.save(raw, tmp_path / "ddp.pth")
    assert torch.equal(model_from_checkpoint(tmp_path / "ddp.pth").low_level.weight, model.low_level.weight)


def test_rng_state_round_trip():
    import random

    import numpy as np
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


class _Evil:
    def __reduce__(self):
        return (print, ("PWNED",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "srdensenet-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_truncated_and_foreign_files(tmp_path, tiny_arch):
    save_checkpoint(tmp_path / "good.pth", SRDenseNet(**tiny_arch))
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="convert"):
        load_checkpoint(tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pth")


def test_failed_write_keeps_previous_file(tmp_path, tiny_arch, monkeypatch):
    model = SRDenseNet(**tiny_arch)
    save_checkpoint(tmp_path / "c.pth", model, epoch=1)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(tmp_path / "c.pth", model, epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pth")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary file left behind


def _port_state_dict(upsampling_style: str, scale: int = 4) -> dict:
    """A synthetic state dict with the reference port's key names and shapes (small random values)."""
    torch.manual_seed(0)
    sd = {"conv1.0.weight": torch.randn(128, 1, 3, 3), "conv1.0.bias": torch.randn(128)}
    for b in range(1, 9):
        for j in range(1, 9):
            cin = 128 * b if j == 1 else 16 * (j - 1)
            sd[f"dcb{b}.0.conv{j}.weight"] = torch.randn(16, cin, 3, 3)
            sd[f"dcb{b}.0.conv{j}.bias"] = torch.randn(16)
    sd["conv2.weight"], sd["conv2.bias"] = torch.randn(256, 1152, 1, 1), torch.randn(256)
    strides = [3] if scale == 3 else [2] * {2: 1, 4: 2, 8: 3}[scale]
    for i, s in enumerate(strides):
        key = f"upsampling.{i}.upsample_block.0" if upsampling_style == "new" else f"upsampling.{2 * i}"
        sd[f"{key}.weight"], sd[f"{key}.bias"] = torch.randn(256, 256, s, s), torch.randn(256)
    sd["conv3.weight"], sd["conv3.bias"] = torch.randn(1, 256, 3, 3), torch.randn(1)
    return {k: v * 0.05 for k, v in sd.items()}


@pytest.mark.parametrize("style, scale", [("old", 4), ("new", 4), ("new", 2), ("new", 3)])
def test_convert_port_weights(tmp_path, repo_root, style, scale):
    sd = _port_state_dict(style, scale)
    torch.save({"epoch": 10, "best_psnr": 31.0, "state_dict": sd}, tmp_path / "port.pth.tar")
    command = [sys.executable, "scripts/convert_port_weights.py", "--input", str(tmp_path / "port.pth.tar"),
               "--output", str(tmp_path / "ours.pth")]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = model_from_checkpoint(tmp_path / "ours.pth")
    assert model.arch["layout"] == "port" and model.upscale_factor == scale
    assert torch.equal(model.blocks[7].convs[0].weight, sd["dcb8.0.conv1.weight"])
    assert torch.equal(model.bottleneck.weight, sd["conv2.weight"])
    # The port's forward pass, written out from its published structure, must equal ours.
    x = torch.rand(1, 1, 6, 7)
    with torch.no_grad():
        assert torch.allclose(model(x), _port_forward(sd, x, scale), atol=1e-5)


def _port_forward(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    import torch.nn.functional as F
    out = F.relu(F.conv2d(x, sd["conv1.0.weight"], sd["conv1.0.bias"], padding=1))
    for b in range(1, 9):
        layers = []
        inp = out
        for j in range(1, 9):
            weight, bias = sd[f"dcb{b}.0.conv{j}.weight"], sd[f"dcb{b}.0.conv{j}.bias"]
            layers.append(F.relu(F.conv2d(inp, weight, bias, padding=1)))
            inp = torch.cat(layers, 1)
        out = torch.cat([inp, out], 1)
    out = F.conv2d(out, sd["conv2.weight"], sd["conv2.bias"])
    keys = sorted(k for k in sd if k.startswith("upsampling") and k.endswith("weight"))
    for k in keys:
        s = sd[k].shape[-1]
        out = F.relu(F.conv_transpose2d(out, sd[k], sd[k.replace("weight", "bias")], stride=s))
    return F.conv2d(out, sd["conv3.weight"], sd["conv3.bias"], padding=1)
