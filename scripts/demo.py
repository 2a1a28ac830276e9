"""The README's main job (`make demo`): placeholder until training lands — builds every model variant once."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import SRDenseNet, parameter_table  # noqa: E402

if __name__ == "__main__":
    print(parameter_table())
    with torch.no_grad():
        print(SRDenseNet(4).eval()(torch.rand(1, 1, 24, 24)).shape)
