#!/usr/bin/env bash
# The measurements in docs/cross-modal.md: ImageNet CNNs reading text rendered as images (the article's example),
# against the same network from scratch, the text source MiniLM and TF-IDF + logistic regression, on Rotten
# Tomatoes and Reuters R8. Outputs under $RUNS (default runs/). SMOKE=1: tiny settings, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
EPOCHS=${EPOCHS:-2}
STRATEGIES=full,lp-ft,layer-decay
TINY=()
if [ -n "${SMOKE:-}" ]; then
  EPOCHS=1; STRATEGIES=full
  TINY=(--shots 4 --render-size 32 --lp-epochs 1 --min-steps 0 --max-length 16 --quiet)
fi
for DATA in rotten_tomatoes reuters_r8; do
  O=$RUNS/xm-$DATA
  # 1. Which strategy suits an ImageNet CNN on rendered text (same budget for each).
  $X compare --data builtin:$DATA --source mobilenet_v2 --strategies $STRATEGIES --epochs $EPOCHS \
      --out $O/compare "${TINY[@]}"
  # 2. The same architecture from scratch on the same rendered images, same budget (full fine-tuning).
  $X fit --data builtin:$DATA --source random:mobilenet_v2 --strategy full --epochs $EPOCHS --out $O/scratch \
      "${TINY[@]}"
  # 3. Another ImageNet CNN, and the text source.
  $X fit --data builtin:$DATA --source efficientnet_lite0 --strategy full --epochs $EPOCHS --out $O/efficientnet \
      "${TINY[@]}"
  $X fit --data builtin:$DATA --source random:efficientnet_lite0 --strategy full --epochs $EPOCHS \
      --out $O/efficientnet-scratch "${TINY[@]}"
  $X fit --data builtin:$DATA --source all-MiniLM-L6-v2 --out $O/minilm "${TINY[@]}"
  # 4. Classical baseline.
  $PY bench/tfidf_baseline.py --data builtin:$DATA ${SMOKE:+--smoke}
done
for DATA in rotten_tomatoes reuters_r8; do
  for R in $RUNS/xm-$DATA/compare/* $RUNS/xm-$DATA/scratch $RUNS/xm-$DATA/efficientnet $RUNS/xm-$DATA/efficientnet-scratch $RUNS/xm-$DATA/minilm; do
    [ -f "$R/spec.json" ] && echo "$DATA $(basename "$R"): $($X eval "$R" --json | $PY -c 'import json,sys; print("test accuracy", json.load(sys.stdin)["test.accuracy"])')"
  done
done
