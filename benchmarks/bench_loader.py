"""Can the data loader keep up with training? Patches per second from an image folder and from LMDBs, beside the
rate at which the model consumes them, with 0 and 2 loader workers, in one run.

    python benchmarks/bench_loader.py                     # sub-images cut from scikit-image's photos (temporary)
    python benchmarks/bench_loader.py --data data/photo_pool/train --batches 12

Loader rates include ``prepare_batch`` on the CPU (LR made from HR, Y channel): it is part of every step's cost.
The decoded-image cache is off (``cache_bytes=0``): every patch decodes its image, as with a data set larger than
the cache (DIV2K, ImageNet). Training rates are fp32 steps (forward + backward + Adam) of the paper model
SRDenseNet x4 (batch 32, HR 100x100) and of the demo preset's model on this machine's CPU; on a GPU the training
rate is ~100x higher, so read "loader / train" as "how many GPU-times too slow/fast".
Ratios > 1 mean the loader is faster than training. Runs in ~2 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from srdensenet import data_builders
from srdensenet.cli import prepare_data as prepare_dataset
from srdensenet.config import Config, model_arch, preset_config
from srdensenet.dataset import TrainDataset, make_train_loader, prepare_batch
from srdensenet.image_files import write_image
from srdensenet.model import SRDenseNet
from srdensenet.release_data import RELEASE_SUBIMAGE
from srdensenet.system_memory import enable_huge_pages
from srdensenet.train_step import make_adam

CPU = torch.device("cpu")


def photos_from_skimage(folder: Path) -> None:
    """The demo preset's photos (scikit-image, offline)."""
    images = prepare_dataset.demo_images(prepare_dataset.DEMO_TRAIN + prepare_dataset.DEMO_VALID)
    for name, image in images.items():
        write_image(folder / f"{name}.png", image)


def loader_rate(sources: list[str], config: Config, workers: int, batches: int, lr_lmdb: str = "",
                cache: bool = False) -> float:
    """Patches/s over `batches` batches after one warm-up batch (worker start-up excluded), prepare_batch included."""
    data = TrainDataset(sources, config.upscale_factor, config.hr_patch_size, config.patches_per_image,
                        augment=True, seed=0, lr_lmdb=lr_lmdb, cache_bytes=(512 << 20) if cache else 0)
    loader = make_train_loader(data, config.batch_size, workers, CPU, seed=0)
    if len(loader) < batches + 1:
        raise SystemExit(f"need {batches + 1} batches, the data gives {len(loader)}: add images or lower --batches")
    iterator = iter(loader)
    prepare_batch(next(iterator), config.upscale_factor, CPU)
    started = time.perf_counter()
    for _ in range(batches):
        prepare_batch(next(iterator), config.upscale_factor, CPU)
    elapsed = time.perf_counter() - started
    del iterator  # shuts the workers down
    return batches * config.batch_size / elapsed


def training_rate(config: Config, steps: int) -> float:
    """Patches/s of fp32 training steps (forward, MSE backward, Adam) on random patches, after one warm-up step."""
    torch.manual_seed(0)
    model = SRDenseNet(**model_arch(config))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_adam(model, config.learning_rate)
    p = config.hr_patch_size // config.upscale_factor
    lr = torch.rand(config.batch_size, 1, p, p)
    hr = torch.rand(config.batch_size, 1, config.hr_patch_size, config.hr_patch_size)

    def step() -> None:
        loss = F.mse_loss(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * config.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="", help="a folder of HR images (default: scikit-image photos)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per loader configuration")
    parser.add_argument("--train-steps", type=int, default=2, help="timed steps of the paper model (demo: 2x)")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the main process (0: torch's default). On a loaded machine 1 avoids "
                             "OpenMP threads waiting for busy cores, which can slow small tensor ops 10-100x")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paper, demo = preset_config("paper"), preset_config("demo")
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        if args.data:
            source = Path(args.data)
        else:  # the release recipe's sub-images (192x192 every 144) cut from the demo photos
            (tmp / "photos").mkdir()
            photos_from_skimage(tmp / "photos")
            source = tmp / "sub"
            size, step = RELEASE_SUBIMAGE["size"], RELEASE_SUBIMAGE["step"]
            data_builders.extract_subimages(tmp / "photos", source, size, step, 0, workers=2)
        hr_lmdb = tmp / "train.lmdb"
        data_builders.build_lmdb(source, hr_lmdb, [paper.upscale_factor], workers=2)
        lr_lmdb = data_builders.lr_lmdb_path(hr_lmdb, paper.upscale_factor)

        print(f"\npaper preset: x{paper.upscale_factor}, HR {paper.hr_patch_size}x{paper.hr_patch_size}, batch "
              f"{paper.batch_size}, augment on, decoded-image cache off; prepare_batch on the CPU")
        train = training_rate(paper, args.train_steps)
        print(f"training SRDenseNet x{paper.upscale_factor} ({paper.variant}/{paper.layout}) fp32"
              f"{' channels_last' if paper.channels_last else ''}: {train:.1f} patches/s "
              f"({paper.batch_size / train:.2f} s/step)")
        print(f"{'source':<14}{'workers':>8}{'patches/s':>12}{'loader/train':>14}{'vs folder':>11}")
        for workers in args.workers:
            folder_rate = None
            for name, sources, lr in (("folder", [str(source)], ""), ("LMDB", [str(hr_lmdb)], ""),
                                      (f"LMDB + X{paper.upscale_factor}", [str(hr_lmdb)], str(lr_lmdb))):
                rate = loader_rate(sources, paper, workers, args.batches, lr_lmdb=lr)
                folder_rate = folder_rate or rate
                print(f"{name:<14}{workers:>8}{rate:>12.0f}{rate / train:>14.1f}{rate / folder_rate:>11.2f}")

        print(f"\ndemo preset: x{demo.upscale_factor}, HR {demo.hr_patch_size}x{demo.hr_patch_size}, batch "
              f"{demo.batch_size}, whole demo photos with the decoded-image cache on (as `make demo` trains)")
        photos = tmp / "photos" if not args.data else source
        train = training_rate(demo, 2 * args.train_steps)
        print(f"training the demo model fp32: {train:.1f} patches/s ({demo.batch_size / train:.2f} s/step)")
        for workers in args.workers:
            rate = loader_rate([str(photos)], demo, workers, args.batches, cache=True)
            print(f"{'folder':<14}{workers:>8}{rate:>12.0f}{rate / train:>14.1f}")
    print(f"\nload average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    enable_huge_pages()  # before the first tensor (PyTorch reads it once), as the commands do
    main()
