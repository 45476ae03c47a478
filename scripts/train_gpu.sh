#!/usr/bin/env bash
# One prepared GPU run of a training campaign (pose or detector): resumes the committed resume point, trains on a
# data pack for at most 8 minutes (bfloat16 autocast, channels_last, many loader workers, large batches) and writes
# the new resume point (last.pt) and metrics.jsonl (and, for pose, model.onnx) to OUT_DIR. The machine needs only
# the checkout and the pack; the detector also needs its distillation teacher, YOLOX-nano (shared data): carry a copy
# and name it, e.g. cp ../shared/data/models/yolox_nano/yolox_nano.onnx runs/pack/ and add
# --cfg-options distill_detector=$PWD/runs/pack/yolox_nano.onnx:
#   effpose data pack --config configs/campaign_a_128x96.json --out runs/pack/campaign_128x96.npz        # here, once
#   effpose data pack-detector --config configs/campaign_detector.json --out runs/pack/detector_288.npz  # here, once
#   scripts/train_gpu.sh pose|detector PACK OUT_DIR [more `effpose train` / `train-detector` flags]       # there
# Validation needs the shared data, which the GPU machine lacks: the run keeps no val sets; validate the returned
# resume point here before a release (pose: `effpose eval`; detector: `scripts/campaign_finish.py --kind detector
# --run OUT_DIR`, then `scripts/release_detector.py --run OUT_DIR --checkpoint OUT_DIR/last.pt --only-if-better`,
# which evaluates its moving average on COCO val and ships it only if it beats the shipped detector). The detector's
# batch is 8x the campaign's, its lr 2x (about the square-root scaling AdamW tolerates). Later flags override
# earlier ones, e.g. --stop-after 30s --cfg-options batch_size=8 for a smoke run on a CPU.
set -euo pipefail
if [[ $# -lt 3 || ( $1 != pose && $1 != detector ) ]]; then
  echo "usage: $0 pose|detector PACK OUT_DIR [training flags...]" >&2
  exit 2
fi
kind=$1 pack=$2 out=$3
shift 3
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
if [[ $kind == pose ]]; then
  train=(effpose train --config configs/campaign_a_128x96.json --resume checkpoints/efficientpose_a_coco17/last.pt)
  sizes=(batch_size=256 samples_per_epoch=256000)
else
  train=(effpose train-detector --config configs/campaign_detector.json --resume checkpoints/person_detector/last.pt)
  sizes=(batch_size=128 samples_per_epoch=64000 lr=0.001)
fi
exec "${train[@]}" --out-dir "$out" --stop-after 8m --cfg-options "${sizes[@]}" "workers=$workers" "pack=$pack" \
  "val=[]" amp=true channels_last=true "$@"
