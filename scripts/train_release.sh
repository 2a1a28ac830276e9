#!/usr/bin/env bash
# Reproduce the shipped x4 model: SRDenseNet_All, paper layout, on the Debian photo pool (docs/protocol.md, Data sources).
#   bash scripts/train_release.sh [extra train.py overrides, e.g. --device cuda:1]
# Fetching the pool is the only step that uses the network (Debian packages). Training is resumable: run the
# script again after an interruption. The shipped file came from 13,718 steps (5.5 min) on one H200;
# assets/release_x4/meta.json holds its exact command line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY scripts/fetch_photo_pool.py
$PY prepare_dataset.py --preset release
$PY train.py --preset release --resume auto "$@"
$PY scripts/export_weights.py --checkpoint runs/release_x4/checkpoints/last.pth \
    --output weights/srdensenet_x4_all_paper.safetensors
$PY validate.py --weights weights/srdensenet_x4_all_paper.safetensors --valid-dirs tests/data data/demo/valid data/photo_pool/valid
