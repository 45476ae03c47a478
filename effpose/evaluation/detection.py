"""Run a person detector over a COCO-format image set: COCO detection results, person box AP and latency.

Used by ``effpose detect`` (results files: pseudo-boxes for training, boxes for ``effpose eval --boxes``) and
``effpose eval-detector`` (AP / AP50 / AR via pycocotools, ms per image).
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

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
    for entry in tqdm(images, desc="detecting", unit="image", disable=not progress):
        image = read_image(Path(image_dir) / entry["file_name"])
        started = time.perf_counter()
        detections = detector.detect(image, score_threshold, max_detections)
        milliseconds.append((time.perf_counter() - started) * 1000.0)
        for detection in detections:
            x1, y1, x2, y2 = detection.box
            results.append({"image_id": entry["id"], "category_id": 1, "score": round(detection.score, 5),
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
    return DetectionRun(results, milliseconds, len(images))


def person_box_evaluation(gt: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    """A pycocotools ``COCOeval`` of the non-empty COCO ``results`` against the COCO-format ``gt``, person boxes
    (category 1) only, not yet evaluated (its ``params`` can still be narrowed)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluation.params.catIds = [1]
    return evaluation


def coco_box_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO person box metrics (:data:`BOX_METRIC_NAMES`) of ``results`` against the COCO-format ``gt``."""
    if not results:
        return dict.fromkeys(BOX_METRIC_NAMES, 0.0)
    evaluation = person_box_evaluation(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(BOX_METRIC_NAMES, evaluation.stats)}


@dataclass(frozen=True)
class OperatingPoint:
    """Box precision, recall and F1 (matches at IoU >= 0.5) when detections scoring at least ``threshold`` are kept."""

    threshold: float
    precision: float
    recall: float
    f1: float


def person_boxes(gt: dict[str, Any]) -> dict[int, np.ndarray]:
    """The non-crowd person boxes (x1, y1, x2, y2) of each image of the COCO-format ``gt`` that has any."""
    truth: dict[int, list[list[float]]] = {}
    for annotation in gt["annotations"]:
        if annotation.get("category_id", 1) == 1 and not annotation.get("iscrowd", 0):
            x, y, w, h = annotation["bbox"]
            truth.setdefault(annotation["image_id"], []).append([x, y, x + w, y + h])
    return {image: np.asarray(found, dtype=np.float64) for image, found in truth.items()}


def match_detections(
    truth: dict[int, np.ndarray], ranked: list[dict[str, Any]], iou: float = 0.5
) -> tuple[list[bool], dict[int, np.ndarray]]:
    """Greedy matching of COCO and VOC: each detection of ``ranked`` (COCO results, best first) matches the unmatched
    ground-truth box of its image (``truth``, from :func:`person_boxes`) it overlaps most if that IoU reaches ``iou``.
    Returns whether each detection matched, and which ground-truth boxes of each image were matched."""
    from effpose.detectors import box_iou

    matched = {image: np.zeros(len(found), dtype=bool) for image, found in truth.items()}
    hits = []
    for result in ranked:
        x, y, w, h = result["bbox"]
        image = result["image_id"]
        hit = False
        if image in truth:
            overlaps = box_iou(np.array([x, y, x + w, y + h]), truth[image])[0]
            overlaps[matched[image]] = -1.0
            best = int(np.argmax(overlaps))
            hit = bool(overlaps[best] >= iou)
            matched[image][best] |= hit
        hits.append(hit)
    return hits, matched


def operating_points(gt: dict[str, Any], results: list[dict[str, Any]], iou: float = 0.5) -> list[OperatingPoint]:
    """Precision / recall / F1 at every score of ``results`` (COCO results) against the non-crowd person boxes of
    ``gt``, detections matched as in :func:`match_detections`."""
    truth = person_boxes(gt)
    total = sum(len(found) for found in truth.values())
    ranked = sorted(results, key=lambda r: -r["score"])
    hits, _ = match_detections(truth, ranked, iou)
    true_positives = np.cumsum(hits)
    scores = [result["score"] for result in ranked]
    points = []
    for index, score in enumerate(scores):
        if index + 1 < len(scores) and scores[index + 1] == score:
            continue  # a threshold keeps every detection of equal score
        precision = true_positives[index] / (index + 1)
        recall = true_positives[index] / max(total, 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        points.append(OperatingPoint(float(score), float(precision), float(recall), float(f1)))
    return points


def persons_found(
    gt: dict[str, Any], results: list[dict[str, Any]], threshold: float, iou: float = 0.5
) -> dict[int, np.ndarray]:
    """For each image with non-crowd persons in ``gt``: which of them (in :func:`person_boxes` order) the detections
    scoring at least ``threshold`` find, matched as in :func:`match_detections`."""
    truth = person_boxes(gt)
    kept = sorted((r for r in results if r["score"] >= threshold), key=lambda r: -r["score"])
    return match_detections(truth, kept, iou)[1]


def calibrate_threshold(gt: dict[str, Any], results: list[dict[str, Any]]) -> OperatingPoint:
    """The operating point of maximal box F1 (its threshold: the lowest score kept); ties go to the higher threshold.

    Raises ValueError when there are no detections to choose from.
    """
    points = operating_points(gt, results)
    if not points:
        raise ValueError("the detector found nothing on the calibration set: no threshold to choose")
    return max(points, key=lambda point: point.f1)  # the first maximum: the highest threshold


def calibrate_detector(
    detector: PersonDetector, annotation_json: Path, image_dir: Path, calibrated_on: str, max_detections: int = 100,
    progress: bool = False,
) -> tuple[float, dict[str, Any]]:
    """The max-F1 score threshold of ``detector`` on a COCO-format set and the report stored beside it: the
    chosen operating point and, for comparison, the one nearest the uncalibrated default threshold."""
    from dataclasses import asdict

    from effpose.detectors.onnx_detector import UNCALIBRATED_THRESHOLD

    run = detect_images(detector, annotation_json, image_dir, 0.01, max_detections, progress)
    gt = read_coco_json(annotation_json)
    best = calibrate_threshold(gt, run.results)
    uncalibrated = min(operating_points(gt, run.results), key=lambda p: abs(p.threshold - UNCALIBRATED_THRESHOLD))
    return best.threshold, {"calibrated_on": calibrated_on, "chosen_by": "max box F1 at IoU 0.5",
                            "best": asdict(best), "nearest_to_uncalibrated_default": asdict(uncalibrated)}


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
