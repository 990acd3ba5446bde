#!/usr/bin/env bash
# The measurements in docs/compression.md: int8 (ONNX Runtime), structured pruning and distillation of the two
# default runs (MobileNet-V2 on MNIST-5k, MiniLM on Rotten Tomatoes), each variant a run folder, one table each.
# Run it alone on the machine: the table's latencies are wall times. SMOKE=1: tiny runs, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
RUNS=${RUNS:-runs}
THREADS=${THREADS:-2}
if [ -n "${SMOKE:-}" ]; then
  $X fit --data builtin:mnist5k --shots 4 --image-size 32 --epochs 1 --lp-epochs 1 --min-steps 0 --out $RUNS/c-mnist --quiet --overwrite
  mkdir -p "$RUNS"
  { echo "text,label"; for i in $(seq 1 20); do echo "\"a moving, wonderful film $i\",fresh"; echo "\"dull and lifeless $i\",rotten"; done; } > "$RUNS/tiny.csv"
  $X fit --data "$RUNS/tiny.csv" --max-length 16 --epochs 1 --lp-epochs 1 --min-steps 0 --out $RUNS/c-rt --quiet --overwrite
  $X compress $RUNS/c-mnist --out $RUNS/compress-mnist --int8 static --prune 0.3 --recover-epochs 1 --threads $THREADS --rounds 1 --overwrite
  $X compress $RUNS/c-rt --out $RUNS/compress-rt --int8 dynamic --distill all-MiniLM-L6-v2 --student-layers 3 \
      --distill-epochs 1 --threads $THREADS --rounds 1 --overwrite
  exit 0
fi
# The two runs of the embedded default job (`xfer demo`): MNIST-5k (MobileNet-V2, full) and Rotten Tomatoes (MiniLM, lp-ft).
[ -f $RUNS/c-mnist/spec.json ] || $X fit --data builtin:mnist5k --strategy full --image-size 64 --baseline --out $RUNS/c-mnist --quiet
[ -f $RUNS/c-rt/spec.json ] || $X fit --data builtin:rotten_tomatoes --max-length 64 --epochs 1 --baseline --out $RUNS/c-rt --quiet
$X compress $RUNS/c-mnist --out $RUNS/compress-mnist --int8 static --prune 0.3 --recover-epochs 1 --threads $THREADS --overwrite
$X compress $RUNS/c-rt --out $RUNS/compress-rt --int8 dynamic --distill all-MiniLM-L6-v2 --student-layers 3 \
    --distill-epochs 2 --threads $THREADS --overwrite
