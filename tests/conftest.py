from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import dataset_images
from skimage import data as skdata

from srdensenet.image_files import write_image

ROOT = Path(__file__).resolve().parent.parent

# Two cores on CI: keep torch from oversubscribing them when pytest runs subprocesses too.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def no_bf16_probe(tmp_path_factory):
    """"auto" means the same on every machine and nothing is written to the user's cache: SRDENSENET_FAST_BF16=0
    (fp32) and SRDENSENET_FAST_CHANNELS_LAST=0 (NCHW; no probe runs, in this process or in the scripts tests start)
    unless a test sets them, and the probes' cache in a temporary folder."""
    from srdensenet import layout_probe, precision_probe

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(precision_probe.FAST_BF16_ENV, "0")
        patch.setenv(layout_probe.FAST_CHANNELS_LAST_ENV, "0")
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
    return np.ascontiguousarray(skdata.astronaut()[100:137, 180:209])  # 37x29: odd, non-square, real content


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: avoids OpenMP barriers that stall when the CI cores are busy
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny training run's data: two training photos and one validation photo (helpers.run_train)."""
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "valid").mkdir()
    write_image(root / "train" / "astronaut.png", skdata.astronaut()[:96, :128])
    write_image(root / "train" / "coffee.png", skdata.coffee()[:80, :96])
    write_image(root / "valid" / "chelsea.png", skdata.chelsea()[:40, :48])
    return root


@pytest.fixture
def folder(tmp_path):
    """A folder of small, odd-sized photo crops (helpers.dataset_images) as PNG."""
    root = tmp_path / "images"
    root.mkdir()
    for name, image in dataset_images().items():
        write_image(root / f"{name}.png", image)
    return root
