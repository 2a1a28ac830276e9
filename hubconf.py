"""torch.hub entry points: the released SRDenseNet weights, offline from weights/ in this repository, and an untrained
SRDenseNet of any variant, layout and scale.

    model = torch.hub.load("path/to/SRDenseNet-PyTorch", "srdensenet_x4", pretrained=True, source="local")
    model = torch.hub.load("path/to/SRDenseNet-PyTorch", "srdensenet", upscale_factor=2, variant="hl",
                           source="local")

The models take the Y channel, (N, 1, H, W) in [0, 1], and return (N, 1, sH, sW); for colour images use the
repository's ``inference.upscale``. Pretrained models come in eval mode, fp32, on the CPU (the same model as
``inference.load_model`` on the release file); untrained ones as constructed, ready to train.

This repository's modules have flat names (``model``, ``checkpoint``, ``config``...) that a user's own modules may
share. The entry points therefore load them from this folder's files and keep them under private names in
sys.modules: a user's ``model`` module neither shadows the repository's nor is replaced by it.
"""

import importlib.abc as _importlib_abc
import importlib.util as _importlib_util
import json as _json
import sys as _sys
from hashlib import sha1 as _sha1
from pathlib import Path as _Path

dependencies = ["torch", "numpy", "safetensors"]

_ROOT = _Path(__file__).resolve().parent
_WEIGHTS = _ROOT / "weights"
# One private prefix per clone, so two checkouts loaded in one process keep their own modules.
_PRIVATE = f"_srdensenet_hub_{_sha1(str(_ROOT).encode()).hexdigest()[:10]}_"
_REPO_MODULES = frozenset(p.stem for p in _ROOT.glob("*.py") if p.stem != "hubconf")


class _RepoFinder(_importlib_abc.MetaPathFinder):
    """While the repository's modules load: a flat import of one of them finds the file in this folder."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _REPO_MODULES:
            return _importlib_util.spec_from_file_location(fullname, _ROOT / f"{fullname}.py")
        return None


def _repo_module(name: str):
    """This repository's module ``name`` (and what it imports of the repository), without touching the user's.

    The flat names are lent to the repository's files only while they execute, so their own ``from model import
    SRDenseNet`` finds this folder's model.py; afterwards the modules live on under private names and every flat
    name is back to what it was (the user's module, or absent).
    """
    if _PRIVATE + name in _sys.modules:
        return _sys.modules[_PRIVATE + name]
    saved = {n: _sys.modules.pop(n) for n in _REPO_MODULES if n in _sys.modules}
    finder = _RepoFinder()
    _sys.meta_path.insert(0, finder)
    try:
        for loaded in (n for n in _REPO_MODULES if _PRIVATE + n in _sys.modules):
            _sys.modules[loaded] = _sys.modules[_PRIVATE + loaded]  # reuse what an earlier call loaded
        __import__(name)
        fresh = {n: _sys.modules[n] for n in _REPO_MODULES if n in _sys.modules}
    finally:
        _sys.meta_path.remove(finder)
        for n in _REPO_MODULES:
            _sys.modules.pop(n, None)
        _sys.modules.update(saved)
    for n, module in fresh.items():
        _sys.modules[_PRIVATE + n] = module
    return fresh[name]


def _releases() -> dict:
    """{(upscale_factor, variant, layout): (file, constructor arguments)} of the weights shipped in weights/."""
    from safetensors import safe_open

    found = {}
    for path in sorted(_WEIGHTS.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                arch = _json.loads((handle.metadata() or {})["arch"])
        except Exception as error:  # a damaged file is named here rather than skipped silently
            raise ValueError(f"{path}: not a readable release file ({error})") from None
        found[(arch["upscale_factor"], arch["variant"], arch["layout"])] = (path, arch)
    return found


def _describe(key: tuple) -> str:
    scale, variant, layout = key
    entry = f"srdensenet_x{scale}"
    named = f", entry point {entry}" if variant == "all" and layout == "paper" and entry in globals() else ""
    return f"x{scale} variant={variant!r} layout={layout!r}{named}"


def srdensenet(upscale_factor: int = 4, variant: str = "all", layout: str = "paper", pretrained: bool = False,
               **kwargs):
    """SRDenseNet (Tong et al., ICCV 2017, "Image Super-Resolution Using Dense Skip Connections").

    upscale_factor: 2, 3, 4 or 8; variant: "h", "hl" or "all"; layout: "paper" or "port"; kwargs: the other
    constructor arguments (num_blocks, layers_per_block, growth_rate, num_features, bottleneck_features).
    pretrained=True loads the released weights for that scale / variant / layout from weights/ (offline; eval mode);
    it is an error, listing the released models, when there are none, or when kwargs contradict them.
    """
    model = _repo_module("model").SRDenseNet(upscale_factor, variant, layout, **kwargs)
    if not pretrained:
        return model
    releases = _releases()
    key = (upscale_factor, variant, layout)
    if key not in releases:
        released = "; ".join(_describe(k) for k in releases) or "none"
        raise ValueError(f"no released weights for x{upscale_factor} variant={variant!r} layout={layout!r}; "
                         f"released: {released}. Use pretrained=False for an untrained model.")
    path, arch = releases[key]
    if arch != model.arch:
        differ = ", ".join(f"{k}={model.arch[k]!r} (the file's: {arch[k]!r})" for k in arch if arch[k] != model.arch[k])
        raise ValueError(f"{path.name} (released: {_describe(key)}) does not fit {differ}; leave those arguments "
                         f"out, or use pretrained=False")
    return _repo_module("checkpoint").model_from_checkpoint(path)


def srdensenet_x4(pretrained: bool = True):
    """SRDenseNet_All x4, paper layout: the released weights (weights/srdensenet_x4_all_paper.safetensors, EMA,
    fp16 storage loaded into fp32), in eval mode on the CPU. pretrained=False: the same model untrained."""
    return srdensenet(4, "all", "paper", pretrained=pretrained)
