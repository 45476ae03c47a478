#!/usr/bin/env bash
# One run of the pose training campaign, start to commit-ready: resume the committed resume point, train at low
# priority for BUDGET (then validate, checkpoint and export), make the run's end the new resume point with its
# metrics log and progress table (scripts/campaign_finish.py), and release the model if validation improved
# (scripts/release_model.py --only-if-better). Commit checkpoints/, docs/results.md and effpose/assets/ afterwards.
#   nohup scripts/campaign_run.sh 150m runs/campaign_r3 > runs/campaign_r3.log 2>&1 &
#   CONFIG=configs/other.json scripts/campaign_run.sh 2h runs/campaign_r4
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUDGET OUT_DIR   (BUDGET like 150m or 2h)" >&2
  exit 2
fi
budget=$1 out=$2
config=${CONFIG:-configs/campaign_a_128x96.json}
resume_dir=checkpoints/efficientpose_a_coco17
note="The EfficientPose-A training campaign (scripts/campaign_run.sh; every epoch in \
$resume_dir/campaign_metrics.jsonl) continuing the five stages of scripts/train_efficientpose_a.sh: crops_seen and \
wall_hours include their 460,800 crops and 3.35 h; cpu_hours counts the campaign only. Recipe: $config."

nice -n 10 effpose train --config "$config" --resume "$resume_dir/last.pt" --out-dir "$out" --stop-after "$budget"
python scripts/campaign_finish.py --run "$out" --resume-dir "$resume_dir"
status=0
python scripts/release_model.py --run "$out" --only-if-better --note "$note" || status=$?
[[ $status -eq 0 || $status -eq 3 ]]  # 3: validation did not improve, the shipped model stays
