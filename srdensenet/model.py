"""SRDenseNet (Tong et al., ICCV 2017, "Image Super-Resolution Using Dense Skip Connections").

    Y (LR) -> 3x3 conv + ReLU (low-level features)
           -> dense blocks (each: L conv layers, 3x3, growth rate k, ReLU, every layer fed all earlier layers)
           -> concatenation chosen by the variant -> 1x1 bottleneck -> deconvolutions -> 3x3 conv -> Y (HR)

Variants (what feeds the reconstruction): "h" = last block only, "hl" = low-level features + last block,
"all" = low-level features + every block (the paper's headline SRDenseNet_All).

Layouts ("paper", "port"), block wiring, other scales and initialisation, where the paper is silent: docs/protocol.md,
"Architecture notes" (the one place they are written down).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .choices import LAYOUTS, SCALES, VARIANTS
from .limits import check_arch


class DenseBlock(nn.Module):
    """num_layers 3x3 conv + ReLU layers; returns the concatenation of all their outputs."""

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if j == 0 else growth_rate * j, growth_rate, 3, padding=1) for j in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        features = x
        for conv in self.convs:
            outputs.append(F.relu(conv(features)))
            features = torch.cat(outputs, 1)
        return features


def upsampling_strides(upscale_factor: int) -> list[int]:
    """Strides of the deconvolution layers for a scale: x2/x4/x8 -> 2s, x3 -> one 3."""
    if upscale_factor == 3:
        return [3]
    if upscale_factor in (2, 4, 8):
        return [2] * int(math.log2(upscale_factor))
    raise ValueError(f"upscale_factor must be one of {SCALES}, got {upscale_factor}")


def make_deconvolution(channels: int, stride: int, layout: str) -> nn.ConvTranspose2d:
    """A deconvolution that maps HxW to exactly (stride*H)x(stride*W)."""
    if layout == "port" and stride == 2:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if stride == 2:  # 3x3: (H-1)*2 - 2*1 + 3 + 1 = 2H
        return nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)
    return nn.ConvTranspose2d(channels, channels, 3, stride=3)  # (H-1)*3 + 3 = 3H


class SRDenseNet(nn.Module):
    """SRDenseNet on the Y channel: input (N, 1, H, W) in [0, 1], output (N, 1, sH, sW)."""

    def __init__(
        self,
        upscale_factor: int = 4,
        variant: str = "all",
        layout: str = "paper",
        num_blocks: int = 8,
        layers_per_block: int = 8,
        growth_rate: int = 16,
        num_features: int = 128,
        bottleneck_features: int = 256,
    ) -> None:
        super().__init__()
        # The constructor arguments travel inside every checkpoint, so a checkpoint alone rebuilds its model; they
        # are checked (limits.py: types, bounds, the parameter count) before a layer is allocated.
        self.arch = check_arch(dict(upscale_factor=upscale_factor, variant=variant, layout=layout,
                                    num_blocks=num_blocks, layers_per_block=layers_per_block, growth_rate=growth_rate,
                                    num_features=num_features, bottleneck_features=bottleneck_features))
        self.upscale_factor = upscale_factor
        self.variant = variant
        self.layout = layout

        block_out = layers_per_block * growth_rate
        self.low_level = nn.Conv2d(1, num_features, 3, padding=1)
        if variant == "all":
            block_inputs = [num_features + i * block_out for i in range(num_blocks)]
            reconstruction_in = num_features + num_blocks * block_out
        else:
            block_inputs = [num_features] + [block_out] * (num_blocks - 1)
            reconstruction_in = block_out + (num_features if variant == "hl" else 0)
        self.blocks = nn.ModuleList(DenseBlock(c, growth_rate, layers_per_block) for c in block_inputs)
        self.bottleneck = nn.Conv2d(reconstruction_in, bottleneck_features, 1)
        self.bottleneck_relu = layout == "paper"
        self.upsample = nn.ModuleList(
            make_deconvolution(bottleneck_features, s, layout) for s in upsampling_strides(upscale_factor)
        )
        self.reconstruction = nn.Conv2d(bottleneck_features, 1, 3, padding=1)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample_features(self.trunk(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything at LR resolution: low-level features, dense blocks, bottleneck (inference tiles it separately
        from the upsampler; runners.FastRunner re-plans the same computation)."""
        low = F.relu(self.low_level(x))
        features = low
        for block in self.blocks:
            out = block(features)
            # "all": newest block first, then everything before it (the port's order); "h"/"hl": chained.
            features = torch.cat([out, features], 1) if self.variant == "all" else out
        if self.variant == "hl":
            features = torch.cat([features, low], 1)
        features = self.bottleneck(features)
        return F.relu(features) if self.bottleneck_relu else features

    def upsample_features(self, features: torch.Tensor) -> torch.Tensor:
        """Deconvolutions (each followed by a ReLU) and the reconstruction conv."""
        for deconv in self.upsample:
            features = F.relu(deconv(features))
        return self.reconstruction(features)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-normal init with each layer's true fan-in; see the module docstring."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                k, stride = module.kernel_size[0], module.stride[0]
                fan_in = module.in_channels * k * k / (stride * stride)
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            else:
                continue
            followed_by_relu = module is not self.reconstruction and not (
                module is self.bottleneck and not self.bottleneck_relu)
            gain = math.sqrt(2.0) if followed_by_relu else 1.0
            module.weight.normal_(0.0, gain / math.sqrt(fan_in))
            module.bias.zero_()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_table() -> str:
    """Markdown table of parameter counts for every variant, layout and scale at the paper's sizes."""
    lines = ["| variant | layout | x2 | x3 | x4 | x8 |", "|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for layout in LAYOUTS:
            counts = [count_parameters(SRDenseNet(s, variant, layout)) for s in SCALES]
            lines.append(f"| {variant} | {layout} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m srdensenet.model` prints the parameter table shown in the README."""
    import argparse

    argparse.ArgumentParser(prog="python -m srdensenet.model", description="Print SRDenseNet's parameter counts for "
                            "every variant, layout and scale at the paper's sizes (a Markdown table).").parse_args(argv)
    print(parameter_table())
    return 0


if __name__ == "__main__":
    from .fileio import exit_quietly_on_broken_pipe  # here, so that importing the model needs nothing else

    exit_quietly_on_broken_pipe(main)
