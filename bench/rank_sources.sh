#!/usr/bin/env bash
# The measurements in docs/ranking.md: every offline source and its random-initialised twin, scored and then
# fine-tuned with the default strategy (lp-ft), with Kendall's tau between scores and fine-tuned accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
$X rank --data builtin:mnist5k --validate 8 --out runs/rank-mnist \
  --sources mobilenet_v2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,random:mobilenet_v2,random:efficientnet_lite0,random:efficientnet_lite1,random:efficientnet_lite2
$X rank --data builtin:rotten_tomatoes --validate 2 --epochs 1 --out runs/rank-rt \
  --sources all-MiniLM-L6-v2,random:all-MiniLM-L6-v2
