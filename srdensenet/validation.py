"""The scoring command's work (cli/validate.py parses): a model or bicubic scored on validation sets with the SR
literature's protocol, the table printed per image and per set, and the JSON, report page and images written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import image_files, metrics, report, sharding
from .checkpoint import model_from_checkpoint
from .choices import SCALES
from .dataset import ValidationSet, find_validation_sets
from .evaluation import evaluate
from .fileio import ensure_output_dir, write_json_atomic
from .hardware import auto_probe, precision_name, resolve_device, resolve_precision
from .provenance import git_commit, library_versions

BICUBIC = "bicubic"


class ValidationError(ValueError):
    """A problem with the command's inputs, reported as one line without a traceback."""


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
    sets = find_validation_sets(config.valid_dirs, scale, config.max_pixels)
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
    skipped = sum(len(s.get("skipped", {})) for s in results.values())
    if skipped and rank == 0:  # the work failed on these files (exit code 1), each named in its own line above
        total = sum(len(v.images) for v in sets)
        print(f"error: {skipped} of {total} images could not be scored (named above); the means are over the other "
              f"{total - skipped}", file=sys.stderr)
    return 1 if skipped else 0


def say_skipped(set_name: str, image_name: str, reason: str) -> None:
    """An image left out of its set's means: one line naming the file and why (the set goes on)."""
    print(f"error: {reason}", file=sys.stderr, flush=True)


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

        results.update(evaluate(model, [vset], device=device, precision=precision, tile=args.tile,
                                self_ensemble=args.self_ensemble, on_image=on_image, max_memory=args.max_memory,
                                shard=(rank, world), on_skip=say_skipped).sets)
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
