#!/usr/bin/env bash
# What would move the campaign's curve now? Equal-step variants from the campaign's resume point with its own recipe
# (foreground-weighted MSE, sigma 3, light augmentation, COCO 0.25 : LSPet 0.75, batch 32, moving average): 400 steps
# (two epochs of 6,400 crops), lr 1e-3 after 100 warm-up steps with a cosine to 1% over the 400 steps, validated
# with GT boxes and flip test after each epoch. One thing changes per variant against the base (128x96, sigma 3):
# a larger input (256x192: 4x the pixels, about 3.5x the CPU per step) or narrower target Gaussians (sigma 3 on
# the 32x24 heatmap is 12 input pixels, three times SimpleBaseline's relative width) or more face supervision (the
# face points hold COCO AP down, benchmarks/pose_error_oracles.py: LSPet's pseudo-labelled face points at full
# weight, or COCO's real ones twice as often). Equal steps, not equal time.
#   scripts/resume_point_ablations.sh [START_CHECKPOINT] [OUT_DIR]
# Then: python scripts/runs_table.py OUT_DIR/*
set -euo pipefail
start=${1:-checkpoints/efficientpose_a_coco17/last.pt}
out=${2:-runs/ablations_resume_point}
variant=(scripts/equal_step_run.sh "$start" 2)  # + OUT_DIR/NAME [config overrides...]

"${variant[@]}" "$out/a_128x96"
"${variant[@]}" "$out/a_256x192" "input_size=[192,256]"
"${variant[@]}" "$out/a_128x96_sigma2" sigma=2
"${variant[@]}" "$out/a_128x96_sigma1.5" sigma=1.5
"${variant[@]}" "$out/a_128x96_pseudo_weight1" pseudo_weight=1
"${variant[@]}" "$out/a_128x96_coco_half" 'train=[{"name": "coco_train", "annotations": "coco/annotations/person_keypoints_train.json",
  "images": "coco/images", "ratio": 0.5}, {"name": "lspet_train", "annotations": "lspet/annotations/lspet_train.json",
  "images": "lspet/images", "ratio": 0.5}]'
