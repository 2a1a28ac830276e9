"""Scoring a model on full-image validation sets with the SR literature's protocol (docs/protocol.md).

One function, ``evaluate``, serves validate.py and train.py alike, so a number printed during training is the number
validate.py reports for the same weights. Per image (``ValidationSet.load`` has done steps 0-2):

    LR, HR (uint8 RGB, HR mod-cropped)
      model:   Y(LR) / 255, unrounded, float32 (1, 1, h, w) -> model -> clamp [0, 1] -> uint8  (steps 3-4)
      bicubic: MATLAB imresize of the uint8 RGB LR, x scale, uint8 -> Y                       (step 6)
      both scored against the unrounded Y of HR: PSNR and SSIM, ``scale`` pixels cropped      (step 5)

A set's score is the mean of its images' scores (step 8). Colour images for people are the SR Y with the bicubic
Cb/Cr (step 7, ``colour_sr``); they are never scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import hardware, imgproc, metrics, sharding
from .checkpoint import unwrap_model
from .dataset import UnusableImageError, ValidationSet
from .inference import predict_y
from .memory import InsufficientMemoryError
from .model import SRDenseNet

SCORE_KEYS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")


class EvaluationError(ValueError):
    """A model or image that cannot be evaluated; the message names the set and image."""


class Sample(NamedTuple):
    """One image for people, as three same-sized uint8 RGB arrays (HxWx3): ``np.concatenate(sample, axis=1)``
    gives a bicubic | SR | HR strip. ``sr`` is ``colour_sr`` of the model's output (what inference.py would write);
    for a bicubic-only evaluation it is the bicubic image."""

    bicubic: np.ndarray
    sr: np.ndarray
    hr: np.ndarray


class Evaluation(NamedTuple):
    """What ``evaluate`` returns. ``sets``: ``{set name: {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images":
    {image name: {same four}}}}`` with Python floats, a set's scores the means of its images' (exactly the
    ``"datasets"`` block of validate.py's JSON), plus ``"skipped": {image name: reason}`` where images were left
    out. ``samples``: the first ``keep_samples`` images as Samples, in set order, for TensorBoard."""

    sets: dict[str, dict]
    samples: list[Sample]


# Called once per image, after it is scored: (set name, image name, its four scores, its Sample, the uint8 RGB LR).
ImageCallback = Callable[[str, str, dict, Sample, np.ndarray], None]
# Called for an image left out (unreadable, over the pixel limit, too small): (set name, image name, the one line).
SkipCallback = Callable[[str, str, str], None]
# What is scored: an LR Y image in [0, 1] (float32, HxW, unrounded) -> the SR Y in [0, 1] (float, sHxsW, unclamped).
Predictor = Callable[[np.ndarray], np.ndarray]


def colour_sr(sr_y: np.ndarray, lr_rgb: np.ndarray, scale: int) -> np.ndarray:
    """Protocol step 7: a colour SR image from the SR Y (HxW on the [0, 255] scale, float or uint8) and the uint8 RGB
    LR, whose Cb/Cr are upscaled with MATLAB bicubic ``imresize``. Returns uint8 RGB, out-of-gamut colours clipped.

    The same formula as ``inference.upscale``: with the model's float Y this gives inference.py's output exactly.
    The Y of the result differs a little from ``sr_y`` (RGB rounding and clipping), which is why scores are always
    computed on the Y itself, never on this image.
    """
    sr_y = np.asarray(sr_y, dtype=np.float64)
    lr_rgb = np.asarray(lr_rgb)
    if lr_rgb.dtype != np.uint8 or lr_rgb.ndim != 3 or lr_rgb.shape[2] != 3:
        raise TypeError(f"colour_sr: expected HxWx3 uint8 LR RGB, got {lr_rgb.dtype} {lr_rgb.shape}")
    if sr_y.shape != (lr_rgb.shape[0] * scale, lr_rgb.shape[1] * scale):
        raise ValueError(f"colour_sr: SR Y is {sr_y.shape}, expected x{scale} the LR {lr_rgb.shape[:2]}")
    cbcr = imgproc.imresize(imgproc.rgb_to_ycbcr(lr_rgb)[:, :, 1:], scale=float(scale))
    return imgproc.quantize_uint8(imgproc.ycbcr_to_rgb(np.concatenate([sr_y[:, :, None], cbcr], axis=2)))


def _srdensenet_predictor(model: SRDenseNet, dtype: torch.dtype, tile: int | str | None, self_ensemble: bool,
                          max_memory: int | None) -> Predictor:
    """The model's float Y through inference.predict_y, so validation and inference.py share one implementation of
    precision, tiling and self-ensemble (its "fp32" is plain NCHW fp32, the reference). The precision is resolved by
    hardware.py (as in training), so inference.py's own "auto" plan (which may pick ONNX Runtime or fp16) never
    decides what a score means."""

    def predict(lr_y01: np.ndarray) -> np.ndarray:
        out = predict_y(model, lr_y01, precision=hardware.precision_name(dtype), tile=tile,
                        self_ensemble=self_ensemble, max_memory=max_memory)
        return np.asarray(out, dtype=np.float32)

    return predict


def _score(sr_y: np.ndarray, hr_y: np.ndarray, scale: int) -> tuple[float, float]:
    return metrics.psnr_y(sr_y, hr_y, scale), metrics.ssim_y(sr_y, hr_y, scale)


def evaluate(model: nn.Module | None, sets: Sequence[ValidationSet], *, device: torch.device | str,
             precision: str = "fp32", tile: int | str | None = "auto", self_ensemble: bool = False,
             keep_samples: int = 0, progress: bool = False, on_image: ImageCallback | None = None,
             max_memory: int | None = None, shard: tuple[int, int] = (0, 1),
             on_skip: SkipCallback | None = None) -> Evaluation:
    """Score ``model`` and the bicubic baseline on every image of every set (docs/protocol.md); an Evaluation.

    ``model``: an SRDenseNet, plain or inside a DDP / torch.compile wrapper (the plain module inside is what runs, so
    image sizes never trigger recompilation), already on ``device``. It is put in eval mode and restored to its
    previous mode afterwards. ``None`` evaluates bicubic alone: then "psnr"/"ssim" equal the bicubic ones.
    ``precision``: "fp32" (the protocol's default; TF32 is switched off on CUDA meanwhile) or "bf16" / "fp16" /
    "auto" (hardware.resolve_precision).
    ``tile``: "auto" (untiled unless the image does not fit the memory budget, ``max_memory`` bytes or 80% of the
    memory available; inference.plan_memory), None/0 (whole image) or an LR tile size; ``self_ensemble``: mean over
    the 8 flips. ``keep_samples``, ``progress``, ``on_image``, ``shard``, ``on_skip``: as in ``evaluate_predictor``.

    Raises EvaluationError (naming the image) for a model whose scale is wrong or whose output is not finite or does
    not fit in memory (the InsufficientMemoryError is its ``__cause__``), or for a set none of whose images can be
    scored. An image that cannot be read or scored is left out of its set's means (``evaluate_predictor``).
    """
    device = torch.device(device) if isinstance(device, str) else device
    dtype = hardware.resolve_precision(precision, device)
    plain = unwrap_model(model) if model is not None else None
    if plain is not None and not isinstance(plain, SRDenseNet):
        raise TypeError(f"evaluate scores an SRDenseNet, got {type(plain).__name__}; score other models with "
                        f"evaluate_predictor")
    predict = None if plain is None else _srdensenet_predictor(plain, dtype, tile, self_ensemble, max_memory)
    scale = None if plain is None else plain.upscale_factor
    with _eval_mode(plain), torch.inference_mode(), hardware.exact_fp32(device, dtype):
        return evaluate_predictor(predict, scale, sets, keep_samples=keep_samples, progress=progress,
                                  on_image=on_image, shard=shard, on_skip=on_skip)


def evaluate_predictor(predict: Predictor | None, scale: int | None, sets: Sequence[ValidationSet], *,
                       keep_samples: int = 0, progress: bool = False, on_image: ImageCallback | None = None,
                       shard: tuple[int, int] = (0, 1), on_skip: SkipCallback | None = None) -> Evaluation:
    """Score any x``scale`` Y-channel upscaler (a Predictor; None: bicubic alone) with the protocol, as ``evaluate``
    does an SRDenseNet: the self-check's bicubic "model", or another architecture.

    ``keep_samples=N``: keep the first N images' Samples. ``on_image(set name, image name, scores, Sample, LR)`` is
    called after each image (validate.py prints and saves). ``shard=(rank, world size)``: under torchrun, this
    process scores every world-th image of each set (``sharding.shard``) and the per-image scores of all processes
    are gathered, so every process returns the full result, equal to one process's. An image that cannot be read or
    scored (dataset.UnusableImageError: corrupt, over the pixel limit, too small for the border crop) is left out
    of the means and the set goes on: ``on_skip(set name, image name, its one-line reason)`` is called, and the
    set's dict gets ``"skipped": {image name: reason}``.
    """
    with _progress(progress, sum(len(s.images) for s in sets)) as bar:
        run = _Evaluation(predict, scale, keep_samples, on_image, bar, on_skip)
        return Evaluation({vset.name: run.score_set(vset, shard) for vset in sets}, run.samples)


@contextlib.contextmanager
def _eval_mode(model: nn.Module | None) -> Iterator[None]:
    """The model in eval mode meanwhile, then back in the mode it was in."""
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if model is not None:
            model.train(was_training)


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[object]:
    """A tqdm bar of ``total`` images when ``show``, else None."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="evaluate", unit="img", leave=False)
    try:
        yield bar
    finally:
        bar.close()


@dataclass
class _Evaluation:
    """One evaluation: what is scored (None: bicubic alone) at which scale, and what is kept for people."""

    predict: Predictor | None
    scale: int | None
    keep_samples: int
    on_image: ImageCallback | None
    bar: object  # a tqdm bar, or None
    on_skip: SkipCallback | None = None
    samples: list[Sample] = field(default_factory=list)

    def score_set(self, vset: ValidationSet, shard: tuple[int, int]) -> dict:
        """The set's mean scores and per-image scores (this process's share, then every process's); images that
        cannot be used are left out, named under "skipped"."""
        if self.scale is not None and self.scale != vset.scale:
            raise EvaluationError(f"{vset.name}: the model is x{self.scale} but the set is loaded for x{vset.scale}")
        named = image_keys(vset)
        images, skipped = {}, {}
        for key, image in sharding.shard(named, *shard):
            try:
                images[key] = self.score_image(vset, key, image)
            except UnusableImageError as error:
                skipped[key] = str(error)
                if self.on_skip is not None:
                    self.on_skip(vset.name, key, str(error))
                if self.bar is not None:
                    self.bar.update()
        if shard[1] > 1:
            parts = sharding.gather((images, skipped), shard[1])
            gathered = {k: v for part, _ in parts for k, v in part.items()}
            skipped = {k: v for _, part in parts for k, v in part.items()}
            images = {key: gathered[key] for key, _ in named if key in gathered}
        if not images:
            raise EvaluationError(f"{vset.name}: none of its {len(named)} images can be scored "
                                  f"({next(iter(skipped.values()), 'no images')})")
        means = {k: float(np.mean([s[k] for s in images.values()])) for k in SCORE_KEYS}
        return {**means, "images": images, **({"skipped": skipped} if skipped else {})}

    def score_image(self, vset: ValidationSet, key: str, image: object) -> dict[str, float]:
        """The four scores of one image (protocol steps 3-6); keeps its Sample and calls on_image as asked."""
        scale = vset.scale
        lr, hr = vset.load(image)
        hr_y = imgproc.y_channel(hr)
        bicubic = imgproc.bicubic_upscale(lr, scale)
        bicubic_psnr, bicubic_ssim = _score(imgproc.y_channel(bicubic), hr_y, scale)
        out = None if self.predict is None else self.model_y(f"{vset.name}/{key}", lr, hr_y.shape, scale)
        # The model's Y is quantised exactly as if it were saved as an 8-bit PNG (protocol step 4).
        psnr, ssim = ((bicubic_psnr, bicubic_ssim) if out is None else
                      _score(imgproc.quantize_uint8(out), hr_y, scale))
        scores = {"psnr": psnr, "ssim": ssim, "bicubic_psnr": bicubic_psnr, "bicubic_ssim": bicubic_ssim}
        want_sample = len(self.samples) < self.keep_samples
        if want_sample or self.on_image is not None:
            sr_rgb = bicubic if out is None else colour_sr(out.astype(np.float64) * 255.0, lr, scale)
            sample = Sample(bicubic, sr_rgb, hr)
            if want_sample:
                self.samples.append(sample)
            if self.on_image is not None:
                self.on_image(vset.name, key, dict(scores), sample, lr)
        if self.bar is not None:
            self.bar.update()
        return scores

    def model_y(self, where: str, lr: np.ndarray, shape: tuple[int, int], scale: int) -> np.ndarray:
        """The model's float Y (unclamped) for a uint8 RGB LR, checked: the expected size, finite values."""
        lr_y01 = (imgproc.y_channel(lr) / 255.0).astype(np.float32)  # unrounded Y (step 3)
        try:
            out = self.predict(lr_y01)
        except InsufficientMemoryError as error:  # the cause stays attached: the command line words the advice
            raise EvaluationError(f"{where} ({lr.shape[1]}x{lr.shape[0]} LR px): {error}") from error
        if out.shape != shape:
            raise EvaluationError(f"{where}: the model output is {out.shape[::-1]} (WxH), expected {shape[::-1]} = "
                                  f"x{scale} the LR")
        if not np.isfinite(out).all():
            raise EvaluationError(f"{where}: the model output contains NaN or infinite values")
        return out


def image_keys(vset: ValidationSet) -> list[tuple[str, object]]:
    """(name in the results, image) for every image of a set: the file name, or for a file name that two
    sub-folders share, its path relative to the set."""
    keys: list[tuple[str, object]] = []
    seen: set[str] = set()
    for image in vset.images:
        key = image.name
        if key in seen:
            key = image.hr_path.relative_to(vset.folder).as_posix()
        seen.add(key)
        keys.append((key, image))
    return keys


__all__ = ["evaluate", "evaluate_predictor", "Evaluation", "Predictor", "colour_sr", "Sample", "EvaluationError",
           "SCORE_KEYS", "SkipCallback"]
