#!/usr/bin/env python
"""Person heights on the detector's training canvases against the validation split's, as shares of boxes per band of
canvas pixels: which persons a recipe's augmentation trains on, and which ones validation asks for.

    python scripts/detector_box_sizes.py --config configs/campaign_detector.json \
        [--augment '{"mosaic_prob": 0.25, "scale_range": [0.75, 2.0], "min_box_size": 12}'] [--canvases 500]

Training canvases are drawn as training draws them (``DetectionDataset.canvas``, the sources in the config's
ratios); validation persons are the val sources' GT boxes in the inference letterbox of their images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from effpose.data.coco import read_coco_json
from effpose.detector_training.augment import letterbox_placement
from effpose.detector_training.config import DetectorConfig
from effpose.detector_training.data import DetectionDataset, load_source
from effpose.evaluation.detection import person_boxes

BANDS = (0, 16, 32, 64, 128, 256, np.inf)


def shares(heights: np.ndarray) -> list[float]:
    """The share of ``heights`` in each band of :data:`BANDS`."""
    counts, _ = np.histogram(heights, BANDS)
    return [round(float(count) / max(1, len(heights)), 3) for count in counts]


def val_heights(config: DetectorConfig) -> tuple[np.ndarray, int]:
    """Canvas heights of every val person (the inference letterbox of its image) and the number of val images."""
    heights, images = [], 0
    for source in config.val:
        annotations, _ = source.paths()
        gt = read_coco_json(annotations)
        scale = {image["id"]: letterbox_placement((image["width"], image["height"]), config.input_size).scale[1]
                 for image in gt["images"]}
        images += len(gt["images"])
        for image_id, boxes in person_boxes(gt).items():
            heights.append((boxes[:, 3] - boxes[:, 1]) * scale[image_id])
    return np.concatenate(heights), images


def train_heights(config: DetectorConfig, canvases: int, seed: int) -> np.ndarray:
    """Box heights on ``canvases`` training canvases, the sources drawn in their configured ratios."""
    rng = np.random.default_rng(seed)
    heights = []
    for source in config.train:
        dataset = DetectionDataset(load_source(source), config.input_size, config.augment)
        for index in rng.integers(0, len(dataset), round(canvases * source.ratio)):
            boxes = dataset.canvas(int(index), rng)[1]
            heights.append(boxes[:, 3] - boxes[:, 1])
    return np.concatenate(heights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/campaign_detector.json"))
    parser.add_argument("--augment", type=json.loads, default=None, help="JSON replacing the config's augment")
    parser.add_argument("--canvases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = json.loads(args.config.read_text(encoding="utf-8"))
    if args.augment is not None:
        data["augment"] = args.augment
    config = DetectorConfig.from_dict(data)
    bands = [f"{low}-{high}" if np.isfinite(high) else f">= {low}" for low, high in zip(BANDS, BANDS[1:])]
    print(f"| canvases | {' | '.join(bands)} | boxes per canvas |")
    print(f"|---|{'---:|' * (len(bands) + 1)}")
    val, images = val_heights(config)
    print(f"| val (letterbox) | {' | '.join(map(str, shares(val)))} | {len(val) / images:.1f} |")
    train = train_heights(config, args.canvases, args.seed)
    augment = json.dumps(data.get("augment", {}))
    print(f"| training, augment {augment} | {' | '.join(map(str, shares(train)))} | {len(train) / args.canvases:.1f} |")


if __name__ == "__main__":
    main()
