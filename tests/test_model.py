import re

import pytest
import torch

from srdensenet.model import LAYOUTS, SCALES, VARIANTS, SRDenseNet, count_parameters, parameter_table

SMALL = dict(num_blocks=2, layers_per_block=3, growth_rate=4, num_features=8, bottleneck_features=8)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_is_exactly_scale_times_input_for_odd_sizes(scale, variant, layout):
    model = SRDenseNet(scale, variant, layout, **SMALL)
    for h, w in [(13, 17), (1, 1), (8, 5)]:
        assert model(torch.rand(2, 1, h, w)).shape == (2, 1, h * scale, w * scale)


@pytest.mark.parametrize("scale", SCALES)
def test_full_size_model_shape(scale):
    with torch.no_grad():
        assert SRDenseNet(scale).eval()(torch.rand(1, 1, 13, 17)).shape == (1, 1, 13 * scale, 17 * scale)


def test_parameter_counts_match_docs():
    # docs/protocol.md, Architecture notes: paper layout 2,659,585 and the reference port 2,004,225 parameters
    # at x4 (variant all).
    assert count_parameters(SRDenseNet(4, "all", "paper")) == 2_659_585
    assert count_parameters(SRDenseNet(4, "all", "port")) == 2_004_225


def test_paper_model_has_69_weight_layers():
    model = SRDenseNet(4, "all", "paper")
    weight_layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(weight_layers) == 69  # 1 + 8*8 + bottleneck + 2 deconvs + reconstruction


def test_variants_feed_reconstruction_as_documented():
    f, k, layers = 8, 4, 3
    widths = {v: SRDenseNet(4, v, **SMALL).bottleneck.in_channels for v in VARIANTS}
    assert widths == {"h": k * layers, "hl": k * layers + f, "all": f + 2 * k * layers}


def test_init_is_applied_and_keeps_activations_in_range():
    torch.manual_seed(0)
    model = SRDenseNet(4).eval()
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 24, 24))
    assert torch.isfinite(out).all() and 0.01 < float(out.std()) < 10


def test_readme_parameter_table_is_generated(repo_root):
    readme = (repo_root / "README.md").read_text()
    block = re.search(r"<!-- params:start -->\n(.*?)\n<!-- params:end -->", readme, re.S)
    assert block, "README must hold the generated parameter table between params markers"
    assert block.group(1).strip() == parameter_table().strip()


def test_parameter_table_command_answers_help_with_help(repo_root):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "srdensenet.model", "--help"], capture_output=True, text=True,
                            cwd=repo_root, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage:") and "| variant |" not in result.stdout
