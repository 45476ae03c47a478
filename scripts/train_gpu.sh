#!/usr/bin/env bash
# One prepared GPU run of the pose campaign: resumes the committed resume point, trains on a data pack for at most
# 8 minutes (bfloat16 autocast, channels_last, many loader workers, large batches) and writes the new resume point
# (last.pt), metrics.jsonl and model.onnx to OUT_DIR. The machine needs only the checkout and the pack:
#   effpose data pack --config configs/campaign_a_128x96.json --out runs/pack/campaign_128x96.npz   # here, once
#   scripts/train_gpu.sh runs/pack/campaign_128x96.npz OUT_DIR [more `effpose train` flags]          # there
# Validation needs the shared data, which the GPU machine lacks: the run keeps no val sets (best.pt by training
# loss); validate the returned resume point here (`effpose eval`) before a release. Later flags override earlier
# ones, e.g. --stop-after 30s --cfg-options batch_size=8 for a smoke run on a CPU.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 PACK OUT_DIR [effpose train flags...]" >&2
  exit 2
fi
pack=$1 out=$2
shift 2
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
exec effpose train --config configs/campaign_a_128x96.json --resume checkpoints/efficientpose_a_coco17/last.pt \
  --out-dir "$out" --stop-after 8m --cfg-options batch_size=256 samples_per_epoch=256000 "workers=$workers" \
  "pack=$pack" "val=[]" amp=true channels_last=true "$@"
