"""Score a model (or bicubic) on benchmark sets with the SR literature's protocol; --help lists the options.

    python validate.py --weights weights/srdensenet_x4_all_paper.safetensors --valid-dirs data/Set5 --json x4.json
    python validate.py --self-check

The same command as ``srdensenet validate`` (srdensenet/cli/validate.py)."""

from srdensenet.cli import run_script

if __name__ == "__main__":
    run_script("validate")
