"""Run a pose model over a COCO-format keypoint set and score it (COCO AP, PCK@0.2).

Crops of several images are pooled into one model batch. Person boxes are either the GT boxes
(every non-crowd person with labelled keypoints) or a COCO detection results file.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from effpose.contract import DEFAULT_INPUT_SIZE
from effpose.data.coco import is_scored_person, read_coco_json, xywh_to_xyxy
from effpose.evaluation.coco_eval import METRIC_NAMES, coco_keypoint_ap
from effpose.evaluation.pck import PCKResult, pck
from effpose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from effpose.pipeline import PersonPose, PreparedImage, TopDownPipeline
from effpose.processing.heatmap import DecodeMethod
from effpose.runtime import PoseEstimator

PCK_THRESHOLD = 0.2
PCK_KEY = f"PCK@{PCK_THRESHOLD:g}"
PER_JOINT_PCK_KEY = f"per_joint_{PCK_KEY}"
CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass
class EvaluationReport:
    """Metrics of one evaluation run and the COCO keypoint results they were computed from.

    ``metrics`` holds the COCO keys (:data:`METRIC_NAMES`; NaN where no GT person is in the area range),
    ``"PCK@0.2"`` and ``"per_joint_PCK@0.2"`` ({keypoint name: value}, NaN for never-labelled joints);
    both PCK entries are None when the boxes were detections.
    """

    metrics: dict[str, Any]
    results: list[dict[str, Any]]
    num_images: int
    num_gt_persons: int
    num_boxes: int
    boxes: str
    pck_result: PCKResult | None = field(default=None, repr=False)
    gt_persons: list[dict[str, Any]] | None = field(default=None, repr=False)  # GT boxes: result i's annotation

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary: the metrics at top level (NaN as None) plus the counts."""
        summary: dict[str, Any] = {key: _json_value(value) for key, value in self.metrics.items()}
        summary.update(num_images=self.num_images, num_gt_persons=self.num_gt_persons, num_boxes=self.num_boxes,
                       boxes=self.boxes)
        if self.pck_result is not None:
            summary.update(pck_persons=self.pck_result.num_persons, pck_excluded_persons=self.pck_result.num_excluded)
        return summary

    def to_table(self) -> str:
        """The metrics as an aligned, human-readable table."""
        lines = [f"{self.num_images} images, {self.num_gt_persons} GT persons, {self.num_boxes} boxes ({self.boxes})",
                 f"{'metric':<18}{'value':>8}"]
        lines += [f"{name:<18}{_format(self.metrics[name]):>8}" for name in METRIC_NAMES]
        lines.append(f"{PCK_KEY:<18}{_format(self.metrics[PCK_KEY]):>8}")
        if self.pck_result is not None:
            lines[-1] += f"  ({self.pck_result.num_persons} persons, {self.pck_result.num_excluded} without a torso)"
            lines.append(f"per-joint {PCK_KEY}")
            lines += [f"  {name:<16}{_format(value):>8}" for name, value in self.metrics[PER_JOINT_PCK_KEY].items()]
        return "\n".join(lines)


@dataclass
class _ImageTask:
    """The boxes (x1, y1, x2, y2) to estimate in one image, their scores and, for GT boxes, the persons."""

    image_id: int
    file_name: str
    boxes: np.ndarray
    box_scores: np.ndarray
    annotations: list[dict[str, Any]] | None


def load_estimator(
    model_path: str | Path,
    decode: DecodeMethod | None = None,
    flip: bool = False,
    threads: int | None = None,
    providers: str = "cpu",
    input_size: tuple[int, int] | None = None,
) -> PoseEstimator:
    """A :class:`PoseEstimator` for an ``.onnx`` file, or for a torch checkpoint (``.pt`` / ``.pth``).

    A checkpoint is exported to a temporary ONNX file exactly as ``effpose export`` does (a resume point's moving
    average of the weights, where it holds one), so what is evaluated is what ships; only this branch imports
    torch. Its crop size ``input_size`` (width, height) defaults to the checkpoint's ``train_config["input_size"]``
    when it has one, else 192x256. ``decode`` None uses the refinement the model states.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model not found: {model_path}")
    options = dict(providers=providers, intra_op_threads=threads, decode=decode, flip=flip)
    if model_path.suffix.lower() == ".onnx":
        return PoseEstimator(model_path, **options)
    if model_path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        suffixes = ", ".join(CHECKPOINT_SUFFIXES)
        raise ValueError(f"model must be an .onnx file or a checkpoint ({suffixes}): {model_path}")
    from effpose.model import load_checkpoint

    model, extra = load_checkpoint(model_path, moving_average=True)
    if input_size is None:
        input_size = tuple((extra.get("train_config") or {}).get("input_size", DEFAULT_INPUT_SIZE))
    return estimator_for_model(model, input_size, weights="trained", **options)


def estimator_for_model(model: Any, input_size: tuple[int, int], weights: str, **options: Any) -> PoseEstimator:
    """A :class:`PoseEstimator` for an in-memory torch network, through a temporary ONNX export (imports torch).

    ``options`` go to :class:`PoseEstimator`; the session keeps the model in memory after the file is gone.
    """
    from effpose.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="effpose-eval-") as folder:
        onnx_path = export_onnx(model.eval(), Path(folder) / "model.onnx", input_size, weights=weights)
        return PoseEstimator(onnx_path, **options)


def evaluate(
    estimator: PoseEstimator,
    annotation_json: str | Path,
    image_dir: str | Path,
    boxes: str | Path = "gt",
    flip: bool | None = None,
    batch_size: int = 32,
    progress: bool = False,
    drop_pseudo: bool = True,
    box_score_threshold: float = 0.0,
) -> EvaluationReport:
    """Estimate every person of a COCO-format keypoint set and score the result.

    ``boxes`` is ``"gt"`` (each non-crowd GT person with labelled keypoints, person score from
    :func:`effpose.pipeline.person_score` with box score 1) or the path of COCO detection results
    (``image_id``, ``bbox`` [x, y, w, h], ``score``, ``category_id``): only category 1 with
    score >= ``box_score_threshold`` on images of the annotation file are used, and the person score is
    the box score times the confident-keypoint mean. ``flip`` None uses the estimator's setting.
    ``drop_pseudo`` removes pseudo-labelled GT keypoints from both COCO AP and PCK; PCK needs GT boxes.
    ``progress`` writes a progress line to stderr.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if estimator.info.num_joints != NUM_KEYPOINTS:
        raise ValueError(f"COCO evaluation needs a {NUM_KEYPOINTS}-keypoint model, got {estimator.info.num_joints}")
    gt = read_coco_json(annotation_json)
    use_gt = str(boxes) == "gt"
    tasks = _gt_tasks(gt) if use_gt else _detection_tasks(gt, _read_detections(boxes), box_score_threshold)
    persons = _estimate(TopDownPipeline(estimator), tasks, Path(image_dir), flip, batch_size, progress)
    results = [pose.to_coco(task.image_id) for task, poses in zip(tasks, persons) for pose in poses]
    keypoints = np.asarray([pose.keypoints for poses in persons for pose in poses]).reshape(
        -1, estimator.info.num_joints, 3)

    metrics: dict[str, Any] = coco_keypoint_ap(gt, results, drop_pseudo=drop_pseudo)
    gt_persons = [a for task in tasks for a in task.annotations or []] if use_gt else None
    pck_result = _gt_box_pck(gt_persons, keypoints, drop_pseudo) if gt_persons is not None else None
    metrics[PCK_KEY] = None if pck_result is None else pck_result.pck
    metrics[PER_JOINT_PCK_KEY] = None if pck_result is None else {
        name: float(value) for name, value in zip(KEYPOINT_NAMES, pck_result.per_joint)
    }
    return EvaluationReport(
        metrics=metrics,
        results=results,
        num_images=len(gt["images"]),
        num_gt_persons=sum(1 for a in gt["annotations"] if is_scored_person(a)),
        num_boxes=len(results),
        boxes="gt" if use_gt else str(boxes),
        pck_result=pck_result,
        gt_persons=gt_persons,
    )


def _read_detections(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    return json.loads(path.read_text())


def _make_task(image: dict[str, Any], boxes: list[list[float]], scores: list[float],
               annotations: list[dict[str, Any]] | None) -> _ImageTask:
    return _ImageTask(image["id"], image["file_name"], np.asarray(boxes, np.float64).reshape(-1, 4),
                      np.asarray(scores, np.float64), annotations)


def _gt_tasks(gt: dict[str, Any]) -> list[_ImageTask]:
    persons: dict[int, list[tuple[list[float], dict[str, Any]]]] = defaultdict(list)
    for annotation in gt["annotations"]:
        box = xywh_to_xyxy(annotation["bbox"])
        if is_scored_person(annotation) and box is not None:
            persons[annotation["image_id"]].append((box, annotation))
    return [
        _make_task(image, [b for b, _ in persons[image["id"]]], [1.0] * len(persons[image["id"]]),
                   [a for _, a in persons[image["id"]]])
        for image in gt["images"] if persons[image["id"]]
    ]


def _detection_tasks(gt: dict[str, Any], detections: Any, score_threshold: float) -> list[_ImageTask]:
    if not isinstance(detections, list):
        raise ValueError("detections must be a JSON list of {image_id, bbox, score, category_id}")
    boxes: dict[int, list[tuple[list[float], float]]] = defaultdict(list)
    for detection in detections:
        box = xywh_to_xyxy(detection["bbox"])
        if detection.get("category_id", 1) == 1 and detection["score"] >= score_threshold and box is not None:
            boxes[detection["image_id"]].append((box, float(detection["score"])))
    return [
        _make_task(image, [b for b, _ in boxes[image["id"]]], [s for _, s in boxes[image["id"]]], None)
        for image in gt["images"] if boxes[image["id"]]
    ]


def _estimate(pipeline: TopDownPipeline, tasks: list[_ImageTask], image_dir: Path, flip: bool | None,
              batch_size: int, progress: bool) -> list[list[PersonPose]]:
    """The persons of every task's boxes, in order, with the crops of consecutive images pooled into model batches
    of at least ``batch_size`` crops (the last one excepted)."""
    persons: list[list[PersonPose]] = []
    pending: list[PreparedImage] = []
    for task in tqdm(tasks, desc="evaluating", unit="image", disable=not progress):
        image = cv2.imread(str(image_dir / task.file_name), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {image_dir / task.file_name}")
        pending.append(pipeline.prepare(image, task.boxes, task.box_scores, flip=flip))
        if sum(len(item) for item in pending) >= batch_size:
            persons += pipeline.run_pooled(pending)
            pending = []
    return persons + (pipeline.run_pooled(pending) if pending else [])


def _gt_box_pck(annotations: list[dict[str, Any]], keypoints: np.ndarray, drop_pseudo: bool) -> PCKResult:
    gt = np.array([a["keypoints"] for a in annotations], np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    mask = np.ones(gt.shape[:2], bool)
    if drop_pseudo:
        for row, annotation in zip(mask, annotations):
            row &= ~np.asarray(annotation.get("pseudo") or [0] * NUM_KEYPOINTS, bool)
    return pck(keypoints[:, :, :2], gt, PCK_THRESHOLD, mask)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_value(v) for key, v in value.items()}
    return value


def _format(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"
