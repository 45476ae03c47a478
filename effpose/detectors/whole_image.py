"""The trivial detector: the whole image is one person (for clients that send pre-cropped people)."""

from __future__ import annotations

import numpy as np

from effpose.detectors.base import Detection, image_size, to_detections


class WholeImageDetector:
    """Returns one detection covering the whole image, with score 1.0."""

    name = "whole-image"
    default_threshold = 0.0

    def detect(self, image: np.ndarray, score_threshold: float, max_detections: int) -> list[Detection]:
        """``[Detection((0, 0, W, H), 1.0)]``; empty when ``score_threshold > 1`` or ``max_detections == 0``."""
        width, height = image_size(image)
        boxes, scores = np.array([[0.0, 0.0, width, height]]), np.ones(1)
        keep = scores >= score_threshold
        return to_detections(boxes[keep], scores[keep], (width, height), max_detections)
