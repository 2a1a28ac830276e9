"""scripts/export_hub.py: the folder it writes loads back with identical outputs; the card; atomic, refusing writes."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srdensenet import inference
from srdensenet.checkpoint import load_checkpoint, save_checkpoint
from srdensenet.dataset import ValidationImage, ValidationSet
from srdensenet.evaluation import evaluate
from srdensenet.model import SRDenseNet
from srdensenet.protocol_check import BUTTERFLY

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "weights" / "srdensenet_x4_all_paper.safetensors"
SCORES = ROOT / "assets" / "release_x4" / "scores.json"


def _load_script():
    spec = importlib.util.spec_from_file_location("export_hub_under_test", ROOT / "scripts" / "export_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_hub = _load_script()


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "srdensenet_x4"
    result = subprocess.run([sys.executable, "scripts/export_hub.py", "--weights", str(RELEASE), "--output",
                             str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "with scores" in result.stdout
    return folder


def _front_matter(card: str) -> str:
    match = re.match(r"---\n(.*?)\n---\n", card, flags=re.S)
    assert match, "the card must start with a YAML block between --- lines"
    return match.group(1)


def test_folder_loads_back_with_identical_outputs(release_folder):
    assert sorted(p.name for p in release_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    original, exported = inference.load_model(RELEASE, "cpu"), inference.load_model(release_folder, "cpu")
    assert json.loads((release_folder / "config.json").read_text()) == original.arch == exported.arch
    stored, written = load_checkpoint(RELEASE)["model"], load_checkpoint(release_folder)["model"]
    assert stored.keys() == written.keys()
    for name, tensor in stored.items():  # the same fp16 values, not a re-rounded copy
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
    torch.manual_seed(0)
    x = torch.rand(1, 1, 20, 23)
    with torch.no_grad():
        assert torch.equal(exported(x), original(x))


def test_card_carries_hub_metadata(release_folder):
    card = (release_folder / "README.md").read_text()
    meta = _front_matter(card)
    assert re.search(r"^license: mit$", meta, flags=re.M)
    assert re.search(r"^- super-resolution$", meta, flags=re.M)
    assert re.search(r"^datasets:\n- debian-photo-pool$", meta, flags=re.M)
    scores = json.loads(SCORES.read_text())["datasets"]
    for name, s in scores.items():  # each dataset in the model-index, bicubic beside the model
        block = meta[meta.index(f"name: {name}"):]
        for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            assert f"value: {round(s[key], 4)!r}" in block.split("- task:")[0], (name, key)
        assert f"| {s['psnr']:.2f} / {s['ssim']:.4f} | {s['bicubic_psnr']:.2f} / {s['bicubic_ssim']:.4f} |" in card
    assert "Image Super-Resolution Using Dense Skip Connections" in card and "10.1109/ICCV.2017.514" in card
    assert "Tong, Tong and Li, Gen and Liu, Xiejie and Gao, Qinquan" in card


def test_release_scores_are_the_readme_model_card_numbers():
    """assets/release_x4/scores.json repeats the README model card table: they must not drift apart."""
    readme = (ROOT / "README.md").read_text()
    card = readme[readme.index("## Released weights: model card"):]
    for name, s in json.loads(SCORES.read_text())["datasets"].items():
        row = next((line for line in card.splitlines() if line.startswith("|") and f"`{s['folder']}`" in line), None)
        assert row, f"README model card has no row for {s['folder']} ({name})"
        numbers = [float(v) for v in re.findall(r"(\d+\.\d+) / (\d+\.\d+)", row)[0] +
                   re.findall(r"(\d+\.\d+) / (\d+\.\d+)", row)[1]]
        assert numbers == [s["psnr"], s["ssim"], s["bicubic_psnr"], s["bicubic_ssim"]], row


def test_release_scores_belong_to_the_shipped_weights():
    """The butterfly row of scores.json, re-measured from the shipped file (the other sets need data/)."""
    butterfly = json.loads(SCORES.read_text())["datasets"]["Set5 butterfly"]
    path = BUTTERFLY
    vset = ValidationSet("butterfly", path.parent, 4, (ValidationImage(path.name, path, None),))
    measured = evaluate(inference.load_model(RELEASE, "cpu"), [vset], device="cpu").sets["butterfly"]
    for key in ("psnr", "bicubic_psnr"):
        assert round(measured[key], 2) == butterfly[key], key
    for key in ("ssim", "bicubic_ssim"):
        assert round(measured[key], 4) == butterfly[key], key
    digest = export_hub.weights_digest(load_checkpoint(RELEASE)["model"])
    assert json.loads(SCORES.read_text())["weights_sha256"] == digest


def test_other_weights_get_no_release_scores(tmp_path, tiny_arch):
    save_checkpoint(tmp_path / "mine.pth", SRDenseNet(**tiny_arch), config={"train_dirs": ["data/mine"]})
    export_hub.export(str(tmp_path / "mine.pth"), tmp_path / "out", None, False)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model-index" not in _front_matter(card) and "Not measured for these weights" in card
    assert "data/mine" in card
    assert load_checkpoint(tmp_path / "out")["model"]["low_level.weight"].dtype == torch.float32  # fp32 stays fp32


def test_scores_from_a_validate_report(tmp_path, tiny_arch):
    save_checkpoint(tmp_path / "mine.pth", SRDenseNet(**tiny_arch))
    report = {"upscale_factor": 2, "datasets": {"valid": {"psnr": 30.5, "ssim": 0.9, "bicubic_psnr": 29.0,
                                                          "bicubic_ssim": 0.85, "images": {}}}}
    (tmp_path / "v.json").write_text(json.dumps(report))
    export_hub.export(str(tmp_path / "mine.pth"), tmp_path / "out", tmp_path / "v.json", False)
    assert "value: 29.0\n      name: bicubic PSNR (Y, crop 2)" in (tmp_path / "out" / "README.md").read_text()
    (tmp_path / "v.json").write_text(json.dumps({**report, "upscale_factor": 4}))
    with pytest.raises(export_hub.HubError, match=r"v\.json: scores of a x4 model, these weights are x2"):
        export_hub.export(str(tmp_path / "mine.pth"), tmp_path / "out2", tmp_path / "v.json", False)
    (tmp_path / "v.json").write_text(json.dumps({**report, "weights_sha256": "0" * 64}))
    with pytest.raises(export_hub.HubError, match="scores of other weights"):
        export_hub.export(str(tmp_path / "mine.pth"), tmp_path / "out3", tmp_path / "v.json", False)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_existing_folder_needs_force(tmp_path, tiny_arch):
    save_checkpoint(tmp_path / "w.safetensors", SRDenseNet(**tiny_arch))
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export_hub.export(str(tmp_path / "w.safetensors"), out, None, False)
    before = (out / "model.safetensors").read_bytes()
    command = [sys.executable, "scripts/export_hub.py", "--weights", str(tmp_path / "w.safetensors"), "--output",
               str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--output {out}: exists and is not empty; pass --force" in result.stderr
    save_checkpoint(tmp_path / "w.safetensors", SRDenseNet(**{**tiny_arch, "num_features": 4}))
    result = subprocess.run([*command, "--force"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").read_bytes() != before
    assert inference.load_model(out, "cpu").arch["num_features"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w.safetensors"]  # no temporary folder left


def test_failure_leaves_no_folder(tmp_path, tiny_arch, monkeypatch):
    save_checkpoint(tmp_path / "w.pth", SRDenseNet(**tiny_arch))

    def broken_card(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export_hub, "model_card", broken_card)
    with pytest.raises(OSError, match="No space left"):
        export_hub.export(str(tmp_path / "w.pth"), tmp_path / "out", None, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}garbage")
    result = subprocess.run([sys.executable, "scripts/export_hub.py", "--weights", str(tmp_path / "bad.safetensors"),
                             "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "bad.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_yaml_writer_quotes_what_yaml_would_misread():
    lines = export_hub.to_yaml({"a": "plain text (x4)", "b": "yes", "c": "key: value", "d": "#tag", "e": [1, 0.5],
                                "f": [{"g": True, "h": []}], "i": "Ünïcode"})
    assert lines == ['a: plain text (x4)', 'b: "yes"', 'c: "key: value"', 'd: "#tag"', "e:", "- 1", "- 0.5", "f:",
                     "- g: true", "  h: []", 'i: "Ünïcode"']


def test_release_file_stem_names_the_model(release_folder):
    assert "\n# srdensenet_x4_all_paper\n" in (release_folder / "README.md").read_text()


def test_the_card_names_the_repository(tmp_path, tiny_arch):
    save_checkpoint(tmp_path / "w.pth", SRDenseNet(**tiny_arch))
    export_hub.export(str(tmp_path / "w.pth"), tmp_path / "out", None, False, "https://example.org/srdensenet")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Code\n\nhttps://example.org/srdensenet" in card
    assert "in its clone, https://example.org/srdensenet" in card
    export_hub.export(str(tmp_path / "w.pth"), tmp_path / "bare", None, False)  # no address known: none invented
    assert "## Code" not in (tmp_path / "bare" / "README.md").read_text()
