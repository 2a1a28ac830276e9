"""tiling.py: the receptive field, tiles and upsampler windows (tiled output equals untiled output), and the
self-ensemble. Through inference.predict_y, which runs every path through tiling.run_tiled."""

import numpy as np
import pytest
import torch
from helpers import BACKENDS, BF16_TOLERANCE, FP32_TOLERANCE, SMALL, max_error

from srdensenet import inference, tiling
from srdensenet.model import SRDenseNet
from srdensenet.runners import shape_bucket

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- the model split and its receptive field -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["all", "h", "hl"])
@pytest.mark.parametrize("scale,layout", [(2, "paper"), (3, "paper"), (4, "port"), (8, "paper")])
def test_trunk_then_upsampler_is_exactly_forward(variant, scale, layout):
    model = SRDenseNet(scale, variant, layout, **SMALL).eval()
    x = torch.rand(2, 1, 11, 7)
    with torch.no_grad():
        assert torch.equal(model.upsample_features(model.trunk(x)), model(x))


def test_receptive_field_of_paper_models():
    # 1 low-level conv + 8 blocks x 8 layers = 65 LR pixels in the trunk; upsampler: paper 3x3 deconvs reach 1 input
    # pixel each (1 + 1/2 [+ 1/4]) plus 1 HR pixel for the last conv, rounded up; port / stride-3 deconvs reach none.
    assert tiling.receptive_field(SRDenseNet(4)) == 65 + 2
    assert tiling.receptive_field(SRDenseNet(2)) == 65 + 2
    assert tiling.receptive_field(SRDenseNet(8)) == 65 + 2
    assert tiling.receptive_field(SRDenseNet(3)) == 65 + 1
    assert tiling.receptive_field(SRDenseNet(4, layout="port")) == 65 + 1


@pytest.mark.parametrize("scale,layout", [(2, "paper"), (3, "paper"), (4, "port"), (8, "paper")])
def test_receptive_field_bounds_and_nearly_equals_the_measured_reach(scale, layout):
    torch.manual_seed(1)
    model = SRDenseNet(scale, "all", layout, **SMALL).double().eval()
    x = torch.rand(1, 1, 31, 31, dtype=torch.float64)
    bumped = x.clone()
    bumped[..., 15, 15] += 0.5
    with torch.no_grad():
        changed = (model(bumped) - model(x)).abs()[0, 0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max((rows // scale - 15).abs().max().item(), (cols // scale - 15).abs().max().item())
    rf = tiling.receptive_field(model)
    assert rf - 1 <= reach <= rf



# ---- tiles and windows -----------------------------------------------------------------------------------------------

# Exact (fp32) paths: tiled output equals untiled output to float rounding.
FP32_PLANS = [("fp32", "torch"), ("fp32-cl", "torch"), ("fp32", "onnxruntime")]


@pytest.mark.parametrize("tile,plans", [(5, [("fp32", "torch")]), (8, FP32_PLANS), (13, [("fp32-cl", "torch")]),
                                        (100, [("fp32-cl", "torch")])])
def test_tiled_equals_untiled(tiny, tile, plans):
    x = torch.rand(2, 1, 37, 29)  # sizes not divisible by the tiles; 5 < receptive field (7): margins span tiles
    reference = inference.predict_y(tiny, x, precision="fp32")
    for precision, backend in [p for p in plans if p[1] in BACKENDS]:
        tiled = inference.predict_y(tiny, x, precision=precision, tile=tile, backend=backend)
        assert tiled.shape == (2, 1, 74, 58)
        assert (tiled - reference).abs().max().item() <= FP32_TOLERANCE, (precision, backend)


@pytest.mark.parametrize("tile", [5, 13])
def test_tiled_bf16_within_bf16_rounding(tiny, tile):
    # bf16 is not exact, so tiled bf16 equals untiled bf16 only up to bf16 rounding (kernels may block differently
    # for other shapes): both lie within BF16_TOLERANCE of fp32, so within twice that of each other.
    x = torch.rand(2, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    untiled = inference.predict_y(tiny, x, precision="bf16")
    tiled = inference.predict_y(tiny, x, precision="bf16", tile=tile)
    assert max_error(untiled, reference) <= BF16_TOLERANCE
    assert max_error(tiled, reference) <= BF16_TOLERANCE
    assert max_error(tiled, untiled) <= 2 * BF16_TOLERANCE
    assert max_error(untiled, reference) > 0  # really computed in bf16


@pytest.mark.parametrize("tile", [None, 11])
def test_upsampler_pieces_equal_untiled(tiny, monkeypatch, tile):
    x = torch.rand(1, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    monkeypatch.setattr(tiling, "upsampler_window", lambda model: 8)  # many windows, margins across them
    for precision, backend in [p for p in FP32_PLANS if p[1] in BACKENDS]:
        out = inference.predict_y(tiny, x, precision=precision, tile=tile, backend=backend)
        assert (out - reference).abs().max().item() <= FP32_TOLERANCE, (precision, backend)
    bf16 = inference.predict_y(tiny, x, precision="bf16", tile=tile)
    assert max_error(bf16, reference) <= BF16_TOLERANCE


@pytest.mark.parametrize("bucketed", [False, True])
def test_upsampler_windows_cover_the_core_exactly_once(bucketed):
    rng = np.random.default_rng(0)
    for _ in range(2000):
        length = int(rng.integers(1, 400))
        c0 = int(rng.integers(0, length))
        c1 = int(rng.integers(c0 + 1, length + 1))
        margin, size = int(rng.integers(0, 4)), int(rng.integers(8, 120))
        valid = (max(0, c0 - margin), min(length, c1 + margin))
        windows, padded = tiling.windows((c0, c1), valid, length, size, margin, bucketed)
        assert [k for _, _, k, _ in windows] == [c0] + [k1 for _, _, _, k1 in windows[:-1]] and windows[-1][3] == c1
        assert len({w1 - w0 for w0, w1, _, _ in windows}) == 1  # one shape per line
        for w0, w1, k0, k1 in windows:
            assert valid[0] <= w0 and w1 <= valid[1] and k0 < k1
            assert k0 - w0 >= margin or w0 == 0
            assert w1 - k1 >= margin or w1 == length
        window = windows[0][1] - windows[0][0]
        if not bucketed:
            assert padded == window
        elif window == valid[1] - valid[0] <= size:
            assert padded == shape_bucket(window)  # a short line: one window, padded to its bucket
        else:
            assert padded == window and (window % 8 == 0 or window == valid[1] - valid[0])


def test_tiling_with_a_too_small_margin_differs(tiny, monkeypatch):
    # Sanity check of the test above: it would catch a margin smaller than the receptive field.
    x = torch.rand(1, 1, 37, 29)
    reference = inference.predict_y(tiny, x, precision="fp32")
    monkeypatch.setattr(tiling, "trunk_radius", lambda model: 2)
    tiled = inference.predict_y(tiny, x, precision="fp32", tile=8)
    assert (tiled - reference).abs().max().item() > 1e-4



# ---- self-ensemble ---------------------------------------------------------------------------------------------------


def test_self_ensemble_is_the_mean_of_the_8_transforms(tiny):
    x = torch.rand(1, 1, 9, 14)
    ensemble = inference.predict_y(tiny, x, precision="fp32", self_ensemble=True)
    assert ensemble.shape == (1, 1, 18, 28)
    outputs = []
    for transpose in (False, True):
        for flip_h in (False, True):
            for flip_w in (False, True):
                t = x.flip(-1) if flip_w else x
                t = t.flip(-2) if flip_h else t
                t = t.transpose(-2, -1) if transpose else t
                out = inference.predict_y(tiny, t, precision="fp32")
                out = out.transpose(-2, -1) if transpose else out
                out = out.flip(-2) if flip_h else out
                outputs.append(out.flip(-1) if flip_w else out)
    assert torch.allclose(ensemble, torch.stack(outputs).mean(0), atol=1e-6)
    assert not torch.allclose(ensemble, outputs[0], atol=1e-4)  # really not the plain output
    tiled = inference.predict_y(tiny, x, precision="fp32", self_ensemble=True, tile=4)
    assert (tiled - ensemble).abs().max().item() <= 1e-5

