#!/usr/bin/env bash
# Equal-step ablations of the campaign recipe: every variant trains the same 300 steps of batch 32 (9,600 crops, two
# epochs of 4,800) from the same weights with AdamW lr 1e-3 (constant after 100 warm-up steps), no weight decay, no
# moving average, and is validated with GT boxes and flip test after each epoch. One thing changes per run against
# the base (plain MSE, sigma 2, release augmentation, SIC, 128x96); 256x192 costs 3-4x the CPU per step and is run
# for the first epoch only (compare it with the others' first epoch: 150 steps each).
#   scripts/campaign_ablations.sh [START_WEIGHTS] [OUT_DIR]
# Then: python scripts/runs_table.py OUT_DIR/*
set -euo pipefail
start=${1:-checkpoints/efficientpose_a_coco17/last.pt}
out=${2:-runs/ablations_campaign}
base=("init_checkpoint=$start" samples_per_epoch=4800 epochs=2 ema_decay=0 loss=mse sigma=2 augment=release)

run() {  # NAME [config overrides...]
  local name=$1; shift
  [[ -f "$out/$name/model.onnx" ]] && return 0  # finished in an earlier call
  effpose train --config configs/campaign_a_128x96.json --out-dir "$out/$name" --cfg-options "${base[@]}" "$@"
}

run base_128x96
run fg_mse_sigma3_128x96 loss=fg_mse sigma=3
run light_augment_128x96 augment=light
run no_sic_128x96 sic=false
run base_256x192 "input_size=[192,256]" epochs=1
run fg_mse_sigma3_light_128x96 loss=fg_mse sigma=3 augment=light
