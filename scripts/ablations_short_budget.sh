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
common=(--config "$config" --input 128x96 --epochs "$epochs" --samples-per-epoch "$samples" --weight-decay 0
        --precise-bn-batches 10)

effpose train "${common[@]}" --init lite0 --out-dir "$out/a_lite0"                       # the reference
effpose train "${common[@]}" --init scratch --out-dir "$out/a_scratch"                   # FNA ImageNet start vs none
effpose train "${common[@]}" --init lite0 --pseudo-weight 0 --out-dir "$out/a_no_pseudo" # without pseudo face labels
effpose train "${common[@]}" --init lite0 --no-sic --out-dir "$out/a_no_sic"             # without SIC
if [[ $# -ge 1 ]]; then
  effpose train "${common[@]}" --init lite0 --genotype "$1" --out-dir "$out/searched_lite0"  # the searched backbone
fi
