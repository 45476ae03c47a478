#!/usr/bin/env bash
# The staged CPU recipe that produced the shipped effpose/assets/efficientpose_a_coco17.onnx (2 cores, no GPU).
# Stage 0 at 256x192 from the FNA-remapped EfficientNet-Lite0 seed; stage 1 continues at 128x96 (3.8x more samples
# per second: progressive resizing); stage 2 fine-tunes at 256x192; stages 3 and 4 repeat the 128x96 / 256x192 pair
# without weight decay (checkpoints/efficientpose_a_coco17/last.pt is the end of stage 2). Precise BN before every
# validation.
# With a GPU, run the base config alone for many more epochs instead (and torchrun for several GPUs).
set -euo pipefail
config=configs/efficientpose_a_coco17.json

# stages 0-2 used Adam's coupled L2 (1e-4), which the trainer no longer offers: AdamW's decoupled decay stands in
small="input_size=[96,128]"  # 128x96 crops (width, height)
# stage 0 was stopped after 5 of its 12 epochs
effpose train --config "$config" --out-dir runs/stage0_256x192 --cfg-options epochs=12 weight_decay=0.0001
effpose train --config "$config" --out-dir runs/stage1_128x96 --cfg-options "$small" epochs=18 weight_decay=0.0001 \
  precise_bn_batches=10 init_checkpoint=runs/stage0_256x192/last.pt
effpose train --config "$config" --out-dir runs/stage2_256x192 --cfg-options epochs=3 lr=0.0005 weight_decay=0.0001 \
  precise_bn_batches=10 init_checkpoint=runs/stage1_128x96/last.pt
effpose train --config "$config" --out-dir runs/stage3_128x96 --cfg-options "$small" epochs=20 samples_per_epoch=12800 \
  weight_decay=0 precise_bn_batches=10 init_checkpoint=runs/stage2_256x192/last.pt
effpose train --config "$config" --out-dir runs/stage4_256x192 --cfg-options epochs=6 lr=0.0005 weight_decay=0 \
  precise_bn_batches=10 init_checkpoint=runs/stage3_128x96/best.pt
# (historical: the five stages were followed by the campaign, scripts/campaign_run.sh, which resumes their end)
python scripts/release_model.py --run runs/stage4_256x192 --name efficientpose_a_coco17
