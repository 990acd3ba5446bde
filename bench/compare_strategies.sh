#!/usr/bin/env bash
# The strategy comparison in docs/strategies.md: both embedded data sets, all data and 10 examples per class
# (3 seeds), then the markdown tables. Results land in $RUNS/compare-*/compare.json and compare.png (RUNS defaults
# to runs/); finished runs are reused on a rerun. SMOKE=1: one strategy, one seed, tiny settings, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
S=linear-probe,lp-ft,full,layer-decay,gradual-unfreeze,l2-sp,bitfit,lora,wise-ft
SEEDS=0,1,2
TINY=()
if [ -n "${SMOKE:-}" ]; then
  S=linear-probe; SEEDS=0
  TINY=(--image-size 32 --max-length 16 --epochs 1 --lp-epochs 1 --min-steps 0 --shots 4 --quiet)
fi
$X compare --data builtin:mnist5k --source mobilenet_v2 --strategies $S --out $RUNS/compare-mnist-all "${TINY[@]}"
$X compare --data builtin:mnist5k --source mobilenet_v2 --strategies $S --shots 10 --seeds $SEEDS \
    --out $RUNS/compare-mnist-10shot "${TINY[@]}"
$X compare --data builtin:rotten_tomatoes --strategies $S --epochs 1 --out $RUNS/compare-rt-all "${TINY[@]}"
$X compare --data builtin:rotten_tomatoes --strategies $S --shots 10 --seeds $SEEDS --out $RUNS/compare-rt-10shot \
    "${TINY[@]}"
$PY bench/compare_table.py $RUNS/compare-mnist-all $RUNS/compare-mnist-10shot $RUNS/compare-rt-all \
    $RUNS/compare-rt-10shot
