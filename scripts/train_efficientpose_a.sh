#!/usr/bin/env bash
# The staged CPU recipe that produced the shipped effpose/assets/efficientpose_a_coco17.onnx (2 cores, no GPU).
# Stage 0 at 256x192 from the FNA-remapped EfficientNet-Lite0 seed; stage 1 continues at 128x96 (3.8x more samples
# per second: progressive resizing); stage 2 fine-tunes at 256x192. Precise BN before every validation.
# With a GPU, run the base config alone for many more epochs instead (and torchrun for several GPUs).
set -euo pipefail
config=configs/efficientpose_a_coco17.json

effpose train --config "$config" --epochs 12 --out-dir runs/stage0_256x192   # stopped after 5 of 12 cosine epochs
effpose train --config "$config" --input 128x96 --epochs 18 --precise-bn-batches 10 \
  --init-checkpoint runs/stage0_256x192/last.pt --out-dir runs/stage1_128x96
effpose train --config "$config" --epochs 3 --lr 0.0005 --precise-bn-batches 10 \
  --init-checkpoint runs/stage1_128x96/last.pt --out-dir runs/stage2_256x192
python scripts/release_model.py --run runs/stage2_256x192 --name efficientpose_a_coco17
