"""The demo preset's data: scikit-image's bundled photos, split into training and held-out validation images.

Everything here loads offline (the photos ship with scikit-image); release_data.py is the release preset's
counterpart.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data_builders import PrepareError, build_folder, refuse_foreign
from .image_files import write_image

DEMO_TRAIN = ("astronaut", "rocket", "hubble_deep_field", "retina", "stereo_motorcycle", "moon", "brick", "grass",
              "gravel", "coins")
# Held out from the demo training set: three classic test photos of different kinds -- a cat's fur and whiskers
# (fine colour texture), the cameraman (grayscale, hard edges) and a coffee cup (smooth gradients, highlights) --
# small enough (<= 600x400) for a validation pass per epoch on a CPU. Training keeps the larger and texture-rich
# images (retina, hubble, brick, grass, gravel), which give more distinct patches.
DEMO_VALID = ("chelsea", "camera", "coffee")


def demo_images(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named scikit-image photos that load offline (others are downloaded at run time: skipped, said so)."""
    import skimage.data

    images = {}
    for name in names:
        try:
            image = getattr(skimage.data, name)()
        except Exception as error:  # noqa: BLE001 -- any failure to load means "not available here"
            print(f"note: skimage.data.{name} is not available offline ({type(error).__name__}); skipped")
            continue
        images[name] = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disp.)
    return images


def build_demo(train_dir: str | os.PathLike, valid_dir: str | os.PathLike, force: bool = False) -> None:
    """data/demo/{train,valid}: scikit-image's bundled photos as PNG (grayscale ones stay 1-channel). No network."""
    refuse_foreign([Path(train_dir), Path(valid_dir)], force)
    build_demo_folder(train_dir, DEMO_TRAIN, force)
    build_demo_folder(valid_dir, DEMO_VALID, force)


def build_demo_folder(folder: str | os.PathLike, names: tuple[str, ...], force: bool = False) -> None:
    """One folder of the demo data (DEMO_TRAIN's or DEMO_VALID's photos): training makes the one it misses."""
    import skimage

    recipe = {"recipe": "demo", "version": 1, "skimage": skimage.__version__, "images": list(names)}

    def fill(tmp: Path) -> str:
        images = demo_images(names)
        if not images:
            raise PrepareError("none of the scikit-image demo photos loads; is scikit-image installed?")
        for name, image in images.items():
            write_image(tmp / f"{name}.png", image)
        return ", ".join(f"{n} {im.shape[1]}x{im.shape[0]}{'' if im.ndim == 3 else ' grey'}"
                         for n, im in images.items())

    build_folder(Path(folder), recipe, fill, force)
