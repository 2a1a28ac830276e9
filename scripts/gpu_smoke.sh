#!/usr/bin/env bash
# GPU smoke check: run it whenever a CUDA machine is at hand (the CPU test suite never needs it).
#   bash scripts/gpu_smoke.sh [TRAIN_DIR] [VALID_DIR]      (defaults: the demo data of prepare_dataset.py --preset demo)
# Checks: CUDA tests of imgproc/inference and of the fast path (device pool, fused Adam, whole-step CUDA graph), fp16
# AMP + GradScaler training through torchrun's NCCL/DDP path with validation, bf16 training, the fast path
# (--data-on-device --cuda-graph) paused and resumed, CUDA imresize, and validate.py / inference.py on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# The clone's package, whether or not it is installed (a GPU machine brings its own torch and nothing else).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
TRAIN=${1:-data/demo/train}
VALID=${2:-data/demo/valid}
OUT_DIR=${SMOKE_DIR:-runs/gpu_smoke}
rm -rf "$OUT_DIR"
if [ $# -eq 0 ] && [ ! -d "$TRAIN" ]; then $PY prepare_dataset.py --preset demo; fi  # offline, seconds
nvidia-smi -L
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
$PY -m pytest -q -p no:cacheprovider tests/test_imgproc.py tests/test_inference.py tests/test_device_pool.py \
    tests/test_train_step.py -k "cuda or CUDA"
COMMON=(--preset demo --device cuda --train-dirs "$TRAIN" --valid-dirs "$VALID" --output-dir "$OUT_DIR" --epochs 2 --num-workers 4)
$PY -m torch.distributed.run --standalone --nproc_per_node 1 train.py "${COMMON[@]}" --precision fp16 --stop-at-step 30 --run-name fp16_ddp
$PY train.py "${COMMON[@]}" --precision bf16 --time-limit 2 --stop-at-step 20 --run-name bf16 --ema-decay 0.99
$PY train.py "${COMMON[@]}" --data-on-device --cuda-graph --ema-decay 0.99 --grad-clip 1 --stop-at-step 15 --run-name graph
$PY train.py "${COMMON[@]}" --data-on-device --cuda-graph --ema-decay 0.99 --grad-clip 1 --resume auto --run-name graph
$PY train.py "${COMMON[@]}" --data-on-device --stop-at-step 10 --run-name fast_compile --compile --compile-mode default
$PY -m torch.distributed.run --standalone --nproc_per_node 1 train.py "${COMMON[@]}" --data-on-device --stop-at-step 10 --run-name fast_ddp
$PY validate.py --weights "$OUT_DIR/fp16_ddp/checkpoints/last.pth" --valid-dirs "$VALID" --device cuda --json "$OUT_DIR/valid.json"
first=$(ls "$VALID" | head -n 1)
$PY inference.py --weights "$OUT_DIR/bf16/checkpoints/last.pth" -i "$VALID/$first" -o "$OUT_DIR/sr" --device cuda --tile 64
echo "GPU smoke check passed"
