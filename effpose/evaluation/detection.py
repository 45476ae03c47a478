"""Run a person detector over a COCO-format image set: COCO detection results, person box AP and latency.

Used by ``effpose detect`` (results files: pseudo-boxes for training, boxes for ``effpose eval --boxes``) and
``effpose eval-detector`` (AP / AP50 / AR via pycocotools, ms per image).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effpose.data.coco import read_coco_json
from effpose.data.dataset import read_image
from effpose.detectors import PersonDetector

#: COCOeval.stats of the bbox task, in order.
BOX_METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR", "ARS", "ARM", "ARL")


@dataclass
class DetectionRun:
    """Detections of every image of a set (COCO results: image_id, category_id 1, bbox xywh, score) and timings."""

    results: list[dict[str, Any]]
    milliseconds: list[float] = field(repr=False)  # detect() wall time per image, pre/post-processing included
    num_images: int = 0

    def latency(self) -> dict[str, float]:
        """Median and 90th percentile milliseconds per image."""
        times = np.asarray(self.milliseconds) if self.milliseconds else np.zeros(1)
        return {"ms_median": float(np.median(times)), "ms_p90": float(np.percentile(times, 90))}


def detect_images(
    detector: PersonDetector,
    annotation_json: str | Path,
    image_dir: str | Path,
    score_threshold: float,
    max_detections: int = 100,
    progress: bool = False,
) -> DetectionRun:
    """Detect the persons of every image listed in a COCO-format file (its annotations are not needed)."""
    images = read_coco_json(annotation_json)["images"]
    results: list[dict[str, Any]] = []
    milliseconds: list[float] = []
    for index, entry in enumerate(images):
        image = read_image(Path(image_dir) / entry["file_name"])
        started = time.perf_counter()
        detections = detector.detect(image, score_threshold, max_detections)
        milliseconds.append((time.perf_counter() - started) * 1000.0)
        for detection in detections:
            x1, y1, x2, y2 = detection.box
            results.append({"image_id": entry["id"], "category_id": 1, "score": round(detection.score, 5),
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
        if progress and (index + 1) % 50 == 0:
            print(f"\r{index + 1}/{len(images)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return DetectionRun(results, milliseconds, len(images))


def coco_box_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO person box metrics (:data:`BOX_METRIC_NAMES`) of ``results`` against the COCO-format ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(BOX_METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.catIds = [1]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(BOX_METRIC_NAMES, evaluation.stats)}


def evaluate_detector(
    detector: PersonDetector,
    annotation_json: str | Path,
    image_dir: str | Path,
    score_threshold: float = 0.01,
    max_detections: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Person box AP/AR of ``detector`` on a COCO-format set, with its latency per image."""
    run = detect_images(detector, annotation_json, image_dir, score_threshold, max_detections, progress)
    metrics = coco_box_ap(read_coco_json(annotation_json), run.results)
    return {**metrics, **run.latency(), "num_images": run.num_images, "num_detections": len(run.results),
            "detector": detector.name}
