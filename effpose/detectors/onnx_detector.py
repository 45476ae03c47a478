"""Person detection with a detector exported to ONNX, on ONNX Runtime (no torch): letterbox the image onto the
model's input, run it, decode the output into person boxes, merge them by NMS and map them back to image pixels.

Three output layouts are understood:

* ``yolox`` (official Megvii export): output (1, A, 5 + C), rows ``cx, cy, w, h, objectness, C class scores``
  over the anchor points of strides 8, 16 and 32 (row-major grids, stride 8 first). Raw exports hold grid
  offsets and log sizes (``xy = (o + grid) * stride``, ``wh = exp(o) * stride``); ``decoded`` exports (YOLOX's
  ``decode_in_inference``) already hold pixels. Score = objectness * class score.
* ``yolov8`` (ultralytics export): output (1, 4 + C, A), columns ``cx, cy, w, h, C class scores`` in pixels,
  no objectness. Score = class score.
* ``effpose`` (the project's own person detector, decoding inside the graph): output (1, K, 5), rows
  ``x1, y1, x2, y2, score`` in pixels, best first. Its pre-processing is YOLOv8's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from effpose.detectors.base import Detection, image_size, to_detections
from effpose.onnx_session import create_session
from effpose.processing.boxes import nms

LAYOUTS: tuple[str, ...] = ("auto", "yolox", "yolov8", "effpose")
#: ONNX metadata value of ``effpose.kind`` that marks the project's own person detector (layout ``effpose``).
PERSON_DETECTOR_KIND = "person_detector"
#: ONNX metadata key of the calibrated score threshold (``effpose calibrate-detector --write``).
THRESHOLD_KEY = "effpose.score_threshold"
#: The score threshold of a model that carries no calibrated one.
UNCALIBRATED_THRESHOLD = 0.4

Layout = Literal["yolox", "yolov8", "effpose"]
#: Anchor strides of the YOLOX heads.
STRIDES: tuple[int, ...] = (8, 16, 32)


def anchor_points(size: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells (A, 2) as (x, y) and their strides (A,) for a model input of ``size`` (width, height)."""
    grids, grid_strides = [], []
    for stride in strides:
        ys, xs = np.mgrid[0 : size[1] // stride, 0 : size[0] // stride]
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        grid_strides.append(np.full(xs.size, stride))
    return np.concatenate(grids).astype(np.float64), np.concatenate(grid_strides).astype(np.float64)


def guess_layout(output_shape: tuple[int, ...], size: tuple[int, int]) -> Layout:
    """Tell the layout from an output shape: the axis holding the anchor count of ``size`` (width, height)
    is the anchor axis; (1, K, 5) rows are already boxes. Raises ValueError when the shape fits no layout or two."""
    anchors = len(anchor_points(size)[1])
    fits = []
    if len(output_shape) == 3 and output_shape[0] == 1:
        if output_shape[1] == anchors and output_shape[2] >= 6:
            fits.append("yolox")
        if output_shape[2] == anchors and output_shape[1] >= 5:
            fits.append("yolov8")
        if output_shape[2] == 5 and output_shape[1] != anchors:
            fits.append("effpose")
    if len(fits) != 1:
        raise ValueError(
            f"cannot tell the detector layout from output shape {list(output_shape)} (input {size[0]}x{size[1]} has "
            f"{anchors} anchor points; expected [1, {anchors}, 5+C] for yolox or [1, 4+C, {anchors}] for yolov8): "
            "pass layout='yolox', 'yolov8' or 'effpose'"
        )
    return fits[0]


def _check_output(output: np.ndarray, channel_axis: int, min_channels: int, layout: str, expected: str) -> None:
    if output.ndim != 3 or output.shape[0] != 1 or output.shape[channel_axis] < min_channels:
        raise ValueError(f"unexpected {layout} detector output shape {list(output.shape)}, expected {expected}")


def _centre_to_corners(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def decode_yolox(
    output: np.ndarray, size: tuple[int, int], person_class: int = 0, decoded: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (A, 4) xyxy in model-input pixels and scores (A,) from a YOLOX output (1, A, 5 + C).

    ``size`` is the model input (width, height); it fixes the anchor grid of a raw (not ``decoded``) output.
    """
    output = np.asarray(output)
    _check_output(output, 2, 6 + person_class, "yolox", f"[1, A, 5+C] with C > {person_class}")
    rows = output[0].astype(np.float64)
    xywh = rows[:, :4]
    if not decoded:
        grid, strides = anchor_points(size)
        if len(rows) != len(grid):
            raise ValueError(
                f"yolox output has {len(rows)} anchors but a {size[0]}x{size[1]} input has {len(grid)} for strides "
                f"{STRIDES}; is the model already decoded (decoded=True)?"
            )
        xywh = np.concatenate([(xywh[:, :2] + grid) * strides[:, None], np.exp(xywh[:, 2:4]) * strides[:, None]], 1)
    return _centre_to_corners(xywh), rows[:, 4] * rows[:, 5 + person_class]


def decode_yolov8(output: np.ndarray, person_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (A, 4) xyxy in model-input pixels and scores (A,) from a YOLOv8 output (1, 4 + C, A)."""
    output = np.asarray(output)
    _check_output(output, 1, 5 + person_class, "yolov8", f"[1, 4+C, A] with C > {person_class}")
    columns = output[0].T.astype(np.float64)
    return _centre_to_corners(columns[:, :4]), columns[:, 4 + person_class]


def decode_boxes(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (K, 4) xyxy in model-input pixels and scores (K,) from an ``effpose`` output (1, K, 5)."""
    output = np.asarray(output)
    _check_output(output, 2, 5, "effpose", "[1, K, 5] rows of x1, y1, x2, y2, score")
    rows = output[0].astype(np.float64)
    return rows[:, :4], rows[:, 4]


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed on the model input: input = image * scale + pad, per axis."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) xyxy boxes from model-input pixels back to original-image pixels (float64, unclipped)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        return (boxes - offset) / scale


def letterbox(
    image: np.ndarray, size: tuple[int, int], centered: bool, pad_value: int = 114
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (H, W, 3) to fit ``size`` (width, height) keeping its aspect ratio, and pad with ``pad_value``.

    ``centered=False`` puts the image at the top-left corner (YOLOX), ``centered=True`` in the middle with the odd
    pixel of padding on the right/bottom (ultralytics). Returns the padded image and the placement; the scales
    are the exact per-axis ratios of the rounded resized size, so ``Letterbox.to_image`` undoes the resize.
    """
    out_w, out_h = size
    height, width = image.shape[:2]
    ratio = min(out_w / width, out_h / height)
    new_w = min(out_w, max(1, round(width * ratio)))
    new_h = min(out_h, max(1, round(height * ratio)))
    pad_x, pad_y = ((out_w - new_w) // 2, (out_h - new_h) // 2) if centered else (0, 0)
    canvas = np.full((out_h, out_w, image.shape[2]), pad_value, dtype=image.dtype)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_LINEAR
    )
    return canvas, Letterbox(new_w / width, new_h / height, pad_x, pad_y)


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
    see the module docstring.

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
