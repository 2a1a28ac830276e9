"""The installable package: the public API loads lazily, the wheel carries the released weights, and the installed
command upscales a photo from any folder."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

import srdensenet

ROOT = Path(__file__).resolve().parent.parent


def python(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_public_names_resolve_and_import_loads_no_torch(tmp_path):
    for name in srdensenet.__all__:
        assert getattr(srdensenet, name) is not None, name
    assert srdensenet.load_model.__module__ == "srdensenet.inference"
    code = ("import sys, srdensenet; assert 'torch' not in sys.modules, 'import srdensenet loaded torch'; "
            "from srdensenet.cli import main; main(['--help']); assert 'torch' not in sys.modules")
    result = python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upscale" in result.stdout and "export-onnx" in result.stdout


@pytest.mark.parametrize("command", ["upscale", "validate", "train", "prepare-data", "export-onnx"])
def test_every_commands_help_loads_no_torch(tmp_path, command):
    code = ("import sys\nfrom srdensenet.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
            "except SystemExit as done:\n    assert done.code == 0\nassert 'torch' not in sys.modules, 'torch loaded'")
    result = python("-c", code, command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"usage: srdensenet {command}" in result.stdout
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        srdensenet.nothing  # noqa: B018


def test_pyproject_dependencies_are_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(project["dependencies"]) == sorted(line for line in lines if line)
    assert project["scripts"] == {"srdensenet": "srdensenet.cli:entry"}


def test_default_weights_are_the_clones_release_file():
    path = srdensenet.default_weights()
    assert path == ROOT / "weights" / "srdensenet_x4_all_paper.safetensors" and path.is_file()


def test_unknown_command_and_help(tmp_path):
    result = python("-m", "srdensenet", "upscal", cwd=tmp_path)
    assert result.returncode == 2 and "unknown command 'upscal'" in result.stderr
    result = python("-m", "srdensenet", "upscale", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: srdensenet upscale" in result.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this tree, unpacked as an installer would into a site folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "srdensenet", source / "srdensenet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "weights", source / "weights")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp / "dist").glob("srdensenet-*.whl"))
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        names = archive.namelist()
    return site, names


def test_wheel_carries_the_package_the_weights_and_the_command(installed_wheel):
    site, names = installed_wheel
    assert "srdensenet/weights/srdensenet_x4_all_paper.safetensors" in names
    assert "srdensenet/cli/upscale.py" in names and "srdensenet/config.py" in names
    assert "srdensenet/golden/butterfly.png" in names  # the self-check's golden image
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "train.py", "hubconf"))]
    entry_points = next(site.glob("srdensenet-*.dist-info/entry_points.txt")).read_text()
    assert "srdensenet = srdensenet.cli:entry" in entry_points


def test_installed_command_upscales_a_photo_4x_from_another_folder(installed_wheel, tmp_path):
    site, _ = installed_wheel
    photo = np.ascontiguousarray(data.astronaut()[200:224, 180:210])
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    env = {"PYTHONPATH": str(site)}
    where = python("-c", "import srdensenet; print(srdensenet.__file__, srdensenet.default_weights())",
                   cwd=tmp_path, env=env)
    module, weights = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(weights).is_relative_to(site) and Path(weights).is_file()
    result = python("-m", "srdensenet", "upscale", "photo.png", "-o", "out", "--precision", "fp32", cwd=tmp_path,
                    env=env)
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / "out" / "photo.png"))
    assert out.shape == (96, 120, 3)
    clone = python(str(ROOT / "inference.py"), "-i", "photo.png", "-o", "clone", "--precision", "fp32", cwd=tmp_path)
    assert clone.returncode == 0, clone.stderr
    assert np.array_equal(out, cv2.imread(str(tmp_path / "clone" / "photo.png")))


def test_installed_self_check_passes_from_another_folder(installed_wheel, tmp_path):
    site, _ = installed_wheel
    result = python("-m", "srdensenet", "validate", "--self-check", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-check: PASS" in result.stdout


def test_every_module_imports_without_the_optional_extras(tmp_path):
    """onnx, onnxruntime and pillow-heif blocked (None in sys.modules makes their import fail): every module loads."""
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "srdensenet").rglob("*.py")
                     if p.name != "__main__.py")
    code = ("import importlib, sys\nfor name in ('onnx', 'onnxruntime', 'pillow_heif', 'openvino'):\n"
            "    sys.modules[name] = None\nfor module in sys.argv[1:]:\n    importlib.import_module(module)\n")
    result = python("-c", code, *modules, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "srdensenet.onnx_export" in modules and "srdensenet.cli.upscale" in modules


def test_importing_every_module_leaves_the_environment_alone(tmp_path):
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "srdensenet").rglob("*.py")
                     if p.name != "__main__.py")
    # The dependencies first: OpenCV's loader edits LD_LIBRARY_PATH, and that is not this project's doing.
    code = ("import importlib, json, os, sys\nimport cv2, lmdb, numpy, PIL, safetensors, skimage, tensorboard, torch\n"
            "before = dict(os.environ)\nfor module in sys.argv[1:]:\n"
            "    importlib.import_module(module)\nprint(json.dumps([k for k in set(before) | set(os.environ) "
            "if before.get(k) != os.environ.get(k)]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SRDENSENET_", "THP_", "OMP_", "ONEDNN_"))}
    result = subprocess.run([sys.executable, "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
