"""scripts/near_copies.py on synthetic near-copies of scikit-image's photos: resized, cropped, tinted, recompressed."""


import cv2
import near_copies as nc
import numpy as np
import pytest
import skimage.data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def resized(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)


def tinted(rgb: np.ndarray) -> np.ndarray:
    """A warm tint with a gamma change, as a wallpaper's colour grade would do."""
    x = rgb.astype(np.float32) / 255.0
    return np.clip(255 * (x ** 0.8) * np.array([1.10, 0.97, 0.80]), 0, 255).astype(np.uint8)


def crop(rgb: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[round(h * top):round(h * bottom), round(w * left):round(w * right)]


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]


COPIES = {
    "half size": lambda im: resized(im, 0.5),
    "double size": lambda im: resized(im, 2.0),
    "tinted": tinted,
    "jpeg q40": lambda im: jpeg(im, 40),
    "mirrored": lambda im: im[:, ::-1],
    "grey": lambda im: np.repeat(nc.luminance(im).astype(np.uint8)[..., None], 3, axis=2),
    "crop 60%, off-centre": lambda im: crop(im, 0.1, 0.7, 0.25, 0.85),
    "crop 35% of the width, resized and tinted": lambda im: tinted(resized(crop(im, 1 / 3, 2 / 3, 0.5, 0.85), 0.7)),
    "square crop of the full height": lambda im: im[:, : min(im.shape[:2])],
}


@pytest.mark.parametrize("kind", sorted(COPIES))
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_near_copies_are_found(photos, name, kind):
    original = photos[name]
    copy = COPIES[kind](original)
    why = nc.near_copy(nc.signature(original), nc.signature(copy))
    assert why, f"{kind} copy of {name} not found"
    assert nc.near_copy(nc.signature(copy), nc.signature(original))  # in either order


def test_different_photos_are_not_near_copies(photos):
    signatures = {name: nc.signature(image) for name, image in photos.items()}
    for a in PHOTOS:
        for b in PHOTOS:
            if a < b:
                assert nc.near_copy(signatures[a], signatures[b]) == "", (a, b)
    # Two halves of one photo share a scene, not pixels: neither is a crop of the other.
    coffee = photos["coffee"]
    left, right = coffee[:, : coffee.shape[1] // 2], coffee[:, coffee.shape[1] // 2:]
    assert nc.near_copy(nc.signature(left), nc.signature(right)) == ""


def test_featureless_images_do_not_match_by_correlation():
    """Two smooth gradients correlate perfectly at low resolution; the band-pass verification rejects that."""
    y, x = np.mgrid[0:300, 0:400].astype(np.float32)
    sky = np.clip(np.stack([100 + x / 8, 140 + y / 6, 200 + 0 * x], -1), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    other = np.clip(sky.astype(np.float32)[::-1] + rng.normal(0, 2, sky.shape), 0, 255).astype(np.uint8)
    assert nc.crop_score(nc.signature(other[50:250, 100:300]), nc.signature(sky)) < nc.CROP_MIN_NCC


def test_groups_are_transitive_and_list_reasons(photos):
    astronaut, coffee = photos["astronaut"], photos["coffee"]
    images = [astronaut, coffee, resized(astronaut, 0.5), astronaut[100:400, 50:450], tinted(coffee)]
    names = [f"p{i}" for i in range(len(images))]
    found, reasons = nc.groups(names, [nc.signature(im) for im in images])
    assert sorted(sorted(g) for g in found) == [[0, 2, 3], [1, 4]]
    assert all(i < j for i, j in reasons) and (1, 4) in reasons


def test_signature_is_small_and_grey(photos):
    s = nc.signature(photos["retina"])
    assert s.thumb.dtype == np.uint8 and max(s.thumb.shape) == nc.THUMB_SIDE and s.bits.shape == (63,)
    tiny = nc.signature(photos["coffee"][:50, :60])  # smaller than a thumbnail: kept at its size
    assert tiny.thumb.shape == (50, 60)
