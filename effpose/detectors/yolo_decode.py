"""Decoding of detector outputs into person boxes in model-input pixels (pure numpy, no model needed).

Three layouts are understood:

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

from typing import Literal

import numpy as np

Layout = Literal["yolox", "yolov8", "effpose"]
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
