"""Export weights to ONNX (dynamic batch, height, width), checked against PyTorch; --help lists the options.

    python export_onnx.py --weights weights/srdensenet_x4_all_paper.safetensors --output srdensenet_x4.onnx

The same command as ``srdensenet export-onnx`` (srdensenet/cli/export_onnx.py)."""

from srdensenet.cli import run_script

if __name__ == "__main__":
    run_script("export_onnx")
