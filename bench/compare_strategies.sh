#!/usr/bin/env bash
# The strategy comparison in docs/strategies.md: both embedded data sets, all data and 10 examples per class
# (3 seeds). Results land in runs/compare-*/compare.json and compare.png; finished runs are reused on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
S=linear-probe,lp-ft,full,layer-decay,gradual-unfreeze,l2-sp,bitfit,lora,wise-ft
X=${XFER:-.venv/bin/xfer}
$X compare --data builtin:mnist5k --source mobilenet_v2 --strategies $S --out runs/compare-mnist-all
$X compare --data builtin:mnist5k --source mobilenet_v2 --strategies $S --shots 10 --seeds 0,1,2 \
    --out runs/compare-mnist-10shot
$X compare --data builtin:rotten_tomatoes --strategies $S --epochs 1 --out runs/compare-rt-all
$X compare --data builtin:rotten_tomatoes --strategies $S --shots 10 --seeds 0,1,2 --out runs/compare-rt-10shot
