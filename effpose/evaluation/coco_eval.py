"""COCO keypoint AP / AR (OKS) with pycocotools, from an in-memory ground truth and result list.

pycocotools is part of the ``train`` extra, so it is imported only when an evaluation runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

#: COCOeval.stats of the keypoint task, in order (M = medium 32^2..96^2 px area, L = large > 96^2).
METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def drop_pseudo_keypoints(gt: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``gt`` where keypoints flagged in an annotation's ``pseudo`` list are unlabelled.

    Flagged keypoints become (0, 0, 0) and ``num_keypoints`` is recounted, so a person left without any
    labelled keypoint is ignored by COCOeval like any other zero-keypoint person.
    """
    gt = copy.deepcopy(gt)
    for annotation in gt.get("annotations", []):
        flags = annotation.get("pseudo")
        if not flags or not any(flags):
            continue
        keypoints = annotation["keypoints"]
        for index, flag in enumerate(flags):
            if flag:
                keypoints[3 * index: 3 * index + 3] = [0, 0, 0]
        annotation["num_keypoints"] = sum(1 for v in keypoints[2::3] if v > 0)
    return gt


def coco_keypoint_ap(
    gt: dict[str, Any], results: list[dict[str, Any]], drop_pseudo: bool = True
) -> dict[str, float]:
    """COCO keypoint metrics (:data:`METRIC_NAMES`) of ``results`` against the COCO-format ``gt``.

    ``results`` is the COCO keypoint results format: dicts with ``image_id``, ``category_id`` (1),
    ``keypoints`` (flat x, y, score for every keypoint) and ``score``. Neither argument is modified.
    With ``drop_pseudo`` the pseudo-labelled GT keypoints are removed first (they are not ground truth).
    An empty result list scores 0. A metric without any GT person in its area range is NaN
    (pycocotools reports -1 there).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = drop_pseudo_keypoints(gt) if drop_pseudo else copy.deepcopy(gt)
    known = {image["id"] for image in gt["images"]}
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise ValueError(f"results for {len(unknown)} image ids that are not in the ground truth, e.g. {min(unknown)}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        ground_truth = COCO()
        ground_truth.dataset = gt
        ground_truth.createIndex()
        if results:
            detections = ground_truth.loadRes(copy.deepcopy(results))
        else:
            detections = COCO()
            detections.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            detections.createIndex()
        evaluator = COCOeval(ground_truth, detections, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) if value >= 0 else math.nan for name, value in zip(METRIC_NAMES, evaluator.stats)}
