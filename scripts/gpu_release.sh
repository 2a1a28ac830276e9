#!/usr/bin/env bash
# One prepared GPU command for the x4 release model (docs/gpu.md):
#   bash scripts/gpu_release.sh [all|measure|train] [gpu_release.py options] [-- extra train.py overrides]
# all (default): the fast path's CUDA tests, the throughput variants side by side (benchmarks/bench_train.py,
# BENCH_S seconds), then train.py --preset release with the fastest trainable variant until the budget's end, export,
# validation, and the resume state: everything lands in OUT_DIR (default runs/gpu_release/out).
# The clock starts here: everything ends within BUDGET_S seconds (default 560).
# Data: POOL (default data/photo_pool_pack, from prepare_dataset.py --preset release --pack) holds train/ and valid/;
# TRAIN_DIR / VALID_DIR name folders or LMDBs directly. JPEG_PRESCALE=1 (default) for a prescaled pool, 2 for raw
# photos. A later command continues with RESUME_FROM=<a previous OUT_DIR>. Size limits on what is copied back are
# gpu_release.py options (--part-mib, --max-files, --max-file-mib); python scripts/gpu_release.py --help lists all.
# Dry run on a CPU: see docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The clone's package, whether or not it is installed (a GPU machine brings its own torch and nothing else).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STARTED=$(date +%s)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEP=${1:-all}
[ $# -gt 0 ] && shift
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv || true
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
ARGS=("$STEP" --started "$STARTED" --budget-seconds "${BUDGET_S:-560}" --bench-seconds "${BENCH_S:-200}"
      --out "${OUT_DIR:-runs/gpu_release/out}" --device "$DEVICE" --pool "${POOL:-data/photo_pool_pack}"
      --jpeg-prescale "${JPEG_PRESCALE:-1}")
[ -n "${TRAIN_DIR:-}" ] && ARGS+=(--train-dirs "$TRAIN_DIR")
[ -n "${VALID_DIR:-}" ] && ARGS+=(--valid-dirs "$VALID_DIR")
[ -n "${RESUME_FROM:-}" ] && ARGS+=(--resume-from "$RESUME_FROM")
[ -n "${VARIANT:-}" ] && ARGS+=("--variant=$VARIANT")  # = : the value starts with --
[ -n "${BENCH_ARGS:-}" ] && ARGS+=("--bench-args=$BENCH_ARGS")
exec $PY scripts/gpu_release.py "${ARGS[@]}" "$@"
