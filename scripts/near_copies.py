"""Perceptual near-copy detection for the photo pool: the same photo at another size, a crop of it, or a tinted copy.

Names say nothing (one photo ships as ``flower.png`` and ``flower_cropped.jpg``, another as two unrelated names), so
photos are compared by content, on small greyscale thumbnails:

* **whole-image copies** (resized, recompressed, tinted, mirrored): a 63-bit DCT hash of the luminance at 32x32;
  copies differ in a few bits, different photos in about half of them.
* **crops** (one photo is a part of the other, covering ``MIN_CROP`` or more of its width or height): the smaller
  photo's thumbnail is slid over the larger one's at a range of scales (normalised cross-correlation, blind to
  brightness and contrast, so tints do not hide a crop), and the best placements are verified at a finer scale on
  band-pass images, so that two featureless skies, which correlate well at low resolution, do not count as one.

Thresholds were set on the real pool (docs/data.md): whole copies differ in 0 bits where the closest distinct
photos differ in 16; true crops verify at 0.82-1.0 where the best distinct pair reaches 0.63.
Everything here is pure (numpy/OpenCV, no files), so the tests check it on synthetic near-copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THUMB_SIDE = 256  # longer side of the stored thumbnail
HASH_MAX_BITS = 12  # whole-image copies differ in at most this many of the 63 hash bits (different photos: 16+)
COARSE_SIDE = 96  # longer side of the larger photo in the coarse crop search ...
COARSE_TEMPLATE = 24  # ... and of the smaller photo slid over it
COARSE_MIN_NCC = 0.7  # coarse matches below this are not verified
FINE_SIDE = 96  # longer side of the crop when a coarse match is verified
CROP_MIN_NCC = 0.75  # verified band-pass correlation of a crop (true crops: 0.8-1.0; different photos: < 0.65)
MIN_CROP = 0.3  # smallest crop searched: this fraction of the larger photo's width or height


@dataclass(frozen=True)
class Signature:
    """What the comparison needs of one image: a greyscale thumbnail and its DCT hash (plus its mirror's)."""

    thumb: np.ndarray  # uint8 luminance, longer side THUMB_SIDE (or less for smaller images)
    bits: np.ndarray  # bool[63]
    mirrored: np.ndarray  # bool[63], the hash of the left-right mirror image


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Float32 luma (BT.601 weights) of an RGB or grey image."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _resize_longer(grey: np.ndarray, side: int) -> np.ndarray:
    h, w = grey.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def dct_hash(grey: np.ndarray) -> np.ndarray:
    """63 bits: the signs, against their median, of the 8x8 lowest DCT frequencies of a 32x32 copy (DC left out)."""
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    coefficients = cv2.dct(small)[:8, :8].flatten()[1:]
    return coefficients > np.median(coefficients)


def signature(rgb: np.ndarray) -> Signature:
    grey = luminance(rgb)
    thumb = _resize_longer(grey, THUMB_SIDE) if max(grey.shape) > THUMB_SIDE else grey
    return Signature(np.clip(thumb + 0.5, 0, 255).astype(np.uint8), dct_hash(grey), dct_hash(grey[:, ::-1]))


def hash_distance(a: Signature, b: Signature) -> int:
    """Differing hash bits between a and b, or a and b's mirror image, whichever is fewer."""
    return int(min(np.count_nonzero(a.bits != b.bits), np.count_nonzero(a.bits != b.mirrored)))


def _band(grey: np.ndarray) -> np.ndarray:
    """Band-pass (difference of Gaussians): edges and texture without the gradients any two skies share."""
    return cv2.GaussianBlur(grey, (0, 0), 1.0) - cv2.GaussianBlur(grey, (0, 0), 4.0)


def _coarse_matches(small: np.ndarray, large: np.ndarray) -> list[tuple[float, float, tuple[int, int]]]:
    """(NCC, scale, top-left) of the best placement of small inside large at each crop scale, best first."""
    template = _resize_longer(small, COARSE_TEMPLATE)
    coarse = _resize_longer(large, COARSE_SIDE)
    (th, tw), (lh, lw) = template.shape, coarse.shape
    found = []
    # The crop covers a fraction f of the larger photo's width or height: resize the larger thumbnail so that
    # the template is exactly that fraction of it, then slide the template over it.
    for f in np.geomspace(1.0, MIN_CROP, 16):
        scale = max(tw / lw, th / lh) / f
        size = (round(lw * scale), round(lh * scale))
        if size[0] < tw or size[1] < th:
            continue
        ncc = cv2.matchTemplate(cv2.resize(coarse, size, interpolation=cv2.INTER_AREA), template, cv2.TM_CCOEFF_NORMED)
        _, best, _, top_left = cv2.minMaxLoc(ncc)
        found.append((best, scale * lw / large.shape[1], top_left))
    return sorted(found, reverse=True)


def _verify(small: np.ndarray, large: np.ndarray, scale: float, top_left: tuple[int, int], tw: int, th: int) -> float:
    """Band-pass NCC of small against the region of large a coarse match points at, allowing a few pixels' shift."""
    x0, y0, w0, h0 = top_left[0] / scale, top_left[1] / scale, tw / scale, th / scale  # in large's pixels
    fine = FINE_SIDE / max(w0, h0)
    margin = 3 / fine  # three fine pixels around the region absorb the coarse grid's rounding
    x1, y1 = max(0, int(x0 - margin)), max(0, int(y0 - margin))
    x2, y2 = min(large.shape[1], int(np.ceil(x0 + w0 + margin))), min(large.shape[0], int(np.ceil(y0 + h0 + margin)))
    region = cv2.resize(large[y1:y2, x1:x2], (max(1, round((x2 - x1) * fine)), max(1, round((y2 - y1) * fine))),
                        interpolation=cv2.INTER_AREA)
    template = cv2.resize(small, (max(1, round(w0 * fine)), max(1, round(h0 * fine))), interpolation=cv2.INTER_AREA)
    if region.shape[0] < template.shape[0] or region.shape[1] < template.shape[1]:
        return 0.0
    return float(cv2.matchTemplate(_band(region), _band(template), cv2.TM_CCOEFF_NORMED).max())


def crop_score(small: Signature, large: Signature) -> float:
    """How well ``small`` matches some region of ``large`` covering MIN_CROP or more of its width or height.

    A coarse search over scales and positions proposes regions; the best three are verified at a finer scale on
    band-pass images. 0 when no coarse match is good enough.
    """
    s, g = small.thumb.astype(np.float32), large.thumb.astype(np.float32)
    th, tw = _resize_longer(s, COARSE_TEMPLATE).shape
    best = 0.0
    for ncc, scale, top_left in _coarse_matches(s, g)[:3]:
        if ncc < COARSE_MIN_NCC:
            break
        best = max(best, _verify(s, g, scale, top_left, tw, th))
    return best


def near_copy(a: Signature, b: Signature) -> str:
    """Why a and b are the same photo ("" if they are not): a whole-image match or one being a crop of the other."""
    distance = hash_distance(a, b)
    if distance <= HASH_MAX_BITS:
        return f"same image (hash distance {distance}/63)"
    for small, large, word in ((a, b, "part of"), (b, a, "contains")):
        score = crop_score(small, large)
        if score >= CROP_MIN_NCC:
            return f"{word} it (crop correlation {score:.3f})"
    return ""


def groups(names: list[str], signatures: list[Signature]) -> tuple[list[list[int]], dict[tuple[int, int], str]]:
    """Indices of names grouped into sets of near-copies (transitively), and the reason for each matching pair."""
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reasons: dict[tuple[int, int], str] = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            why = near_copy(signatures[i], signatures[j])
            if why:
                reasons[i, j] = why
                parent[root(j)] = root(i)
    found: dict[int, list[int]] = {}
    for i in range(len(names)):
        found.setdefault(root(i), []).append(i)
    return [members for members in found.values() if len(members) > 1], reasons
