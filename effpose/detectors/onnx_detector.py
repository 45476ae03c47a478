"""Person detection with a YOLOX or YOLOv8 detector exported to ONNX, on ONNX Runtime (no torch)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from effpose.detectors.base import Detection, image_size, to_detections
from effpose.detectors.letterbox import Letterbox, letterbox
from effpose.detectors.yolo_decode import Layout, decode_boxes, decode_yolov8, decode_yolox, guess_layout
from effpose.onnx_session import create_session
from effpose.processing.boxes import nms

LAYOUTS: tuple[str, ...] = ("auto", "yolox", "yolov8", "effpose")
#: ONNX metadata value of ``effpose.kind`` that marks the project's own person detector (layout ``effpose``).
PERSON_DETECTOR_KIND = "person_detector"
#: ONNX metadata key of the calibrated score threshold (``effpose calibrate-detector --write``).
THRESHOLD_KEY = "effpose.score_threshold"
#: The score threshold of a model that carries no calibrated one.
UNCALIBRATED_THRESHOLD = 0.4


def write_score_threshold(model_path: str | Path, threshold: float, calibration: dict) -> None:
    """Store a calibrated score threshold in a detector's ONNX metadata (``effpose.score_threshold``, read by
    :class:`~effpose.detectors.OnnxDetector`) and, when the model has a card beside it, in the card."""
    import onnx  # the training extra: calibration writes files, serving only reads them

    path = Path(model_path)
    model = onnx.load(str(path))
    entries = {entry.key: entry.value for entry in model.metadata_props}
    entries[THRESHOLD_KEY] = f"{threshold:.4f}"
    entries["effpose.score_threshold_calibration"] = json.dumps(calibration)
    onnx.helper.set_model_props(model, entries)
    onnx.save(model, str(path))
    card = path.with_suffix(".json")
    if card.is_file():
        content = json.loads(card.read_text())
        content["score_threshold"] = {"value": round(threshold, 4), **calibration}
        card.write_text(json.dumps(content, indent=2) + "\n")


def preprocess(image: np.ndarray, size: tuple[int, int], layout: Layout) -> tuple[np.ndarray, Letterbox]:
    """Model input (1, 3, H, W) float32 for a BGR uint8 image, and the letterbox placement.

    ``yolox``: top-left letterbox, BGR, 0-255. ``yolov8`` and ``effpose``: centred letterbox, RGB, 0-1. All pad
    with 114.
    """
    rgb = layout in ("yolov8", "effpose")
    canvas, placement = letterbox(image, size, centered=rgb)
    if rgb:
        tensor = canvas[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    else:
        tensor = canvas.transpose(2, 0, 1).astype(np.float32)
    return np.ascontiguousarray(tensor[None]), placement


class OnnxDetector:
    """Person detector running a YOLOX or YOLOv8 ONNX export, or the project's own detector (layout ``effpose``);
    see :mod:`effpose.detectors.yolo_decode`.

    ``layout="auto"`` tells the layout from the model's metadata (``effpose.kind``) or its output shape.
    ``person_class`` is the person's class index (0 in COCO). Boxes are merged by class-agnostic NMS at IoU
    ``nms_iou``. ``default_threshold`` is the calibrated score threshold of the model's metadata
    (:data:`THRESHOLD_KEY`), else :data:`UNCALIBRATED_THRESHOLD`. Thread-safe: ``detect`` keeps no state.
    """

    def __init__(
        self,
        model_path: str | Path,
        layout: Literal["auto", "yolox", "yolov8", "effpose"] = "auto",
        person_class: int = 0,
        nms_iou: float = 0.45,
        providers: str | Sequence[str] = "cpu",
        intra_op_threads: int | None = None,
        decoded: bool = False,
    ):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"detector model not found: {path}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown detector layout {layout!r}: use one of {', '.join(LAYOUTS)}")
        if person_class < 0:
            raise ValueError(f"person_class must be >= 0, got {person_class}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.session = create_session(path, providers, intra_op_threads)
        self.name = path.name
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise ValueError(f"detector input must be [1, 3, H, W] with a fixed H and W, got {shape}")
        if model_input.type != "tensor(float)":
            raise ValueError(f"detector input must be float32, got {model_input.type}")
        self.input_name = model_input.name
        self.input_size: tuple[int, int] = (shape[3], shape[2])
        self.person_class = person_class
        self.nms_iou = nms_iou
        self.decoded = decoded
        # One run on a blank input warms the session up and reveals the real output shape (exports often leave
        # it symbolic); decoding it checks that the output fits the layout and the person class.
        blank = np.zeros((1, 3, shape[2], shape[3]), np.float32)
        output = self.session.run(None, {self.input_name: blank})[0]
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.default_threshold = float(metadata.get(THRESHOLD_KEY, UNCALIBRATED_THRESHOLD))
        if layout == "auto" and metadata.get("effpose.kind") == PERSON_DETECTOR_KIND:
            layout = "effpose"
        self.layout: Layout = guess_layout(output.shape, self.input_size) if layout == "auto" else layout
        if decoded and self.layout != "yolox":
            raise ValueError("decoded=True only applies to the yolox layout")
        self._decode(output)

    def _decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.layout == "yolox":
            return decode_yolox(output, self.input_size, self.person_class, self.decoded)
        if self.layout == "effpose":
            return decode_boxes(output)
        return decode_yolov8(output, self.person_class)

    def detect(self, image: np.ndarray, score_threshold: float, max_detections: int) -> list[Detection]:
        """People in a BGR uint8 image: boxes in image pixels, best first (see :class:`PersonDetector`)."""
        size = image_size(image)
        tensor, placement = preprocess(image, self.input_size, self.layout)
        boxes, scores = self._decode(self.session.run(None, {self.input_name: tensor})[0])
        confident = scores >= score_threshold
        boxes, scores = boxes[confident], scores[confident]
        keep = nms(boxes, scores, self.nms_iou)
        return to_detections(placement.to_image(boxes[keep]), scores[keep], size, max_detections)
