#!/usr/bin/env bash
# The measurements in docs/search.md. Needs a PostgreSQL URL in XFER_PG (e.g. the server .ci/run starts) for the
# second part. Outputs under $RUNS (default runs/). SMOKE=1: two tiny trials per study, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
RUNS=${RUNS:-runs}
BUDGET=${BUDGET:-8m}
T=${THROUGHPUT_TIME:-4m}
TRIALS=30
TINY=()
if [ -n "${SMOKE:-}" ]; then
  BUDGET=30s; T=8s; TRIALS=2
  TINY=(--image-size 32 --min-steps 0 --shots 4 --quiet)
fi
# 1. Trials and wall time to reach 98.5% validation accuracy on MNIST-5k: TPE (default) vs a grid over the same space.
$X search --data builtin:mnist5k --target 0.985 --trials $TRIALS --timeout $BUDGET --study tpe --out $RUNS/search-tpe \
    "${TINY[@]}"
$X search --data builtin:mnist5k --target 0.985 --trials $TRIALS --timeout $BUDGET --sampler grid --study grid \
    --out $RUNS/search-grid "${TINY[@]}"
# 2. Throughput, finished trials per hour, on 10-shot MNIST (short trials): 1 worker on SQLite, 2 threads, vs
#    2 workers (1 thread each) sharing a PostgreSQL study.
$X search --data builtin:mnist5k --shots 10 --timeout $T --pruner none --study tp-sqlite --out $RUNS/search-tp-sqlite \
    "${TINY[@]}"
if [ -n "${XFER_PG:-}" ]; then
  for i in 0 1; do
    OMP_NUM_THREADS=1 $X search --data builtin:mnist5k --shots 10 --timeout $T --pruner none --study tp-pg-$$ \
        --storage "$XFER_PG" --out $RUNS/search-tp-pg-w$i --quiet "${TINY[@]}" &
  done
  wait
  $X search --show --study tp-pg-$$ --storage "$XFER_PG" --out $RUNS/search-tp-pg-w0
fi
