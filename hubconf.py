"""torch.hub entry points, offline from a clone: the released weights, or an untrained SRDenseNet of any kind.

    model = torch.hub.load("path/to/SRDenseNet-PyTorch", "srdensenet_x4", pretrained=True, source="local")

The models take and return the Y channel, (N, 1, H, W) in [0, 1]; colour images: ``srdensenet.upscale``.
"""

from srdensenet.released import hub_model as _hub_model

dependencies = ["torch", "numpy", "safetensors"]


def srdensenet(upscale_factor: int = 4, variant: str = "all", layout: str = "paper", pretrained: bool = False,
               **kwargs):
    """SRDenseNet (Tong et al., ICCV 2017, "Image Super-Resolution Using Dense Skip Connections").

    upscale_factor: 2, 3, 4 or 8; variant: "h", "hl" or "all"; layout: "paper" or "port"; kwargs: the other
    constructor arguments. pretrained=True: the released weights for that scale, variant and layout (eval mode).
    """
    return _hub_model(upscale_factor, variant, layout, pretrained, **kwargs)


def srdensenet_x4(pretrained: bool = True):
    """SRDenseNet_All x4, paper layout: the released weights (EMA, fp16 storage loaded into fp32), in eval mode."""
    return srdensenet(4, "all", "paper", pretrained=pretrained)
