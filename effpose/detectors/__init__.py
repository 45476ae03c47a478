"""Person detectors for the top-down pipeline, torch-free: a YOLOX/YOLOv8 ONNX detector and the whole image.

Every detector takes a BGR uint8 image (H, W, 3) and returns :class:`Detection` boxes in image pixels, best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effpose.detectors.base import Detection, PersonDetector
from effpose.detectors.onnx_detector import (
    Letterbox,
    OnnxDetector,
    decode_boxes,
    decode_yolov8,
    decode_yolox,
    guess_layout,
    letterbox,
    preprocess,
)
from effpose.detectors.whole_image import WholeImageDetector
from effpose.processing.boxes import box_iou, nms

DETECTOR_KINDS: tuple[str, ...] = ("onnx", "whole-image")


def build_detector(kind: str, model_path: Path | None = None, **options: Any) -> PersonDetector:
    """Build a detector by kind: ``"onnx"`` (an :class:`OnnxDetector` of ``model_path``, ``options`` passed
    on) or ``"whole-image"`` (which has no model and no options; both are ignored so one settings object can
    drive either kind). Unknown kinds and ``"onnx"`` without a model raise ValueError."""
    if kind == "onnx":
        if model_path is None:
            raise ValueError("detector kind 'onnx' needs model_path (the detector ONNX file)")
        return OnnxDetector(model_path, **options)
    if kind == "whole-image":
        return WholeImageDetector()
    raise ValueError(f"unknown detector kind {kind!r}: use one of {', '.join(DETECTOR_KINDS)}")


__all__ = [
    "DETECTOR_KINDS",
    "Detection",
    "Letterbox",
    "OnnxDetector",
    "PersonDetector",
    "WholeImageDetector",
    "box_iou",
    "build_detector",
    "decode_boxes",
    "decode_yolov8",
    "decode_yolox",
    "guess_layout",
    "letterbox",
    "nms",
    "preprocess",
]
