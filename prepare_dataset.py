"""Build training and validation data: a preset's data, sub-images, LMDBs; --help lists the options.

    python prepare_dataset.py --preset demo
    python prepare_dataset.py subimages --input data/DIV2K/DIV2K_train_HR --output data/DIV2K/train_sub

The same command as ``srdensenet prepare-data`` (srdensenet/cli/prepare_data.py)."""

from srdensenet.cli import run_script

if __name__ == "__main__":
    run_script("prepare_data")
