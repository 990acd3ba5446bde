#!/usr/bin/env bash
# The measurements in docs/security.md: the MNIST run (plain, adversarially fine-tuned, noise-trained) under FGSM /
# PGD-20 with each image defence against the naive and the adaptive attack, certified accuracy by randomised
# smoothing, and the Rotten Tomatoes run under character / word edits with the text defences.
# SMOKE=1: tiny settings, to check the script.
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XFER:-.venv/bin/xfer}
RUNS=${RUNS:-runs}
LIMIT=${LIMIT:-200}; TLIMIT=${TLIMIT:-100}; EPOCHS=3; STEPS=20; N=500; EPS=0,0.05,0.1,0.2; RATES=0.05,0.1,0.2
FIT=(--data builtin:mnist5k --strategy full --image-size 64)
if [ -n "${SMOKE:-}" ]; then
  LIMIT=8; TLIMIT=6; EPOCHS=1; STEPS=2; N=20; EPS=0,0.1; RATES=0.2
  FIT=(--data builtin:mnist5k --strategy full --image-size 32 --shots 4 --min-steps 0)
  mkdir -p "$RUNS"
  { echo "text,label"; for i in $(seq 1 20); do echo "\"a moving, wonderful film $i\",fresh"; echo "\"dull and lifeless $i\",rotten"; done; } > "$RUNS/tiny.csv"
  [ -f $RUNS/c-rt/spec.json ] || $X fit --data "$RUNS/tiny.csv" --max-length 16 --epochs 1 --lp-epochs 1 --min-steps 0 --out $RUNS/c-rt --quiet
fi
# The text run of `xfer demo` (bench/compress.sh makes the same one)
[ -f $RUNS/c-rt/spec.json ] || $X fit --data builtin:rotten_tomatoes --max-length 64 --epochs 1 --out $RUNS/c-rt --quiet
[ -f $RUNS/r-plain/spec.json ] || $X fit "${FIT[@]}" --epochs $EPOCHS --out $RUNS/r-plain --quiet
[ -f $RUNS/r-adv/spec.json ] || $X fit "${FIT[@]}" --epochs $EPOCHS --adversarial pgd --adv-eps 0.1 --adv-steps 3 --out $RUNS/r-adv --quiet
[ -f $RUNS/r-noise/spec.json ] || $X fit "${FIT[@]}" --epochs $EPOCHS --noise-sigma 0.25 --out $RUNS/r-noise --quiet
$X robust $RUNS/r-plain --out $RUNS/robust-plain --eps $EPS --steps $STEPS --defences blur,bits,jpeg,resize-pad --eot 4 --limit $LIMIT
$X robust $RUNS/r-adv --out $RUNS/robust-adv --eps $EPS --steps $STEPS --defences "" --limit $LIMIT
$X robust $RUNS/r-noise --out $RUNS/robust-noise --eps $EPS --steps $STEPS --eot 4 --limit $LIMIT --certify --sigma 0.25 -n $N

$X robust ${TEXT_RUN:-$RUNS/c-rt} --out $RUNS/robust-rt --rates $RATES --defences lookalikes,spelling,token-dropout --limit $TLIMIT
