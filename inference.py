"""Upscale photos with SRDenseNet (the released x4 weights unless --weights); --help lists the options.

    python inference.py -i photo.jpg folder/ -o results/
    torchrun --nproc_per_node 4 inference.py -i frames/ -o out/     # images split across 4 processes

The same command as ``srdensenet upscale``; the code is srdensenet/cli/upscale.py over srdensenet/inference.py."""

from srdensenet.cli import run_script

if __name__ == "__main__":
    run_script("upscale")
