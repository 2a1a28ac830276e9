import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Two cores on CI: keep torch from oversubscribing them when pytest runs subprocesses too.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def tiny_arch() -> dict:
    """A small member of the SRDenseNet family: fast enough for CPU tests."""
    return dict(upscale_factor=2, variant="all", layout="paper", num_blocks=2, layers_per_block=2,
                growth_rate=4, num_features=8, bottleneck_features=8)
