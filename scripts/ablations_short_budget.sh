#!/usr/bin/env bash
# Short equal-budget runs for the ablation table of docs/results.md (issue 3) and the searched-vs-A comparison
# (issue 7): every run trains EPOCHS x SAMPLES crops at 128x96 from the same config, seed, lr and schedule, changing
# one thing. Usage: scripts/ablations_short_budget.sh [SEARCHED_GENOTYPE_JSON]   (EPOCHS, SAMPLES, OUT override)
# On 2 CPU cores each run takes ~4 minutes; the budget is tiny, so the table says which way things point, no more.
set -euo pipefail
config=configs/efficientpose_a_coco17.json
epochs=${EPOCHS:-3}
samples=${SAMPLES:-3200}
out=${OUT:-runs/ablations}
run() {  # NAME [config overrides...]
  local name=$1; shift
  effpose train --config "$config" --out-dir "$out/$name" --cfg-options "input_size=[96,128]" "epochs=$epochs" \
    "samples_per_epoch=$samples" weight_decay=0 precise_bn_batches=10 "$@"
}

run a_lite0 init=lite0                          # the reference
run a_scratch init=scratch                      # FNA ImageNet start vs none
run a_no_pseudo init=lite0 pseudo_weight=0      # without pseudo face labels
run a_no_sic init=lite0 sic=false               # without SIC
if [[ $# -ge 1 ]]; then
  run searched_lite0 init=lite0 "arch=$1"       # the searched backbone
fi
