#!/usr/bin/env bash
# The measurements in docs/ranking.md: every offline source and its random-initialised twin, scored and then
# fine-tuned with the default strategy (lp-ft), with Kendall's tau between scores and fine-tuned accuracy.
# Outputs under $RUNS (default runs/). SMOKE=1: one source and its twin on tiny settings, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
RUNS=${RUNS:-runs}
IMAGE=mobilenet_v2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,random:mobilenet_v2,random:efficientnet_lite0,random:efficientnet_lite1,random:efficientnet_lite2
K=8
TINY=()
if [ -n "${SMOKE:-}" ]; then
  IMAGE=mobilenet_v2,random:mobilenet_v2
  K=2
  TINY=(--image-size 32 --max-length 16 --lp-epochs 1 --min-steps 0 --shots 4 --max-samples 40)
fi
$X rank --data builtin:mnist5k --validate $K --out $RUNS/rank-mnist --sources $IMAGE "${TINY[@]}"
$X rank --data builtin:rotten_tomatoes --validate 2 --epochs 1 --out $RUNS/rank-rt \
  --sources all-MiniLM-L6-v2,random:all-MiniLM-L6-v2 "${TINY[@]}"
