#!/usr/bin/env bash
# Fine-tunes the shipped default for convergence over many clicks (issue 18; model/configs/train_converge.yaml:
# the default's 7 training sets + DUTS-TR, 6 correction rounds, correction clicks where the evaluation clicker puts
# them), then fits the candidate pick for the new weights. Resumes from OUT/last.* when run again (resume is on).
# Usage: [MIN=95] [THREADS=1] [OUT=runs/converge] benchmarks/train_converge.sh
# Evaluate: python benchmarks/eval_default.py --checkpoint OUT/last_pick.safetensors --max-objects 80 -o OUT/eval
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${MIN:-95}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/converge}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=$THREADS
$PY -m napari_ultratinysam.cli train -c model/configs/train_converge.yaml threads=$THREADS steps=1000000 \
    time_budget_min=$MIN save_half=true out_dir=$OUT
cp "$OUT/last.safetensors" "$OUT/last_pick.safetensors"
$PY -m napari_ultratinysam.cli fit-pick --checkpoint "$OUT/last_pick.safetensors" -c model/configs/train_converge.yaml \
    --min-area-128 150 --max-images 60 --out "$OUT/last_pick.safetensors"
