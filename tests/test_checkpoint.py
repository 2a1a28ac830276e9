import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from srdensenet.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
    strip_prefixes,
    weights_digest,
)
from srdensenet.fileio import OutputError
from srdensenet.model import SRDenseNet
from srdensenet.train_step import make_adam

RELEASE = "weights/srdensenet_x4_all_paper.safetensors"


def test_round_trip_is_bit_exact_and_weights_only(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    optimizer = make_adam(model, 1e-3)
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
    with pytest.raises(CheckpointError, match="damaged"):  # edited after saving: its SHA-256 no longer fits
        load_checkpoint(tmp_path / "ddp.pth")
    del raw["contents_sha256"]  # as written by code without one: loads, with a note
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
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: loading it would run code \(it asks for the global "
                                              r"builtins\.print\); nothing in it was executed$"):
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
    with pytest.raises(OutputError, match="c.pth: cannot write .No space left"):
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


# ---- safetensors --------------------------------------------------------------------------------------------------


def _trained(arch: dict) -> SRDenseNet:
    """A model whose weights are not the initial ones (so a round trip cannot pass by re-initialising)."""
    torch.manual_seed(1)
    model = SRDenseNet(**arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("half", [False, True])
def test_safetensors_round_trip_is_bit_exact(tmp_path, tiny_arch, half):
    model = _trained(tiny_arch)
    save_checkpoint(tmp_path / "w.safetensors", model, half=half)
    checkpoint = load_checkpoint(tmp_path / "w.safetensors")
    for name, tensor in model.state_dict().items():
        stored = checkpoint["model"][name]
        assert stored.dtype == (torch.float16 if half else torch.float32)
        expected = tensor.half() if half else tensor
        assert torch.equal(stored, expected), name
    loaded = model_from_checkpoint(tmp_path / "w.safetensors")
    assert loaded.low_level.weight.dtype == torch.float32 and not loaded.training
    x = torch.rand(1, 1, 9, 7)
    with torch.no_grad():
        if not half:
            assert torch.equal(loaded(x), model(x))
        else:  # fp16 storage: equal to the model rebuilt from the same fp16 values, bit for bit
            reference = SRDenseNet(**tiny_arch)
            reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
            assert torch.equal(loaded(x), reference(x))


def test_safetensors_metadata(tmp_path, tiny_arch):
    model = _trained(tiny_arch)
    save_checkpoint(tmp_path / "w.safetensors", model, epoch=3, best_psnr=31.5, exported_from="runs/x.pth",
                    config={"upscale_factor": 2, "valid_dirs": ["a", "b"]}, note="true")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:  # any safetensors reader sees it
        header = handle.metadata()
    assert json.loads(header["arch"]) == tiny_arch
    assert header["format_version"] == str(FORMAT_VERSION) and header["checkpoint_format"] == "srdensenet-checkpoint"
    assert header["format"] == "pt" and header["exported_from"] == "runs/x.pth"  # plain strings stay readable
    checkpoint = load_checkpoint(tmp_path / "w.safetensors")
    assert checkpoint["arch"] == tiny_arch and checkpoint["format_version"] == FORMAT_VERSION
    assert checkpoint["epoch"] == 3 and checkpoint["best_psnr"] == 31.5 and checkpoint["exported_from"] == "runs/x.pth"
    assert checkpoint["config"] == {"upscale_factor": 2, "valid_dirs": ["a", "b"]}
    assert checkpoint["note"] == "true"  # a string that looks like JSON comes back as the string
    assert "ema" not in checkpoint and not checkpoint.get("used_ema")


def test_safetensors_stores_the_ema_weights(tmp_path, tiny_arch):
    model, ema = SRDenseNet(**tiny_arch), _trained(tiny_arch)
    save_checkpoint(tmp_path / "w.safetensors", model, ema_model=ema)
    checkpoint = load_checkpoint(tmp_path / "w.safetensors")
    assert checkpoint["used_ema"] is True
    assert torch.equal(model_from_checkpoint(checkpoint).low_level.weight, ema.low_level.weight)


def test_training_state_stays_pth(tmp_path, tiny_arch):
    model = SRDenseNet(**tiny_arch)
    optimizer = make_adam(model, 1e-3)
    with pytest.raises(CheckpointError, match="'optimizer' cannot go into a .safetensors.*stay .pth"):
        save_checkpoint(tmp_path / "w.safetensors", model, optimizer=optimizer.state_dict())
    with pytest.raises(CheckpointError, match="'rng' cannot go"):
        save_checkpoint(tmp_path / "w.safetensors", model, rng=capture_rng_state())
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_damaged_safetensors_are_named(tmp_path, tiny_arch):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, _trained(tiny_arch))
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file \(truncated"):
        load_checkpoint(cut)
    stub = tmp_path / "stub.safetensors"
    stub.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="stub.safetensors: not a readable safetensors"):
        load_checkpoint(stub)
    text = tmp_path / "text.safetensors"
    text.write_text("hello, I am not a weights file")
    with pytest.raises(CheckpointError, match="text.safetensors"):
        load_checkpoint(text)
    # One flipped bit in the last tensor: safetensors would load it; the header's SHA-256 does not match.
    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="flip.safetensors: the tensors do not match the SHA-256"):
        load_checkpoint(tmp_path / "flip.safetensors")
    with pytest.raises(CheckpointError, match="flip.safetensors"):
        model_from_checkpoint(tmp_path / "flip.safetensors")


def test_foreign_and_newer_safetensors(tmp_path, tiny_arch):
    save_file(SRDenseNet(**tiny_arch).state_dict(), str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="bare.safetensors: not an SRDenseNet weights file"):
        load_checkpoint(tmp_path / "bare.safetensors")
    weights = SRDenseNet(**tiny_arch).state_dict()
    save_file(weights, str(tmp_path / "new.safetensors"),
              metadata={"checkpoint_format": "srdensenet-checkpoint", "format_version": str(FORMAT_VERSION + 1),
                        "arch": json.dumps(tiny_arch)})
    with pytest.raises(CheckpointError, match="newer than this code"):
        load_checkpoint(tmp_path / "new.safetensors")


def test_safetensors_content_is_recognised_under_another_name(tmp_path, tiny_arch):
    model = _trained(tiny_arch)
    save_checkpoint(tmp_path / "w.safetensors", model)
    (tmp_path / "w.safetensors").rename(tmp_path / "w.bin")
    assert torch.equal(model_from_checkpoint(tmp_path / "w.bin").low_level.weight, model.low_level.weight)


def test_folder_config_must_agree(tmp_path, tiny_arch):
    folder = tmp_path / "hub"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="must hold model.safetensors"):
        load_checkpoint(folder)
    save_checkpoint(folder / "model.safetensors", _trained(tiny_arch))
    (folder / "config.json").write_text(json.dumps({**tiny_arch, "num_blocks": 5}))
    with pytest.raises(CheckpointError, match="config.json beside it says"):
        load_checkpoint(folder)
    # Tensors re-saved by another tool (no metadata of ours): config.json says which model they are.
    save_file(_trained(tiny_arch).state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny_arch))
    assert model_from_checkpoint(folder).arch == tiny_arch


def test_old_pth_release_still_loads(tmp_path, tiny_arch, repo_root):
    """A release in the old format (fp16 .pth, as shipped before safetensors) loads, and converting it with
    scripts/export_weights.py keeps every stored value and every output bit."""
    model = _trained(tiny_arch)
    old = tmp_path / "release.pth"
    save_checkpoint(old, model, half=True, exported_from="runs/r/last.pth", used_ema=True, step=9)
    assert torch.load(old, weights_only=True)["model"]["low_level.weight"].dtype == torch.float16
    result = subprocess.run([sys.executable, "scripts/export_weights.py", "--checkpoint", str(old), "--output",
                             str(tmp_path / "release.safetensors")], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after = load_checkpoint(old), load_checkpoint(tmp_path / "release.safetensors")
    assert before["model"].keys() == after["model"].keys()
    for name, tensor in before["model"].items():
        assert after["model"][name].dtype == tensor.dtype and torch.equal(after["model"][name], tensor), name
    assert after["exported_from"] == "runs/r/last.pth" and after["converted_from"] == str(old)
    assert after["used_ema"] is True and after["step"] == 9
    x = torch.rand(1, 1, 10, 12)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(old)(x), model_from_checkpoint(tmp_path / "release.safetensors")(x))


def test_shipped_release_is_safetensors(repo_root):
    path = repo_root / RELEASE
    checkpoint = load_checkpoint(path)
    assert checkpoint["arch"]["upscale_factor"] == 4 and checkpoint["used_ema"] is True
    assert {t.dtype for t in checkpoint["model"].values()} == {torch.float16}
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["weights_sha256"] == weights_digest(checkpoint["model"])
    assert not list((repo_root / "weights").glob("*.pth"))  # released weights ship as safetensors only
