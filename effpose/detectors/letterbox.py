"""Letterbox resizing (keep the aspect ratio, pad the rest) and its inverse for boxes."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
