"""export_onnx.py: the exported graph matches PyTorch (fp32) at several input sizes, and files are written safely."""

import json

import numpy as np
import pytest
import torch

from srdensenet import onnx_export
from srdensenet.checkpoint import save_checkpoint
from srdensenet.cli import export_onnx
from srdensenet.model import SRDenseNet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY = dict(num_blocks=2, layers_per_block=2, growth_rate=4, num_features=8, bottleneck_features=8)


@pytest.mark.parametrize("scale,layout", [(2, "paper"), (4, "port")])
def test_cli_export_matches_pytorch_at_two_sizes(tmp_path, capsys, scale, layout):
    torch.manual_seed(0)
    model = SRDenseNet(scale, layout=layout, **TINY).eval()
    save_checkpoint(tmp_path / "w.pth", model)
    out = tmp_path / "nested" / "model.onnx"
    assert export_onnx.main(["--weights", str(tmp_path / "w.pth"), "--output", str(out), "--opset", "17"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary file left behind

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 20, 20), (2, 13, 31)]:  # different sizes and batch: the axes are really dynamic
        x = torch.rand(n, 1, h, w)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (n, 1, h * scale, w * scale)
        assert np.abs(got - expected).max() <= 1e-4
    proto = onnx.load(str(out))
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["arch"]) == model.arch
    assert proto.opset_import[0].version == 17


def test_bad_weights_fail_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert export_onnx.main(["--weights", str(bad), "--output", str(tmp_path / "m.onnx")]) == 1
    assert "bad.pth" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_leaves_the_callers_model_alone():
    model = SRDenseNet(2, **TINY).double()
    data = onnx_export.onnx_bytes(SRDenseNet(2, **TINY).eval(), torch.rand(1, 1, 8, 8))
    assert len(data) > 1000
    onnx_export.export_model(model, __import__("tempfile").mkdtemp() + "/m.onnx")
    assert model.low_level.weight.dtype == torch.float64
