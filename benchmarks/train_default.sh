#!/usr/bin/env bash
# Regenerates the shipped default model (napari_ultratinysam/weights/ultratinysam.safetensors) on CPU:
#   1. equal-budget probe of both trunks (MobileViT-XS from scratch vs EfficientNet-Lite0 with ImageNet weights),
#   2. the long run with the better one (by validation mIoU@1 on the held-out parts),
#   3. a continuation from the long run's last checkpoint (lower peak lr, more grayscale images),
#   4. a second continuation from the first one's best-on-validation checkpoint (a warm restart at peak lr 2e-4),
#   5. fp16 copy of the second continuation's best-on-validation checkpoint into napari_ultratinysam/weights/.
# Zero-shot evaluation for the model card: benchmarks/eval_default.sh.
# Usage: [PROBE_MIN=3] [LONG_MIN=70] [CONT_MIN=105] [CONT2_MIN=105] [THREADS=1] benchmarks/train_default.sh
# (the shipped model: PROBE_MIN=3 LONG_MIN=70 CONT_MIN=105 CONT2_MIN=105 THREADS=1 on a shared 2-core CPU; the schedule follows wall time, so
#  a faster or less loaded machine does more steps). The probes pin the prompt/loss settings they were run with.
set -euo pipefail
cd "$(dirname "$0")/.."
PROBE_MIN=${PROBE_MIN:-3}
LONG_MIN=${LONG_MIN:-70}
CONT_MIN=${CONT_MIN:-105}
CONT2_MIN=${CONT2_MIN:-105}
THREADS=${THREADS:-1}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=$THREADS
CFG=model/configs/train_scratch.yaml
OUT=napari_ultratinysam/weights/ultratinysam.safetensors
for preset in ultratinysam_effnet ultratinysam; do
  if [ ! -f runs/probe_$preset/done ]; then
    $PY -m napari_ultratinysam.cli train -c $CFG model=$preset threads=$THREADS steps=1000000 \
        time_budget_min=$PROBE_MIN warmup_steps=30 val_every=0 ckpt_every=0 resume=false out_dir=runs/probe_$preset \
        prompts.correction_rounds=2 prompts.p_box=0.5 loss.focal_alpha=0.25
    touch runs/probe_$preset/done
  fi
done
BEST=$($PY - <<'PY'
import csv
best = {}
for p in ("ultratinysam_effnet", "ultratinysam"):
    rows = list(csv.DictReader(open(f"runs/probe_{p}/val_log.csv")))
    best[p] = float(rows[-1]["val_miou1"])
    print(f"probe {p}: val mIoU@1 {rows[0]['val_miou1']} -> {rows[-1]['val_miou1']} at step {rows[-1]['step']}",
          file=__import__("sys").stderr)
print(max(best, key=best.get))
PY
)
echo "long run with $BEST"
$PY -m napari_ultratinysam.cli train -c $CFG model=$BEST threads=$THREADS steps=1000000 \
    time_budget_min=$LONG_MIN val_every=300 ckpt_every=150 out_dir=runs/default_$BEST
$PY -m napari_ultratinysam.cli train -c $CFG init_checkpoint=runs/default_$BEST/last.safetensors threads=$THREADS \
    steps=1000000 time_budget_min=$CONT_MIN lr=2.5e-4 warmup_steps=50 val_every=400 ckpt_every=150 \
    data.grayscale_p=0.15 out_dir=runs/continue_effnet
$PY -m napari_ultratinysam.cli train -c $CFG init_checkpoint=runs/continue_effnet/best.safetensors threads=$THREADS \
    steps=1000000 time_budget_min=$CONT2_MIN lr=2.0e-4 warmup_steps=50 val_every=400 ckpt_every=150 \
    data.grayscale_p=0.15 out_dir=runs/continue2
$PY - <<'PY'
from napari_ultratinysam.model.checkpoints import load_model, read_checkpoint, save_checkpoint
src = "runs/continue2/best.safetensors"
_, _, extra = read_checkpoint(src)
extra.update({"source": src, "recipe": "model/configs/train_scratch.yaml via benchmarks/train_default.sh "
              "(long run + continuation + second continuation)"})
model = load_model(src)
save_checkpoint(model, "napari_ultratinysam/weights/ultratinysam.safetensors", extra=extra, half=True)
import os; os.chmod("napari_ultratinysam/weights/ultratinysam.safetensors", 0o644)
print("wrote napari_ultratinysam/weights/ultratinysam.safetensors from", src, extra)
PY
# the learned candidate pick (inference/pick.py) of a single click, fitted on the same training sets (weights unchanged)
$PY -m napari_ultratinysam.cli fit-pick --checkpoint $OUT -c $CFG --min-area-128 150 --max-images 60 --out $OUT
chmod 644 $OUT
