#!/usr/bin/env bash
# Equal-step ablations of the campaign recipe: every variant trains the same 300 steps of batch 32 (9,600 crops, two
# epochs of 4,800) from the same weights with AdamW lr 1e-3 (constant after 100 warm-up steps), no weight decay, no
# moving average, and is validated with GT boxes and flip test after each epoch. One thing changes per run.
#   scripts/campaign_ablations.sh [START_WEIGHTS] [OUT_DIR]
# Then: python scripts/runs_table.py OUT_DIR/*
set -euo pipefail
start=${1:-checkpoints/efficientpose_a_coco17/last.pt}
out=${2:-runs/ablations_campaign}
common=(--config configs/campaign_a_128x96.json --init-checkpoint "$start" --epochs 2 --samples-per-epoch 4800)

run() {  # NAME [overrides...]
  local name=$1; shift
  [[ -f "$out/$name/model.onnx" ]] && return 0  # finished in an earlier call
  effpose train "${common[@]}" --out-dir "$out/$name" "$@" --cfg-options ema_decay=0 "${extra[@]}"
}

extra=(); run base_128x96
extra=(loss=fg_mse sigma=3); run fg_mse_sigma3_128x96
extra=(augment=light); run light_augment_128x96
extra=(); run no_sic_128x96 --no-sic
extra=(); run base_256x192 --input 256x192
