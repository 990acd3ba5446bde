#!/usr/bin/env bash
# The measurements in docs/search.md. Needs a PostgreSQL URL in XFER_PG (e.g. the server .ci/run starts) for the
# second part. Outputs under runs/search-*.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
# 1. Trials and wall time to reach 98.5% validation accuracy on MNIST-5k: TPE (default) vs a grid over the same space.
$X search --data builtin:mnist5k --target 0.985 --trials 30 --timeout ${BUDGET:-8m} --study tpe --out runs/search-tpe
$X search --data builtin:mnist5k --target 0.985 --trials 30 --timeout ${BUDGET:-8m} --sampler grid --study grid \
    --out runs/search-grid
# 2. Throughput, finished trials per hour, on 10-shot MNIST (short trials): 1 worker on SQLite, 2 threads, vs
#    2 workers (1 thread each) sharing a PostgreSQL study.
T=${THROUGHPUT_TIME:-4m}
$X search --data builtin:mnist5k --shots 10 --timeout $T --pruner none --study tp-sqlite --out runs/search-tp-sqlite
if [ -n "${XFER_PG:-}" ]; then
  for i in 0 1; do
    OMP_NUM_THREADS=1 $X search --data builtin:mnist5k --shots 10 --timeout $T --pruner none --study tp-pg-$$ \
        --storage "$XFER_PG" --out runs/search-tp-pg-w$i --quiet &
  done
  wait
  $X search --show --study tp-pg-$$ --storage "$XFER_PG" --out runs/search-tp-pg-w0
fi
