"""Score a model (or bicubic) on benchmark sets with the SR literature's protocol (docs/protocol.md).

    python validate.py --weights weights/srdensenet_x4_all_paper.safetensors --valid-dirs data/Set5 --json x4.json
    python validate.py --weights bicubic --upscale-factor 2 --valid-dirs data/Set5   # the published bicubic table
    python validate.py --self-check                                                 # protocol vs golden numbers
    torchrun --nproc_per_node 4 validate.py --weights W --valid-dirs data/DIV2K_valid_HR --report results/page

Each folder holds HR images only (LR made by MATLAB-exact bicubic), or HR/ (or GT/) with LR_bicubic/X{s}/ (or LR/)
paired by file stem. The scale is the checkpoint's; --upscale-factor may repeat it but not contradict it.
Precision is fp32 (the protocol) unless --precision is given on the command line; the config's "auto" is not used.
Exit codes: 0 done, 1 unusable data/weights/device (message names the file), 2 bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

from .. import image_files, imgproc, metrics, report, sharding
from ..checkpoint import CheckpointError, model_from_checkpoint
from ..config import add_bool_option, make_parser, memory_argument, parse_config, tile_argument
from ..dataset import DatasetError, ValidationImage, ValidationSet, find_validation_sets
from ..evaluation import EvaluationError, evaluate, set_scores
from ..fileio import OutputError, ensure_output_dir, hold_output, write_json_atomic
from ..folder_lock import FolderBusyError
from ..hardware import auto_probe, precision_name, resolve_device, resolve_precision
from ..model import SCALES
from ..provenance import git_commit, library_versions

# The golden image sits in the repository (tests/data, with its licence), not in the installed package.
BUTTERFLY = Path(__file__).resolve().parents[2] / "tests" / "data" / "butterfly.png"
# Bicubic baseline on Set5 butterfly, Y channel, crop = scale, as published (2 decimals; docs/protocol.md,
# Golden numbers).
GOLDEN_BUTTERFLY = {2: 27.43, 3: 24.04, 4: 22.10}
BICUBIC = "bicubic"


class ValidationError(ValueError):
    """A problem with the command's inputs, reported as one line without a traceback."""


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


# The config fields validation reads (the preset supplies the rest); --help lists only these.
CONFIG_FIELDS = ("valid_dirs", "upscale_factor", "device", "precision")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = make_parser(__doc__, fields=CONFIG_FIELDS)
    parser.prog = prog or parser.prog
    # --upscale-factor is read here rather than applied to the Config: validate_config ties it to the training patch
    # size (the paper preset's 100-pixel patch would reject x3), which means nothing for validation.
    parser._option_string_actions["--upscale-factor"].dest = "scale_option"
    own = parser.add_argument_group("validation")
    own.add_argument("--weights", metavar="PATH", help="checkpoint to score, or 'bicubic' for the baseline alone "
                     "(required unless --self-check)")
    own.add_argument("--json", metavar="PATH", help="write every score, the protocol and versions to this file")
    own.add_argument("--save-images", metavar="DIR", help="write colour SR images (SR Y + bicubic Cb/Cr) as "
                     "DIR/<set>/<name>.png")
    add_bool_option(own, "--force", "replace an existing --json file, --save-images images or --report page",
                    default=False)
    own.add_argument("--report", metavar="DIR", help="write a results page, DIR/index.html (sortable tables, crops "
                     "where the model gains most), self-contained")
    own.add_argument("--threads", type=int, metavar="N", help="CPU threads per process (default: PyTorch's; under "
                     "torchrun on a CPU, the node's cores divided between its processes)")
    own.add_argument("--tile", type=tile_argument, default="auto", metavar="N",
                     help="run the model on N x N LR tiles; auto (default): only when an image does not fit the "
                          "memory budget; 0: never (output unchanged either way)")
    own.add_argument("--max-memory", type=memory_argument, metavar="SIZE",
                     help="memory budget for --tile auto, e.g. 4GB, 512MB (default: 80%% of the memory available)")
    add_bool_option(own, "--self-ensemble", "average the model over the 8 flips/rotations", default=False)
    add_bool_option(own, "--self-check", "check the protocol against the golden bicubic numbers and an independent "
                    "SSIM, print PASS/FAIL, exit 0/1", default=False)
    return parser


def saved_image_path(folder: str, set_name: str, image_name: str) -> Path:
    return Path(folder) / set_name / Path(image_name).with_suffix(".png")


def resolve_scale(option: str | None, default: int, checkpoint_scale: int | None, weights: str) -> int:
    """The scale to validate at: the checkpoint's, or the option / config default for bicubic (errors: exit 2)."""
    given = None
    if option is not None:
        try:
            given = int(option)
        except ValueError:
            raise ValidationError(f"--upscale-factor: expected int, got {option!r}") from None
        if given not in SCALES:
            raise ValidationError(f"--upscale-factor must be one of {', '.join(map(str, SCALES))}, got {given}")
    if checkpoint_scale is None:
        return given if given is not None else default
    if given is not None and given != checkpoint_scale:
        raise ValidationError(f"--upscale-factor {given} conflicts with {weights}, a x{checkpoint_scale} model "
                              f"(leave --upscale-factor out to use the checkpoint's scale)")
    return checkpoint_scale


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def run_metadata(device: torch.device, precision: str, tile: int | None, self_ensemble: bool) -> dict:
    device_text = str(device)
    if device.type == "cuda":
        device_text += f" ({torch.cuda.get_device_name(device)})"
    return {"versions": library_versions(), "git_commit": git_commit(), "device": device_text,
            "precision": precision, "tile": tile, "self_ensemble": self_ensemble}


def _row(label: str, width: int, s: dict, with_model: bool) -> str:
    bicubic = f"{s['bicubic_psnr']:8.3f} {s['bicubic_ssim']:7.4f}"
    if not with_model:
        return f"  {label:<{width}} {bicubic}"
    return (f"  {label:<{width}} {s['psnr']:8.3f} {s['ssim']:7.4f}   {bicubic}   "
            f"{s['psnr'] - s['bicubic_psnr']:+7.3f} {s['ssim'] - s['bicubic_ssim']:+8.4f}")


def _header(label: str, width: int, with_model: bool) -> str:
    if not with_model:
        return f"  {label:<{width}} {'bicubic':>8} {'SSIM':>7}"
    return (f"  {label:<{width}} {'PSNR':>8} {'SSIM':>7}   {'bicubic':>8} {'SSIM':>7}   {'dPSNR':>7} {'dSSIM':>8}")


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def run(args, config) -> int:
    weights = args.weights
    if args.tile != "auto" and 0 < args.tile < 8:
        raise ValidationError(f"--tile must be auto, 0 (untiled) or at least 8 LR pixels, got {args.tile}")
    if args.max_memory is not None and args.tile != "auto":
        raise ValidationError(f"--max-memory sets the budget of --tile auto; it does nothing with --tile {args.tile}")
    if args.threads is not None and args.threads < 1:
        raise ValidationError(f"--threads must be >= 1, got {args.threads}")
    try:
        device = resolve_device(config.device)
        # fp32 unless --precision was typed: the config's default "auto" would silently pick bf16 on many CPUs.
        precision = config.precision if args.precision is not None else "fp32"
        precision = precision_name(resolve_precision(precision, device))
    except ValueError as error:
        raise ValidationError(str(error)) from None

    # Check the outputs first: a full evaluation should never end in "cannot write".
    if args.json:
        ensure_output_dir(Path(args.json).parent, "--json")
        if Path(args.json).exists() and not args.force:
            raise ValidationError(f"--json {args.json} already exists (an earlier result); pass --force to replace it "
                                  f"or choose another name")
    if args.save_images:
        ensure_output_dir(args.save_images, "--save-images")
    if args.report:
        ensure_output_dir(report.check_folder(args.report, args.force), "--report")
    model = None
    if weights != BICUBIC:
        model = model_from_checkpoint(weights)
    scale = resolve_scale(args.scale_option, config.upscale_factor,
                          model.upscale_factor if model is not None else None, weights)
    if model is not None:
        model = model.to(device)
    sets = find_validation_sets(config.valid_dirs, scale)
    if args.save_images and not args.force:
        taken = [path for path in (saved_image_path(args.save_images, v.name, i.name) for v in sets for i in v.images)
                 if path.exists()]
        if taken:
            raise ValidationError(f"--save-images {args.save_images}: {len(taken)} image(s) already there (e.g. "
                                  f"{taken[0]}); pass --force to replace them or choose another folder")
    rank, world = sharding.init(device, args.threads)
    try:
        results, entries = score_sets(args, model, sets, device, precision, rank, world)
    finally:
        sharding.finish()
    if rank == 0:
        write_outputs(args, results, entries, scale, weights, device, precision, world)
    return 0


def score_sets(args, model, sets: list[ValidationSet], device: torch.device, precision: str, rank: int,
               world: int) -> tuple[dict, list[dict]]:
    """Score every set (this process's share of each under torchrun) and print the tables; returns the full results
    (gathered from every process) and the report's per-image rows (rank 0: all of them)."""
    with_model = model is not None
    scale = sets[0].scale
    options = f"{', self-ensemble' if args.self_ensemble else ''}{f', tile {args.tile}' if args.tile else ''}"
    if rank == 0:
        what = f"model {args.weights} on {device} ({precision}{options})" if with_model else "bicubic baseline"
        print(f"x{scale} {what}; PSNR dB / SSIM on Y, crop {scale}, MATLAB bicubic protocol"
              f"{f'; {world} processes' if world > 1 else ''}")
    results: dict = {}
    entries: list[dict] = []
    for vset in sets:
        width = max(24, *(len(i.name) for i in vset.images))
        if rank == 0:
            print(f"\n{vset.name} ({len(vset.images)} images, {vset.folder})")
            print(_header("image", width, with_model))

        def on_image(set_name: str, image_name: str, scores: dict, sample, lr, width: int = width) -> None:
            if world == 1:  # rows as they come; under torchrun rank 0 prints them all, in order, at the end
                print(_row(image_name, width, scores, with_model), flush=True)
            if args.save_images:
                out = saved_image_path(args.save_images, set_name, image_name)
                out.parent.mkdir(parents=True, exist_ok=True)
                image_files.write_image(out, sample.sr)
            if args.report:
                entries.append(report.image_entry(Path(args.report), set_name, image_name, scores, sample, lr, scale))

        results.update(set_scores(evaluate(model, [vset], device=device, precision=precision, tile=args.tile,
                                           self_ensemble=args.self_ensemble, on_image=on_image,
                                           max_memory=args.max_memory, shard=(rank, world))))
        if rank == 0:
            if world > 1:
                for name, scores in results[vset.name]["images"].items():
                    print(_row(name, width, scores, with_model))
            print(_row("mean", width, results[vset.name], with_model))
    if world > 1 and args.report:  # every process wrote its images' crops; rank 0 writes the page
        by_image = {(e["set"], e["image"]): e for part in sharding.gather(entries, world) for e in part}
        entries = [by_image[(name, image)] for name, s in results.items() for image in s["images"]]
    return results, entries


def write_outputs(args, results: dict, entries: list[dict], scale: int, weights: str, device: torch.device,
                  precision: str, world: int) -> None:
    """The summary table, the JSON and the report page (rank 0)."""
    with_model = weights != BICUBIC
    width = max(16, *(len(name) for name in results))
    print(f"\nsummary x{scale}")
    print(_header("set", width, with_model))
    for name, s in results.items():
        print(_row(name, width, s, with_model))
    meta = {**run_metadata(device, precision, args.tile, args.self_ensemble), "processes": world}
    probe = auto_probe(device) if args.precision == "auto" else None
    if probe is not None:  # --precision auto typed on a CPU: what the probe measured
        meta["auto_precision"] = probe.record()
    if args.json:
        write_json_atomic(args.json, {"upscale_factor": scale, "weights": weights, "protocol": metrics.PROTOCOL,
                                      "meta": meta, "datasets": results}, option="--json")
        print(f"wrote {args.json}")
    if args.save_images:
        print(f"images in {args.save_images}")
    if args.report:
        title = f"x{scale} {Path(weights).name if with_model else 'bicubic'}: PSNR / SSIM on Y"
        page = report.write_page(Path(args.report), results, entries, title,
                                 {"weights": weights, "scale": scale, "protocol": "MATLAB bicubic, Y, crop = scale",
                                  "precision": precision, "git_commit": meta.get("git_commit")})
        print(f"report: {page}")


# ---------------------------------------------------------------------------------------------------------------------
# Self-check
# ---------------------------------------------------------------------------------------------------------------------


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m written out independently of scikit-image: 11x11 Gaussian window (sigma 1.5,
    normalised), 'valid' filtering, K1 = 0.01, K2 = 0.03, L = 255, mean of the SSIM map."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def filt(x: np.ndarray) -> np.ndarray:  # separable 'valid' Gaussian filter
        x = sliding_window_view(x, 11, axis=0) @ g
        return sliding_window_view(x, 11, axis=1) @ g

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


class _BicubicY(torch.nn.Module):
    """A 'model' that upscales its Y input with MATLAB bicubic: checks the model path's alignment and scaling."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.upscale_factor = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imgproc.imresize_torch(x.double(), self.upscale_factor).float()


def self_check() -> int:
    results: list[bool] = []

    def report(ok: bool, text: str) -> None:
        results.append(bool(ok))
        print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)

    # MATLAB rgb2ycbcr on doubles (65.481, not 64.738), unrounded; grey is replicated to RGB, so Y = 16 + 219 g/255.
    grey = np.array([[[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0]]], dtype=np.uint8)
    y = imgproc.y_channel(grey)[0]
    report(np.allclose(y, [16.0, 235.0, 16 + 219 * 128 / 255, 16 + 65.481]),
           f"Y = MATLAB rgb2ycbcr on doubles, unrounded: black {y[0]:.3f}, white {y[1]:.3f}, grey128 {y[2]:.4f}, "
           f"red {y[3]:.3f}")
    q = imgproc.quantize_uint8(np.array([0.5 / 255, 1.5 / 255, -0.1, 1.2]))
    report(q.tolist() == [1, 2, 0, 255], f"SR quantisation clamps and rounds half up like MATLAB: {q.tolist()}")

    if not BUTTERFLY.is_file():
        report(False, f"{BUTTERFLY} is missing (the Set5 butterfly of a clone's tests/data, see "
                      "docs/protocol.md): cannot check the golden numbers")
        print("self-check: FAIL")
        return 1
    for scale, golden in GOLDEN_BUTTERFLY.items():
        vset = ValidationSet("butterfly", BUTTERFLY.parent, scale, (ValidationImage(BUTTERFLY.name, BUTTERFLY, None),))
        bicubic = evaluate(None, [vset], device="cpu")["butterfly"]
        psnr = bicubic["bicubic_psnr"]
        report(abs(psnr - golden) <= 0.01 + 1e-9, f"bicubic x{scale} on Set5 butterfly: {psnr:.4f} dB, published "
                                                  f"{golden:.2f} (+-0.01)  [SSIM {bicubic['bicubic_ssim']:.4f}]")
        # The model path (Y in, Y out, quantised) must line up with the baseline: a bicubic-Y "model" scores within
        # the Y-vs-RGB upscaling difference (docs/protocol.md, step 6: up to ~0.015 dB); a one-pixel shift costs
        # decibels.
        model = evaluate(_BicubicY(scale), [vset], device="cpu")["butterfly"]
        gap = model["psnr"] - psnr
        report(abs(gap) <= 0.02, f"model path x{scale}: bicubic-Y model {model['psnr']:.4f} dB, "
                                 f"{gap:+.4f} dB from the baseline (|gap| <= 0.02)")

    hr = imgproc.mod_crop(image_files.read_image(BUTTERFLY), 4)
    sr_y = imgproc.y_channel(imgproc.bicubic_upscale(imgproc.make_lr(hr, 4), 4))
    hr_y = imgproc.y_channel(hr)
    ours, ref = metrics.ssim_y(sr_y, hr_y, 4), reference_ssim(sr_y[4:-4, 4:-4], hr_y[4:-4, 4:-4])
    report(abs(ours - ref) <= 1e-6, f"SSIM = Wang et al. (11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L 255, valid "
                                    f"mean): {ours:.8f} vs independent {ref:.8f}")
    ok = all(results)
    print(f"self-check: {'PASS' if ok else 'FAIL'} ({sum(results)}/{len(results)} checks)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    config, args = parse_config(argv, parser)
    if args.self_check:
        return self_check()
    if not args.weights:
        parser.error("--weights PATH is required (a checkpoint, or 'bicubic' for the baseline alone)")
    try:
        with contextlib.ExitStack() as held:
            if args.report and sharding.rank_from_env() == 0:  # the process that writes the page
                held.enter_context(hold_output(args.report, "--report", ", or choose another --report folder"))
            return run(args, config)
    except FolderBusyError as error:  # another validate.py writes the same report
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:  # the command line contradicts itself or the checkpoint
        parser.error(str(error))
    except (CheckpointError, DatasetError, EvaluationError, image_files.ImageReadError, image_files.ImageWriteError,
            OutputError, report.ReportError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1

