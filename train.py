"""Train SRDenseNet: a preset, then any config field as an override; --help lists them.

    python train.py --preset demo
    python train.py --preset paper --train-dirs data/DIV2K.lmdb --valid-dirs data/Set5 --resume auto
    torchrun --nproc_per_node 4 train.py --preset paper ...

The presets live in srdensenet/config.py; the loop in srdensenet/training.py (= ``srdensenet train``)."""

from srdensenet.cli import run_script

if __name__ == "__main__":
    run_script("train")
