#!/usr/bin/env bash
# Does capacity hold the pose campaign back? Equal steps from the campaign's resume point for EfficientPose-A and for
# A with its last stage twice as deep (configs/genotypes/efficientpose_a_deeper.json: eight more ir_k7_e6 layers at
# stride 16, 1.9x the parameters, 1.5x the MACs at 128x96). The deeper network starts as A itself (its new layers
# start as the identity, effpose.training.trainer.initialise), so both begin from the same function and differ
# only in what they can learn. Campaign recipe, 6 epochs of 6,400 crops (1,200 steps of batch 32), lr 1e-3 after 100
# warm-up steps with a cosine to 1%, moving average; validated with GT boxes and flip test after each epoch.
#   scripts/capacity_check.sh [START_CHECKPOINT] [OUT_DIR]
# Then: python scripts/runs_table.py OUT_DIR/*
set -euo pipefail
start=${1:-checkpoints/efficientpose_a_coco17/last.pt}
out=${2:-runs/capacity_check}
variant=(scripts/equal_step_run.sh "$start" 6)  # + OUT_DIR/NAME [config overrides...]

"${variant[@]}" "$out/a"
"${variant[@]}" "$out/a_deeper" arch=configs/genotypes/efficientpose_a_deeper.json
