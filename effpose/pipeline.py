"""The top-down pipeline, written once: boxes -> crops (+ mirror images) -> pose model -> keypoints -> person scores.

Every user of the pose model goes through it: the service core, evaluation, ``effpose predict`` and the Python
API. Its three stages are separate so that a batcher can pool the model stage of many requests:

* :meth:`TopDownPipeline.prepare` (CPU): the boxes (the client's, or the detector's) and the model input for them,
  a :class:`PreparedImage`;
* :meth:`TopDownPipeline.run` (model): heatmaps of any batch of crops, one ONNX Runtime call;
* :meth:`TopDownPipeline.finish` (CPU): the flip test's halves merged, heatmaps decoded to image pixels, one
  :class:`PersonPose` per box.

:meth:`TopDownPipeline.estimate` chains them for one image. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from effpose.detectors import PersonDetector
from effpose.keypoints import KEYPOINT_NAMES
from effpose.runtime import PoseEstimator

PERSON_SCORE_KEYPOINT_THRESHOLD = 0.2
DEFAULT_MAX_PERSONS = 20

Boxes = np.ndarray | Sequence[Sequence[float]]


def person_score(keypoint_scores: np.ndarray, box_score: float, threshold: float = PERSON_SCORE_KEYPOINT_THRESHOLD) -> float:
    """Box score times the mean score of the confident keypoints (the HRNet/SimpleBaseline rescoring)."""
    confident = keypoint_scores[keypoint_scores > threshold]
    return float(box_score * confident.mean()) if confident.size else 0.0


@dataclass
class PersonPose:
    """One person: box (x1, y1, x2, y2) in image pixels, its score, and J keypoints (x, y, score)."""

    box: np.ndarray
    box_score: float
    keypoints: np.ndarray  # (J, 3): x, y in image pixels, score
    score: float
    source: str = "client"

    def to_dict(self, names: Sequence[str] = KEYPOINT_NAMES, keypoint_threshold: float | None = None) -> dict:
        """JSON-ready form: every keypoint is present, in model order, with its score.

        With ``keypoint_threshold`` each keypoint also says whether its score reaches it (``visible``).
        """
        keypoints = []
        for name, (x, y, s) in zip(names, self.keypoints):
            keypoint = {"name": name, "x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4)}
            if keypoint_threshold is not None:
                keypoint["visible"] = bool(s >= keypoint_threshold)
            keypoints.append(keypoint)
        return {
            "box": [round(float(v), 2) for v in self.box],
            "box_score": round(float(self.box_score), 4),
            "source": self.source,
            "score": round(float(self.score), 4),
            "keypoints": keypoints,
        }

    def to_coco(self, image_id: int) -> dict:
        """One entry of a COCO keypoint results file (bbox as x, y, width, height)."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 3) for v in self.keypoints.reshape(-1)],
            "score": float(self.score),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        }


@dataclass
class PreparedImage:
    """The CPU stage's output for one image: the model input and what :meth:`TopDownPipeline.finish` needs."""

    tensor: np.ndarray  # (N, 3, H, W) crops, followed by their N mirror images when ``flip``
    matrices: np.ndarray  # (N, 2, 3) image -> crop
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 in image pixels
    box_scores: np.ndarray  # (N,)
    source: str  # "client", "detector", or what the caller named
    flip: bool

    def __len__(self) -> int:
        return len(self.boxes)


class TopDownPipeline:
    """Top-down pose estimation: a pose model (:class:`~effpose.runtime.PoseEstimator`) and, for images sent
    without boxes, a person detector (see the module docstring for the stages)."""

    def __init__(self, estimator: PoseEstimator, detector: PersonDetector | None = None):
        self.estimator = estimator
        self.detector = detector

    @property
    def flip(self) -> bool:
        """The flip test's default: the estimator's."""
        return self.estimator.flip

    def locate(self, image: np.ndarray, det_threshold: float | None = None,
               max_persons: int = DEFAULT_MAX_PERSONS) -> tuple[np.ndarray, np.ndarray]:
        """The detector's person boxes (M, 4) and scores (M,) of a BGR uint8 image, best first, at most
        ``max_persons``, from ``det_threshold`` (default: the detector's calibrated threshold) up."""
        if self.detector is None:
            raise ValueError("this pipeline has no person detector: pass the person boxes")
        threshold = self.detector.default_threshold if det_threshold is None else det_threshold
        detections = self.detector.detect(image, threshold, max_persons)
        boxes = np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        return boxes, np.asarray([d.score for d in detections], dtype=np.float64)

    def prepare(self, image: np.ndarray, boxes: Boxes | None = None, box_scores: Sequence[float] | None = None,
                *, flip: bool | None = None, det_threshold: float | None = None,
                max_persons: int = DEFAULT_MAX_PERSONS, source: str | None = None) -> PreparedImage:
        """CPU stage: the crops of ``boxes`` (image pixels; None: the detector's) of a BGR uint8 image, followed by
        their mirror images when the flip test is on. Bad boxes raise ValueError."""
        if boxes is None:
            boxes, scores = self.locate(image, det_threshold, max_persons)
            source = source or "detector"
        else:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            scores = np.ones(len(boxes)) if box_scores is None else np.asarray(box_scores, dtype=np.float64)
            source = source or "client"
        flip = self.flip if flip is None else flip
        crops = self.estimator.prepare(image, boxes)
        tensor = self.estimator.with_mirrored(crops.tensor) if flip and len(boxes) else crops.tensor
        return PreparedImage(tensor, crops.matrices, crops.boxes, scores, source, flip)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Model stage: heatmaps of a batch of crops (of one image or pooled from many), one ONNX Runtime call."""
        return self.estimator.run(tensor)

    def finish(self, prepared: PreparedImage, heatmaps: np.ndarray) -> list[PersonPose]:
        """Finish stage: the persons of one prepared image from the heatmaps of its ``tensor``, in box order."""
        if not len(prepared):
            return []
        if prepared.flip:
            heatmaps = self.estimator.merge_mirrored(heatmaps)
        keypoints = self.estimator.decode(heatmaps, prepared.matrices)
        return [PersonPose(box, float(score), points, person_score(points[:, 2], float(score)), prepared.source)
                for box, score, points in zip(prepared.boxes, prepared.box_scores, keypoints)]

    def run_pooled(self, prepared: Sequence[PreparedImage]) -> list[list[PersonPose]]:
        """The persons of several prepared images, their crops pooled into one model call."""
        tensors = [item.tensor for item in prepared]
        if not sum(len(tensor) for tensor in tensors):
            return [[] for _ in prepared]
        heatmaps = self.run(np.concatenate(tensors))
        splits = np.cumsum([len(tensor) for tensor in tensors])[:-1]
        return [self.finish(item, part) for item, part in zip(prepared, np.split(heatmaps, splits))]

    def estimate(self, image: np.ndarray, boxes: Boxes | None = None, box_scores: Sequence[float] | None = None,
                 *, flip: bool | None = None, det_threshold: float | None = None,
                 max_persons: int = DEFAULT_MAX_PERSONS, source: str | None = None) -> list[PersonPose]:
        """Poses of the people in a BGR uint8 image: in ``boxes`` (in their order), or found by the detector."""
        prepared = self.prepare(image, boxes, box_scores, flip=flip, det_threshold=det_threshold,
                                max_persons=max_persons, source=source)
        return self.run_pooled([prepared])[0]
