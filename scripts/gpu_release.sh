#!/usr/bin/env bash
# One prepared GPU command for the x4 release model (README, "Training on a GPU"):
#   bash scripts/gpu_release.sh [all|measure|train] [gpu_release.py options] [-- extra train.py overrides]
# all (default): the fast path's CUDA tests, the throughput variants side by side (benchmarks/bench_train.py,
# ~200 s), then train.py --preset release with the fastest trainable variant until the budget's end, export,
# validation, and the resume state split into <= 15 MiB parts: everything lands in $OUT as at most 8 files.
# The clock starts here: BUDGET_S (default 560) must stay under the device command's limit (600 s).
# Data: TRAIN_DIR / VALID_DIR (default .carry/pool/{train,valid}: folders or LMDBs inside the working tree, which
# travels whole, so pool + code + carried state must stay under 64 MiB); JPEG_PRESCALE=2 for raw photos, 1 for a
# prescaled pool. A later session continues with RESUME_FROM=<a previous $OUT copied into the tree>.
# Dry run on a CPU: see README, "Training on a GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$(date +%s)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEP=${1:-all}
[ $# -gt 0 ] && shift
OUT=${OUT:-runs/gpu_release/out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv || true
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
ARGS=("$STEP" --started "$STARTED" --budget-seconds "${BUDGET_S:-560}" --bench-seconds "${BENCH_S:-200}"
      --out "$OUT" --device "$DEVICE" --train-dirs "${TRAIN_DIR:-.carry/pool/train}"
      --valid-dirs "${VALID_DIR:-.carry/pool/valid}" --jpeg-prescale "${JPEG_PRESCALE:-2}")
[ -n "${RESUME_FROM:-}" ] && ARGS+=(--resume-from "$RESUME_FROM")
[ -n "${VARIANT:-}" ] && ARGS+=("--variant=$VARIANT")  # = : the value starts with --
[ -n "${BENCH_ARGS:-}" ] && ARGS+=("--bench-args=$BENCH_ARGS")
exec $PY scripts/gpu_release.py "${ARGS[@]}" "$@"
