#!/usr/bin/env bash
# A campaign run as an A/B at equal CPU time: two arms from the committed resume point, one thread each, side by side
# for BUDGET at low priority, identical but for the arm's --cfg-options. When both have stopped, the rule fixed
# before the run (scripts/campaign_ab.py: the higher mean selection metric over each arm's last three complete
# epochs) picks the arm that continues the campaign: its end becomes the resume point and its model is released if
# validation improved, as scripts/campaign_run.sh does for a single run. The other arm's images are the cost of
# the experiment. Commit checkpoints/, docs/results.md and effpose/assets/ afterwards.
#   nohup scripts/campaign_ab.sh detector 140m runs/detector_slim_r6 base -- ttf regression_cells=gaussian \
#     giou_weight=2 distill_regression=false > runs/detector_slim_r6.log 2>&1 &
# writes runs/detector_slim_r6_base/ and runs/detector_slim_r6_ttf/ (each with a .log beside it) and prints the
# A/B table.
set -euo pipefail
usage="usage: $0 pose|detector BUDGET OUT_PREFIX NAME_A [KEY=VALUE ...] -- NAME_B [KEY=VALUE ...]"
if [[ $# -lt 6 ]]; then
  echo "$usage" >&2
  exit 2
fi
kind=$1 budget=$2 prefix=$3
shift 3
arm_a=() arm_b=()
while [[ $# -gt 0 && $1 != -- ]]; do arm_a+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
arm_b=("$@")
if [[ ${#arm_a[@]} -eq 0 || ${#arm_b[@]} -eq 0 || ${arm_a[0]} == "${arm_b[0]}" ]]; then
  echo "$usage   (two arms with different names)" >&2
  exit 2
fi
source scripts/campaign_kind.sh "$kind"
if [[ ! -f $resume_dir/last.pt ]]; then
  echo "no resume point $resume_dir/last.pt (an A/B continues a campaign)" >&2
  exit 2
fi

arm_options() {  # NAME [KEY=VALUE ...]: the arm's --cfg-options, as the card states them
  if [[ $# -gt 1 ]]; then echo "${*:2}"; else echo "none, the recipe"; fi
}

start_arm() {  # NAME [KEY=VALUE ...]: one arm in the background
  local name=$1
  shift
  local options=()
  [[ $# -gt 0 ]] && options=(--cfg-options "$@")
  OMP_NUM_THREADS=1 nice -n 10 "${train[@]}" --config "$config" --resume "$resume_dir/last.pt" \
    --out-dir "${prefix}_$name" --stop-after "$budget" "${options[@]}" > "${prefix}_$name.log" 2>&1 &
}
start_arm "${arm_a[@]}"
pid_a=$!
start_arm "${arm_b[@]}"
pid_b=$!
status=0
wait $pid_a || status=$?
wait $pid_b || status=$?
if [[ $status -ne 0 ]]; then
  echo "an arm failed (see ${prefix}_*.log); nothing is finished or released" >&2
  exit $status
fi
python scripts/campaign_ab.py "${prefix}_${arm_a[0]}" "${prefix}_${arm_b[0]}" | tee "${prefix}_ab.md"
winner=$(sed -n 's/^winner: //p' "${prefix}_ab.md")
won=("${arm_a[@]}") lost=("${arm_b[@]}")
[[ $winner == "${prefix}_${arm_b[0]}" ]] && won=("${arm_b[@]}") lost=("${arm_a[@]}")
note="$note A/B arm ${winner##*/} (scripts/campaign_ab.sh; its options: $(arm_options "${won[@]}"); the other arm, \
${lost[0]}: $(arm_options "${lost[@]}"))."
finish_run "$winner"
