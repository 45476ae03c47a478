#!/usr/bin/env python
"""How well person detectors' boxes fit, on the shared COCO val split: the persons each detector reaches at all
(any detection from score 0.01) at several match IoUs, small and large persons apart, and for every person the
error of the detection that overlaps it most. Recall at IoU 0.3 far above recall at 0.5 means boxes near the person
that do not fit it: a localisation gap, not a missed person.

    python scripts/detector_box_fit.py [effpose/assets/person_detector.onnx ...] [--canvas 288] [--threads 1]

``--canvas`` sets the letterbox side at which a person counts as small (shorter than 64 canvas pixels), so that
detectors with different inputs are split at the same persons. Detections come from
``effpose.evaluation.detection.detect_images`` through the service's detector adapter.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from effpose.assets import DEFAULT_PERSON_DETECTOR
from effpose.data.coco import read_coco_json
from effpose.data.sources import data_root
from effpose.detectors import OnnxDetector, box_iou
from effpose.evaluation.detection import detect_images, person_boxes, persons_found

ANNOTATIONS = "coco/annotations/person_keypoints_val.json"
IMAGES = "coco/images"
TEACHER = "models/yolox_nano/yolox_nano.onnx"
MATCH_IOUS = (0.5, 0.4, 0.3, 0.1)
SMALL = 64  # canvas pixels


def best_matches(truth: dict[int, np.ndarray], results: list[dict[str, Any]]) -> np.ndarray:
    """For every ground-truth person overlapped by some detection: (IoU, log width ratio, log height ratio,
    centre x error / width, centre y error / height) of the detection that overlaps it most (rows (P, 5))."""
    detected: dict[int, list[list[float]]] = {}
    for result in results:
        x, y, w, h = result["bbox"]
        detected.setdefault(result["image_id"], []).append([x, y, x + w, y + h])
    rows = []
    for image, boxes in truth.items():
        if image not in detected:
            continue
        found = np.asarray(detected[image])
        overlaps = box_iou(boxes, found)
        for box, ious in zip(boxes, overlaps):
            if ious.max() <= 0:
                continue
            best = found[ious.argmax()]
            size, best_size = box[2:] - box[:2], best[2:] - best[:2]
            centre_error = ((best[:2] + best[2:]) - (box[:2] + box[2:])) / 2 / size
            rows.append([ious.max(), *np.log(best_size / size), *centre_error])
    return np.asarray(rows).reshape(-1, 5)


def small_flags(gt: dict[str, Any], truth: dict[int, np.ndarray], canvas: int) -> dict[int, np.ndarray]:
    """Whether each ground-truth person is shorter than :data:`SMALL` pixels in its image's ``canvas`` letterbox."""
    longest = {image["id"]: max(image["width"], image["height"]) for image in gt["images"]}
    return {image: (boxes[:, 3] - boxes[:, 1]) * canvas / longest[image] < SMALL for image, boxes in truth.items()}


def report(name: str, gt: dict[str, Any], results: list[dict[str, Any]], canvas: int) -> str:
    """Markdown rows for one detector: recall by match IoU (all / small / large), then the fit of the best boxes."""
    truth = person_boxes(gt)
    small = np.concatenate([flags for _, flags in sorted(small_flags(gt, truth, canvas).items())])
    cells = []
    for iou in MATCH_IOUS:
        found = persons_found(gt, results, 0.01, iou)
        flags = np.concatenate([found[image] for image in sorted(found)])
        cells.append(f"{flags.mean():.2f} / {flags[small].mean():.2f} / {flags[~small].mean():.2f}")
    fit = best_matches(truth, results)
    spread = np.median(np.abs(fit[:, 1:]), axis=0)
    return (f"| {name} | {' | '.join(cells)} | {np.median(fit[:, 0]):.2f} | "
            f"{' | '.join(f'{value:.3f}' for value in spread)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detectors", nargs="*", type=Path, default=[DEFAULT_PERSON_DETECTOR, data_root() / TEACHER])
    parser.add_argument("--canvas", type=int, default=288, help="letterbox side that defines a small person")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    gt = read_coco_json(data_root() / ANNOTATIONS)
    recall = " | ".join(f"found at IoU {iou}" for iou in MATCH_IOUS)
    print(f"| detector | {recall} | best IoU | log w ratio | log h ratio | centre x error / w | centre y error / h |")
    print(f"|---|{'---:|' * (len(MATCH_IOUS) + 5)}")
    for path in args.detectors:
        detector = OnnxDetector(path, intra_op_threads=args.threads)
        run = detect_images(detector, data_root() / ANNOTATIONS, data_root() / IMAGES, score_threshold=0.01,
                            max_detections=100)
        print(report(path.name, gt, run.results, args.canvas))
    print(f"\nfound: all / small (< {SMALL} px on the {args.canvas} letterbox) / larger persons, from score 0.01; "
          "then medians over the persons of the detection that overlaps each most (absolute values of the errors)")


if __name__ == "__main__":
    main()
