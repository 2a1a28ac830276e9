"""Where the released weights live: one lookup for a clone, an editable install and an installed wheel.

The files stay in the repository's ``weights/`` folder; a wheel carries that folder as ``srdensenet/weights/``
(pyproject.toml maps it), so the package finds them beside itself when installed and one level up in a clone.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_WEIGHTS = "srdensenet_x4_all_paper.safetensors"  # what load_model() and the commands use unless told
_PACKAGE = Path(__file__).resolve().parent


def weights_folder() -> Path:
    """The folder of the released ``.safetensors`` files: ``srdensenet/weights/`` in a wheel, else the clone's."""
    installed = _PACKAGE / "weights"
    return installed if installed.is_dir() else _PACKAGE.parent / "weights"


def default_weights() -> Path:
    """The released x4 weights (SRDenseNet_All, paper layout). A missing file is named by whoever loads it."""
    return weights_folder() / DEFAULT_WEIGHTS


def releases() -> dict[tuple[int, str, str], tuple[Path, dict]]:
    """{(upscale_factor, variant, layout): (file, constructor arguments)} of the released weights files."""
    from safetensors import safe_open

    from .limits import check_arch, parse_json

    found = {}
    for path in sorted(weights_folder().glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as handle:
                arch = check_arch(parse_json((handle.metadata() or {})["arch"]))  # bounded, checked: limits.py
        except Exception as error:  # a damaged file is named here rather than skipped silently
            raise ValueError(f"{path}: not a readable release file ({error})") from None
        found[(arch["upscale_factor"], arch["variant"], arch["layout"])] = (path, arch)
    return found


def _describe(key: tuple[int, str, str]) -> str:
    scale, variant, layout = key
    named = ", entry point srdensenet_x4" if key == (4, "all", "paper") else ""
    return f"x{scale} variant={variant!r} layout={layout!r}{named}"


def hub_model(upscale_factor: int = 4, variant: str = "all", layout: str = "paper", pretrained: bool = False,
              **kwargs: int):
    """An SRDenseNet; ``pretrained``: with the released weights for that scale, variant and layout (eval mode, fp32).

    An error lists the released models when there are none for the request, or when ``kwargs`` contradict the file.
    """
    from .checkpoint import model_from_checkpoint
    from .model import SRDenseNet

    model = SRDenseNet(upscale_factor, variant, layout, **kwargs)
    if not pretrained:
        return model
    found = releases()
    key = (upscale_factor, variant, layout)
    if key not in found:
        released = "; ".join(_describe(k) for k in found) or "none"
        raise ValueError(f"no released weights for x{upscale_factor} variant={variant!r} layout={layout!r}; "
                         f"released: {released}. Use pretrained=False for an untrained model.")
    path, arch = found[key]
    if arch != model.arch:
        differ = ", ".join(f"{k}={model.arch[k]!r} (the file's: {arch[k]!r})" for k in arch if arch[k] != model.arch[k])
        raise ValueError(f"{path.name} (released: {_describe(key)}) does not fit {differ}; leave those arguments "
                         f"out, or use pretrained=False")
    return model_from_checkpoint(path)
