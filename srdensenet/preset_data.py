"""The data a training run needs, when a preset can make it and it is missing.

The demo preset's folders (data/demo/{train,valid}, also the defaults of every other preset) are made here, as
``prepare_dataset.py --preset demo`` makes them: offline from scikit-image's bundled photos, in about a second. The
release preset's need the fetched photo pool (and a network to fetch it): a run that misses them stops before
anything is written, naming the command that makes them. Any other missing folder is left to the data set's own
"no such folder".
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

from .config import Config, preset_config
from .data_builders import PrepareError
from .dataset import MissingFolderError
from .demo_data import DEMO_TRAIN, DEMO_VALID, build_demo_folder

PHOTO_POOL = Path("data/photo_pool")  # where scripts/fetch_photo_pool.py puts the pool (prepare_dataset.py --pool)
PHOTO_POOL_PACK = Path("data/photo_pool_pack")  # prepare_dataset.py --preset release --pack's --pack-dir


class MissingDataError(MissingFolderError):
    """Data a preset makes is missing and cannot be made here; the message ends with the command that makes it (a
    path the configuration names that does not exist: exit code 2, like any missing folder)."""


def make_missing_data(config: Config, prog: str = "train.py") -> str:
    """Make the demo folders the config needs and misses (returns the one line that says so; "" when nothing was
    missing); raise MissingDataError for missing release data. ``prog`` names the commands in its words."""
    needed = [*config.train_dirs, *config.valid_dirs, *([config.train_lr_lmdb] if config.train_lr_lmdb else [])]
    missing = [folder for folder in dict.fromkeys(needed) if not Path(folder).exists()]
    for folder in missing:
        how = release_data_hint(folder, prog)
        if how:
            raise MissingDataError(f"{folder}: no such folder; {how}")
    demo = demo_folders()
    to_make = [folder for folder in missing if _key(folder) in demo]
    if not to_make:
        return ""
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # build_folder's lines: this function says it in one
            for folder in to_make:
                build_demo_folder(folder, demo[_key(folder)])
    except PrepareError as error:
        raise PrepareError(f"{error} (while making the missing {', '.join(to_make)})") from None
    photos = sum(len(list(Path(folder).glob("*.png"))) for folder in to_make)
    return (f"{' and '.join(to_make)} missing: made {photos} photos from scikit-image's bundled ones in "
            f"{time.perf_counter() - started:.1f} s, as `{prepare_command(prog)} --preset demo` does")


def demo_folders() -> dict[str, tuple[str, ...]]:
    """The demo preset's folders (as absolute paths) and the photos each holds."""
    demo = preset_config("demo")
    return {_key(demo.train_dirs[0]): DEMO_TRAIN, _key(demo.valid_dirs[0]): DEMO_VALID}


def release_data_hint(folder: str, prog: str) -> str:
    """How a missing folder of the release data is made, ending with the command ("" when it is none of them)."""
    release = preset_config("release")
    prepare = f"{prepare_command(prog)} --preset release"
    if _key(folder) in {_key(d) for d in (*release.train_dirs, *release.valid_dirs)}:
        if not (PHOTO_POOL / "MANIFEST.tsv").is_file():  # the pool itself is not fetched yet
            return (f"it is the release preset's data, made from the photo pool (fetched from Debian's package "
                    f"mirrors) by: python scripts/fetch_photo_pool.py && {prepare}")
        return f"it is the release preset's data, made from the fetched photo pool by: {prepare}"
    if _key(folder) in {_key(PHOTO_POOL_PACK / "train"), _key(PHOTO_POOL_PACK / "valid")}:
        return (f"it is the packed photo pool: make it where the pool is, copy {PHOTO_POOL_PACK} here; made by: "
                f"{prepare} --pack")
    return ""


def prepare_command(prog: str) -> str:
    """prepare_dataset.py in the words of the training command: a script of the clone, or the console command."""
    return "srdensenet prepare-data" if prog.startswith("srdensenet") else "python prepare_dataset.py"


def _key(folder: str | os.PathLike) -> str:
    return os.path.abspath(folder)
