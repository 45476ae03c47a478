# Sourced by scripts/campaign_run.sh and scripts/campaign_ab.sh: what a campaign run of KIND (pose | detector)
# trains and releases. Sets config (CONFIG overrides the recipe), resume_dir, train (the command), release (the
# release script) and note (the model card's training note), makes sure the detector's pseudo-boxes exist, and
# defines finish_run RUN: the run's end becomes the resume point with its metrics log and progress table
# (scripts/campaign_finish.py), and the model is released if validation improved (--only-if-better).
#   source scripts/campaign_kind.sh detector
if [[ $1 == pose ]]; then
  config=${CONFIG:-configs/campaign_a_128x96.json}
  resume_dir=checkpoints/efficientpose_a_coco17
  train=(effpose train) release=scripts/release_model.py
  note="The EfficientPose-A training campaign (scripts/campaign_run.sh; every epoch in \
$resume_dir/campaign_metrics.jsonl) continuing the five stages of scripts/train_efficientpose_a.sh: crops_seen and \
wall_hours include their 460,800 crops and 3.35 h; cpu_hours counts the campaign only. Recipe: $config."
elif [[ $1 == detector ]]; then
  config=${CONFIG:-configs/campaign_detector.json}
  resume_dir=checkpoints/person_detector
  train=(effpose train-detector) release=scripts/release_detector.py
  note="The person-detector training campaign (scripts/campaign_run.sh detector; every epoch in \
$resume_dir/campaign_metrics.jsonl): the depth-pruned genotype configs/genotypes/detector_a_slim.json at 288x288, \
started from the weights of the detector shipped before it (EfficientPose-A trunk at 320x320, recovered from its ONNX \
file by scripts/detector_from_onnx.py), distilled from that detector until run detector_slim_r5 and since run \
detector_slim_r6 from YOLOX-nano's boxes on each training canvas; samples_seen, cpu_hours and train_hours \
count the campaign only. Recipe: $config."
  scripts/pseudo_boxes.sh
else
  echo "campaign kind must be pose or detector, got '$1'" >&2
  return 2
fi
campaign_kind=$1

finish_run() {
  local status=0
  python scripts/campaign_finish.py --kind "$campaign_kind" --run "$1" --resume-dir "$resume_dir"
  python "$release" --run "$1" --only-if-better --note "$note" || status=$?
  [[ $status -eq 0 || $status -eq 3 ]]  # 3: validation did not improve, the shipped model stays
}
