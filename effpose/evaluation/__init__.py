"""Accuracy evaluation of pose models on COCO-format keypoint sets.

* :func:`coco_keypoint_ap`: COCO keypoint AP/AR (OKS, pycocotools) of a result list, pseudo-labels dropped;
* :func:`pck`: PCK normalised by the torso diameter, overall and per joint;
* :func:`evaluate`: run a :class:`~effpose.runtime.PoseEstimator` over a set (GT boxes or detections)
  and report both; :func:`load_estimator` opens an ONNX model or exports a checkpoint on the fly
  (the ``effpose eval`` command: :mod:`effpose.cli.evaluation`).

Importing this package loads neither torch nor pycocotools (the latter only when AP is computed).
"""

from effpose.evaluation.coco_eval import METRIC_NAMES, coco_keypoint_ap, drop_pseudo_keypoints
from effpose.evaluation.pck import PCKResult, pck, torso_diameter
from effpose.evaluation.runner import EvaluationReport, evaluate, load_estimator

__all__ = [
    "METRIC_NAMES",
    "EvaluationReport",
    "PCKResult",
    "coco_keypoint_ap",
    "drop_pseudo_keypoints",
    "evaluate",
    "load_estimator",
    "pck",
    "torso_diameter",
]
