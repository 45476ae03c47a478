#!/usr/bin/env bash
# One run of a training campaign, start to commit-ready, for the pose model or the person detector: resume the
# committed resume point, train at low priority for BUDGET (then validate, checkpoint and export), make the run's
# end the new resume point with its metrics log and progress table (scripts/campaign_finish.py), and release the
# model if validation improved (scripts/release_model.py / release_detector.py --only-if-better). Commit
# checkpoints/, docs/results.md and effpose/assets/ afterwards.
#   nohup scripts/campaign_run.sh pose 150m runs/campaign_r5 > runs/campaign_r5.log 2>&1 &
#   OMP_NUM_THREADS=1 nohup scripts/campaign_run.sh detector 150m runs/detector_r0 > runs/detector_r0.log 2>&1 &
#   CONFIG=configs/other.json scripts/campaign_run.sh pose 2h runs/campaign_r6
# The detector's first run (no resume point yet) starts from the shipped detector's weights, recovered from its
# ONNX file by scripts/detector_from_onnx.py; its teacher pseudo-boxes come from scripts/pseudo_boxes.sh.
# The detector campaign is the depth-pruned detector (configs/campaign_detector.json) since run detector_slim_r1;
# the earlier A-at-256 runs (configs/campaign_detector_a256.json) are kept as history in docs/results.md.
set -euo pipefail
if [[ $# -ne 3 || ( $1 != pose && $1 != detector ) ]]; then
  echo "usage: $0 pose|detector BUDGET OUT_DIR   (BUDGET like 150m or 2h)" >&2
  exit 2
fi
kind=$1 budget=$2 out=$3
source scripts/campaign_kind.sh "$kind"
mkdir -p "$out"
if [[ -f $resume_dir/last.pt ]]; then
  start=(--resume "$resume_dir/last.pt")
elif [[ $kind == detector ]]; then
  python scripts/detector_from_onnx.py --out "$out/seed.pt"
  start=(--cfg-options "init_checkpoint=$out/seed.pt")
else
  echo "no resume point $resume_dir/last.pt" >&2
  exit 2
fi

nice -n 10 "${train[@]}" --config "$config" "${start[@]}" --out-dir "$out" --stop-after "$budget"
finish_run "$out"
