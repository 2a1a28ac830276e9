"""hubconf.py through torch.hub.load(..., source="local"), offline, next to a user's own modules named like ours."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from srdensenet import inference

RELEASE = "weights/srdensenet_x4_all_paper.safetensors"


@pytest.fixture
def user_modules(monkeypatch):
    """A user's own `model` and `checkpoint` modules in sys.modules, where the repository's were."""
    fakes = {}
    for name in ("model", "checkpoint"):
        fake = types.ModuleType(name)
        fake.SRDenseNet = f"the user's {name}"
        monkeypatch.setitem(sys.modules, name, fake)
        fakes[name] = fake
    return fakes


def test_released_model_loads_next_to_user_modules(repo_root, user_modules):
    hub_model = torch.hub.load(str(repo_root), "srdensenet_x4", pretrained=True, source="local")
    for name, fake in user_modules.items():  # neither shadowed nor replaced
        assert sys.modules[name] is fake
    reference = inference.load_model(repo_root / RELEASE, "cpu")
    assert not hub_model.training and hub_model.arch == reference.arch
    torch.manual_seed(0)
    x = torch.rand(1, 1, 17, 21)
    with torch.no_grad():
        assert torch.equal(hub_model(x), reference(x))
    again = torch.hub.load(str(repo_root), "srdensenet_x4", pretrained=True, source="local")
    assert type(again) is type(hub_model)  # the second load reuses the privately loaded modules
    assert sys.modules["model"] is user_modules["model"]


def test_user_model_py_on_the_path_is_left_alone(repo_root, tmp_path):
    """A user working in a folder with their own model.py and config.py: both stay theirs, nothing of ours leaks."""
    (tmp_path / "model.py").write_text("WHO = 'user'\n")
    (tmp_path / "config.py").write_text("WHO = 'user'\n")
    script = textwrap.dedent(f"""
        import sys
        import torch
        import model, config
        net = torch.hub.load({str(repo_root)!r}, "srdensenet_x4", pretrained=True, source="local")
        import model as after
        assert after is model and model.WHO == "user" and config.WHO == "user", "user modules replaced"
        assert "checkpoint" not in sys.modules, "a repository module leaked under its flat name"
        y = net(torch.zeros(1, 1, 8, 8))
        print(tuple(y.shape), type(net).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 1, 32, 32) SRDenseNet"


def test_untrained_model_of_any_variant_and_scale(repo_root):
    model = torch.hub.load(str(repo_root), "srdensenet", upscale_factor=3, variant="hl", layout="port",
                           num_blocks=2, source="local")
    assert model.arch["upscale_factor"] == 3 and model.arch["variant"] == "hl" and model.arch["num_blocks"] == 2
    assert model(torch.rand(1, 1, 5, 6)).shape == (1, 1, 15, 18)
    released = torch.hub.load(str(repo_root), "srdensenet", pretrained=True, source="local")  # x4 all paper
    assert torch.equal(released.low_level.weight, inference.load_model(repo_root / RELEASE).low_level.weight)


def test_pretrained_without_released_weights_lists_what_exists(repo_root):
    with pytest.raises(ValueError, match=r"no released weights for x2 variant='all' layout='paper'; released: "
                                         r"x4 variant='all' layout='paper', entry point srdensenet_x4"):
        torch.hub.load(str(repo_root), "srdensenet", upscale_factor=2, pretrained=True, source="local")
    with pytest.raises(ValueError, match=r"does not fit num_blocks=3 \(the file's: 8\)"):
        torch.hub.load(str(repo_root), "srdensenet", num_blocks=3, pretrained=True, source="local")


def test_entry_points_and_dependencies(repo_root):
    spec = importlib.util.spec_from_file_location("hubconf_under_test", repo_root / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule: every public callable is an entry point, so helpers and imports must be private.
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert entries == {"srdensenet", "srdensenet_x4"}
    assert hubconf.dependencies[0] == "torch" and "safetensors" in hubconf.dependencies
    for name in hubconf.dependencies:
        assert importlib.util.find_spec(name) is not None, name
