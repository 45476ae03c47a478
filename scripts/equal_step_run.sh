#!/usr/bin/env bash
# One equal-step variant of the pose campaign's recipe (configs/campaign_a_128x96.json) from a start checkpoint:
# EPOCHS epochs of 6,400 crops (200 steps of batch 32 each), lr 1e-3 after 100 warm-up steps with a cosine to 1%,
# moving average, validated with GT boxes and flip test after each epoch. Does nothing when OUT_DIR already holds
# the variant's model.onnx (finished in an earlier call). Used by resume_point_ablations.sh and capacity_check.sh.
#   scripts/equal_step_run.sh START_CHECKPOINT EPOCHS OUT_DIR [config overrides...]
set -euo pipefail
start=$1 epochs=$2 out=$3
shift 3
[[ -f "$out/model.onnx" ]] && exit 0
effpose train --config configs/campaign_a_128x96.json --out-dir "$out" \
  --cfg-options "init_checkpoint=$start" schedule=cosine "epochs=$epochs" samples_per_epoch=6400 warmup_steps=100 "$@"
