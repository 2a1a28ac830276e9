#!/usr/bin/env bash
# Reproduce the shipped x4 model: SRDenseNet_All, paper layout, on the Debian photo pool (docs/protocol.md, Data sources).
#   bash scripts/train_release.sh [extra train.py overrides, e.g. --device cuda:1; not --run-name / --output-dir:
#   the export reads runs/release_x4/]
# Fetching the pool is the only step that uses the network (Debian packages); every folder a later step reads is
# made by an earlier one. Training is resumable: run the script again after an interruption. The shipped file came
# from 13,718 steps (5.5 min) on one H200; assets/release_x4/meta.json holds its exact command line.
# The exported weights go to runs/release_x4/ and never replace the tracked release file: copying them into
# weights/ is a separate, explicit step (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
# The clone's package, whether or not it is installed (a GPU machine brings its own torch and nothing else).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
EXPORTED=runs/release_x4/srdensenet_x4_all_paper.safetensors
$PY scripts/fetch_photo_pool.py
$PY prepare_dataset.py --preset release
# The model card's embedded validation photos (data/demo/valid), scored at the end: offline, seconds.
$PY prepare_dataset.py --preset demo
$PY train.py --preset release --resume auto "$@"
$PY scripts/export_weights.py --checkpoint runs/release_x4/checkpoints/last.pth --output "$EXPORTED"
$PY validate.py --weights "$EXPORTED" --valid-dirs srdensenet/golden data/demo/valid data/photo_pool/valid
echo "To ship these weights: cp $EXPORTED weights/srdensenet_x4_all_paper.safetensors (then update the README's model card)"
