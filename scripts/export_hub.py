"""Write a hub-ready model folder: model.safetensors, config.json and a README.md model card.

    python scripts/export_hub.py --weights weights/srdensenet_x4_all_paper.safetensors --output hub/srdensenet_x4

Nothing is uploaded: the folder is what a user would upload to a model hub. ``model.safetensors`` holds the
checkpoint's preferred weights (EMA when present) as stored (fp16 stays fp16) with this project's header metadata;
``config.json`` the SRDenseNet constructor arguments; ``README.md`` a model card whose YAML block carries what hubs
read (licence, tags, training data, PSNR / SSIM with bicubic beside them) and whose text cites the paper.
The folder loads back with ``inference.load_model(DIR)`` and gives the same outputs as the weights it came from.

Scores come from ``--scores``, a ``validate.py --json`` report of these weights; for the shipped release (recognised
by the SHA-256 of its tensors) they default to assets/release_x4/scores.json, the README model card's numbers.
Without scores the card says they were not measured. The folder is built beside DIR and swapped into place, so DIR is
never half-written; an existing non-empty DIR is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from srdensenet.checkpoint import (
    HUB_CONFIG,
    HUB_WEIGHTS,
    CheckpointError,
    export_weights,
    load_checkpoint,
    model_from_checkpoint,
    preferred_weights,
    weights_digest,
)
from srdensenet.fileio import (
    OutputError,
    atomic_folder,
    exit_quietly_on_broken_pipe,
    write_json_atomic,
    write_text_atomic,
)
from srdensenet.folder_lock import FolderBusyError
from srdensenet.model import SRDenseNet, count_parameters

ROOT = Path(__file__).resolve().parent.parent

RELEASE_SCORES = ROOT / "assets" / "release_x4" / "scores.json"
SCORE_KEYS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
TAGS = ("super-resolution", "image-super-resolution", "srdensenet", "pytorch", "safetensors")
BIBTEX = """@inproceedings{tong2017srdensenet,
  title     = {Image Super-Resolution Using Dense Skip Connections},
  author    = {Tong, Tong and Li, Gen and Liu, Xiejie and Gao, Qinquan},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages     = {4799--4807},
  year      = {2017},
  doi       = {10.1109/ICCV.2017.514}
}"""
VARIANT_NAMES = {"h": "SRDenseNet_H", "hl": "SRDenseNet_HL", "all": "SRDenseNet_All"}


class HubError(ValueError):
    """A problem with the command's inputs or output folder, reported as one line."""


# ---------------------------------------------------------------------------------------------------------------------
# Scores and training data
# ---------------------------------------------------------------------------------------------------------------------


def read_scores(path: Path, digest: str, scale: int) -> dict[str, Any]:
    """A validate.py --json report (or assets/release_x4/scores.json), checked against the weights being exported."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise HubError(f"--scores {path}: not readable JSON ({getattr(error, 'strerror', None) or error})") from None
    datasets = report.get("datasets") if isinstance(report, dict) else None
    if not isinstance(datasets, dict) or not datasets:
        raise HubError(f"--scores {path}: no 'datasets' scores (expected the JSON that validate.py --json writes)")
    for name, scores in datasets.items():
        missing = [k for k in SCORE_KEYS if not isinstance(scores, dict) or not isinstance(scores.get(k), float | int)]
        if missing:
            raise HubError(f"--scores {path}: dataset {name!r} lacks {', '.join(missing)}")
    if report.get("upscale_factor", scale) != scale:
        raise HubError(f"--scores {path}: scores of a x{report['upscale_factor']} model, these weights are x{scale}")
    if report.get("weights_sha256", digest) != digest:
        raise HubError(f"--scores {path}: scores of other weights (their SHA-256 differs from these weights')")
    return report


def default_scores(digest: str, scale: int) -> dict[str, Any] | None:
    """The README model card's numbers when the weights are the shipped release, else None."""
    if not RELEASE_SCORES.is_file() or json.loads(RELEASE_SCORES.read_text()).get("weights_sha256") != digest:
        return None
    return read_scores(RELEASE_SCORES, digest, scale)


def training_data(checkpoint: dict[str, Any], scores: dict[str, Any] | None) -> dict[str, str]:
    """{"id": ..., "description": ...} from the scores file, else what the checkpoint's config recorded."""
    given = (scores or {}).get("training_data")
    if isinstance(given, dict) and given.get("description"):
        return {"id": str(given.get("id", "")), "description": str(given["description"])}
    dirs = (checkpoint.get("config") or {}).get("train_dirs")
    if dirs:
        return {"id": "", "description": f"the training folders recorded in the checkpoint: {', '.join(dirs)}"}
    return {"id": "", "description": "not recorded in the checkpoint"}


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][\w.,()/+-]*(?: [\w.,()/+-]+)*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    # Plain when YAML cannot misread it (no ': ', ' #', leading symbol, boolean word); else JSON-quoted, which YAML
    # reads as a double-quoted scalar.
    return text if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS else json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for dicts, lists and scalars (the model card's metadata needs no more than this)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines += to_yaml(item, indent + (2 if isinstance(item, dict) else 0))
            else:
                lines.append(f"{pad}{key}: {_scalar(item) if not isinstance(item, dict | list) else '[]'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                nested = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines += nested[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def card_metadata(name: str, scale: int, scores: dict[str, Any] | None, data: dict[str, str]) -> dict[str, Any]:
    """The YAML block of the card: licence, tags, training data and a model-index with bicubic beside each score."""
    meta: dict[str, Any] = {"license": "mit", "library_name": "pytorch", "pipeline_tag": "image-to-image",
                            "tags": list(TAGS)}
    if data["id"]:
        meta["datasets"] = [data["id"]]
    if scores:
        meta["metrics"] = ["psnr", "ssim"]
        results = []
        for dataset, s in scores["datasets"].items():
            metrics = [{"type": kind, "value": round(float(s[key]), 4), "name": f"{label} (Y, crop {scale})"}
                       for kind, key, label in (("psnr", "psnr", "PSNR"), ("ssim", "ssim", "SSIM"),
                                                ("psnr", "bicubic_psnr", "bicubic PSNR"),
                                                ("ssim", "bicubic_ssim", "bicubic SSIM"))]
            slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")
            results.append({"task": {"type": "image-to-image", "name": f"Image Super-Resolution x{scale}"},
                            "dataset": {"name": dataset, "type": slug}, "metrics": metrics})
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def scores_section(scores: dict[str, Any] | None, scale: int) -> list[str]:
    if not scores:
        return ["Not measured for these weights. Measure them with SRDenseNet-PyTorch's `validate.py --weights "
                "<this folder> --valid-dirs ... --json scores.json` and export again with `--scores scores.json`."]
    lines = [f"PSNR (dB) / SSIM on the Y channel, x{scale}, {scale}-pixel border cropped, LR made by MATLAB-exact "
             "bicubic downscaling, fp32 (the protocol of SRDenseNet-PyTorch's docs/protocol.md):", "",
             "| dataset | this model | bicubic |", "|---|---|---|"]
    for dataset, s in scores["datasets"].items():
        where = f" (`{s['folder']}`)" if s.get("folder") else ""
        lines.append(f"| {dataset}{where} | {s['psnr']:.2f} / {s['ssim']:.4f} | {s['bicubic_psnr']:.2f} / "
                     f"{s['bicubic_ssim']:.4f} |")
    return lines


def origin_url() -> str | None:
    """The clone's ``origin`` remote as a web address (an ``git@host:owner/repo.git`` one rewritten to https), or
    None: the default of --repository."""
    try:
        found = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.sub(r"^git@([^:]+):", r"https://\1/", found)
    return found.removesuffix(".git") if found.startswith(("https://", "http://")) else None


def model_card(name: str, model: SRDenseNet, checkpoint: dict[str, Any], stored: str,
               scores: dict[str, Any] | None, repository: str | None = None) -> str:
    arch, scale = model.arch, model.upscale_factor
    data = training_data(checkpoint, scores)
    trained = ", ".join(f"{k} {checkpoint[k]}" for k in ("epoch", "step") if k in checkpoint) or "not recorded"
    lines = ["---", *to_yaml(card_metadata(name, scale, scores, data)), "---", "", f"# {name}", "",
             f"{VARIANT_NAMES[arch['variant']]} (Tong et al., ICCV 2017, \"Image Super-Resolution Using Dense Skip "
             f"Connections\"), x{scale}, layout `{arch['layout']}`, {count_parameters(model):,} parameters, trained "
             "with SRDenseNet-PyTorch. It upscales the Y channel of YCbCr (input Y/255 in [0, 1], shape (N, 1, H, W); "
             f"output (N, 1, {scale}H, {scale}W)); colour images get bicubic Cb/Cr.", "",
             "## Files", "",
             f"- `{HUB_WEIGHTS}`: the weights ({stored} storage, loads into the fp32 model; "
             f"{'EMA' if checkpoint.get('used_ema') or checkpoint.get('ema') else 'raw'} weights), with the "
             "constructor arguments and a SHA-256 of the tensors in the header metadata.",
             f"- `{HUB_CONFIG}`: the constructor arguments of `srdensenet.SRDenseNet`.", "",
             "## Use", "", "With SRDenseNet-PyTorch installed (`pip install .` in its clone"
             f"{f', {repository}' if repository else ''}):", "", "```python",
             "import srdensenet", "", 'model = srdensenet.load_model("path/to/this/folder")',
             "sr = srdensenet.upscale(model, rgb_uint8)  # H x W x 3 uint8 -> sH x sW x 3", "```", "",
             "Or with `safetensors` and the package's model alone:", "", "```python", "import json", "",
             "from safetensors.torch import load_file", "from srdensenet import SRDenseNet", "",
             f'model = SRDenseNet(**json.load(open("{HUB_CONFIG}")))',
             f'model.load_state_dict(load_file("{HUB_WEIGHTS}"))  # fp16 values are copied into fp32', "```", "",
             "## Training data", "", f"{data['description'][0].upper()}{data['description'][1:]}", "",
             f"Training: {trained}.", "", "## Evaluation", "", *scores_section(scores, scale), "",
             "## Licence", "", "MIT (the licence of SRDenseNet-PyTorch). The training photos keep their own licences.",
             *(["", "## Code", "", repository] if repository else []),
             "", "## Citation", "", "```bibtex", BIBTEX, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------------------------------


def check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise HubError(f"--output {output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise HubError(f"--output {output}: exists and is not empty; pass --force to replace it")


def build_folder(folder: Path, source: str, checkpoint: dict[str, Any], name: str,
                 scores: dict[str, Any] | None, repository: str | None = None) -> SRDenseNet:
    """Write the three files into folder and prove they load back with the same tensors."""
    weights = preferred_weights(checkpoint)
    half = all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    model = export_weights(checkpoint, folder / HUB_WEIGHTS, source=source, half=half)
    write_json_atomic(folder / HUB_CONFIG, model.arch, option="--output")
    write_text_atomic(folder / "README.md", model_card(name, model, checkpoint, "fp16" if half else "fp32", scores,
                                                            repository))
    # What was meant to be written: the stored values when they are fp16 or fp32, else their fp32 copy.
    expected = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    if weights_digest(load_checkpoint(folder)["model"]) != weights_digest(expected):
        raise HubError(f"{folder}: the written weights differ from {source}")
    return model


def export(weights: str, output: Path, scores_path: Path | None, force: bool,
           repository: str | None = None) -> tuple[SRDenseNet, bool]:
    """Build the folder next to output and swap it into place; returns the model and whether it has scores."""
    check_output(output, force)
    checkpoint = load_checkpoint(weights)
    model = model_from_checkpoint(checkpoint, source=weights)
    digest = weights_digest(preferred_weights(checkpoint))
    scale = model.upscale_factor
    scores = read_scores(scores_path, digest, scale) if scores_path else default_scores(digest, scale)
    name = Path(weights).stem if Path(weights).is_file() else Path(weights).resolve().name
    with atomic_folder(output, "--output") as tmp:
        build_folder(tmp, weights, checkpoint, name, scores, repository)
        check_output(output, force)  # again: something may have appeared there meanwhile
    return model, scores is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint, release file or hub folder to export")
    parser.add_argument("--output", required=True, type=Path, help="folder to write (must be new or empty)")
    parser.add_argument("--scores", type=Path, help="validate.py --json report of these weights, for the card "
                        "(default for the shipped release: assets/release_x4/scores.json)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --output folder")
    parser.add_argument("--repository", default=origin_url(), metavar="URL",
                        help="the code's web address, named in the card (default: this clone's origin remote, if any)")
    args = parser.parse_args()
    try:
        model, scored = export(args.weights, args.output, args.scores, args.force, args.repository)
    except FolderBusyError as error:  # another process exports to the same folder
        print(f"export_hub.py: error: {error}", file=sys.stderr)
        return 2
    except (HubError, CheckpointError, OutputError, OSError) as error:
        print(f"export_hub.py: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}/{{{HUB_WEIGHTS}, {HUB_CONFIG}, README.md}} (x{model.upscale_factor} "
          f"{model.arch['variant']} {model.arch['layout']}; {'with' if scored else 'no'} scores in the card)")
    return 0


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)
