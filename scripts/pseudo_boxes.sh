#!/usr/bin/env bash
# The teacher's pseudo-boxes that configs/person_detector.json and configs/campaign_detector*.json train on:
# YOLOX-nano (shared data, a training aid only) through the service's own detector adapter, score >= 0.3, on the
# COCO and LSPet training images, written to runs/pseudo/ (skipped when already there; about 6 minutes on 1 thread).
#   scripts/pseudo_boxes.sh [THREADS]
set -euo pipefail
data=${EFFPOSE_DATA:-../shared/data}
threads=${1:-1}
mkdir -p runs/pseudo
for source in coco_train:coco/annotations/person_keypoints_train.json:coco/images \
              lspet_train:lspet/annotations/lspet_train.json:lspet/images; do
  IFS=: read -r name annotations images <<< "$source"
  out=runs/pseudo/${name}_yolox.json
  [[ -f $out ]] && continue
  effpose detect --model "$data/models/yolox_nano/yolox_nano.onnx" --threshold 0.3 --threads "$threads" \
    --annotations "$data/$annotations" --images "$data/$images" --out "$out.tmp"
  mv "$out.tmp" "$out"
done
