from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

ROOT = Path(__file__).resolve().parent.parent

# Two cores on CI: keep torch from oversubscribing them when pytest runs subprocesses too.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def no_bf16_probe(tmp_path_factory):
    """"auto" means the same on every machine and nothing is written to the user's cache: SRDENSENET_FAST_BF16=0
    (fp32; no probe runs, in this process or in the scripts tests start) unless a test sets it, and the probe's cache
    in a temporary folder."""
    from srdensenet import precision_probe

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(precision_probe.FAST_BF16_ENV, "0")
        patch.setenv(precision_probe.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def tiny_arch() -> dict:
    """A small member of the SRDenseNet family: fast enough for CPU tests."""
    return dict(upscale_factor=2, variant="all", layout="paper", num_blocks=2, layers_per_block=2,
                growth_rate=4, num_features=8, bottleneck_features=8)


@pytest.fixture
def tiny(tiny_arch):
    """The tiny model with seeded random weights, in eval mode."""
    from srdensenet.model import SRDenseNet

    torch.manual_seed(0)
    return SRDenseNet(**tiny_arch).eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[100:137, 180:209])  # 37x29: odd, non-square, real content
