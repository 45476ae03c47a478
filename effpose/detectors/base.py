"""The detector interface: what a person detector returns, and the checks every detector shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected person: box (x1, y1, x2, y2) in original-image pixels and its confidence."""

    box: tuple[float, float, float, float]
    score: float


@runtime_checkable
class PersonDetector(Protocol):
    """Finds people in a BGR uint8 image (H, W, 3).

    ``detect`` returns at most ``max_detections`` detections with ``score >= score_threshold``, sorted by score
    (highest first), each box clipped to the image and of positive width and height. ``default_threshold`` is
    the score threshold to use when the caller names none (a detector's calibrated one).
    """

    name: str
    default_threshold: float

    def detect(self, image: np.ndarray, score_threshold: float, max_detections: int) -> list[Detection]:
        """Person boxes of ``image``, best first."""
        ...


def image_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of a BGR uint8 image (H, W, 3); anything else raises ValueError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image must be a BGR uint8 array (H, W, 3), got shape {shape} and dtype {dtype}")
    height, width = image.shape[:2]
    if width == 0 or height == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return width, height


def to_detections(
    boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int], max_detections: int
) -> list[Detection]:
    """Clip (N, 4) xyxy boxes to an image of ``size`` (width, height), drop empty or non-finite ones,
    sort by score (highest first, ties keep their order) and keep at most ``max_detections``."""
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")
    width, height = size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    valid = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return [Detection(tuple(float(v) for v in boxes[i]), float(scores[i])) for i in order]
