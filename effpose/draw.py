"""Drawing of pose estimates on BGR images (OpenCV)."""

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from effpose.keypoints import KEYPOINT_NAMES, SKELETON

Color = tuple[int, int, int]

#: BGR colours: the person's left side, right side and centre (face / torso links), and the box.
LEFT_COLOR: Color = (255, 128, 0)
RIGHT_COLOR: Color = (0, 128, 255)
CENTER_COLOR: Color = (0, 220, 0)
BOX_COLOR: Color = (0, 255, 255)


def _side(index: int) -> str:
    name = KEYPOINT_NAMES[index]
    return name.split("_", 1)[0] if name.startswith(("left_", "right_")) else "center"


def _color(*indices: int) -> Color:
    sides = {_side(i) for i in indices}
    if sides == {"left"}:
        return LEFT_COLOR
    if sides == {"right"}:
        return RIGHT_COLOR
    return CENTER_COLOR


def _point(xy: Sequence[float] | np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def _draw_person(
    canvas: np.ndarray, person: Mapping[str, Any], threshold: float, thickness: int, radius: int
) -> None:
    x1, y1, x2, y2 = np.asarray(person["box"], dtype=np.float64)
    cv2.rectangle(canvas, _point((x1, y1)), _point((x2, y2)), BOX_COLOR, thickness, cv2.LINE_AA)
    keypoints = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
    if len(keypoints) != len(KEYPOINT_NAMES):
        raise ValueError(f"expected {len(KEYPOINT_NAMES)} keypoints, got {len(keypoints)}")
    visible = np.all(np.isfinite(keypoints), axis=1) & (keypoints[:, 2] > threshold)
    for i, j in SKELETON:
        if visible[i] and visible[j]:
            cv2.line(canvas, _point(keypoints[i]), _point(keypoints[j]), _color(i, j), thickness, cv2.LINE_AA)
    for index in np.flatnonzero(visible):
        cv2.circle(canvas, _point(keypoints[index]), radius, _color(index), -1, cv2.LINE_AA)


def draw_poses(
    image: np.ndarray, persons: Sequence[Mapping[str, Any]], keypoint_threshold: float = 0.3
) -> np.ndarray:
    """Return a copy of a BGR uint8 image with each person's box, limbs and keypoints drawn.

    Each person is a mapping with ``"box"``: [x1, y1, x2, y2] and ``"keypoints"``: 17 COCO
    [x, y, score] rows, all in image pixels. Only keypoints with score > ``keypoint_threshold``
    (and limbs joining two of them) are drawn; left, right and centre parts get different colours.
    Line widths and point sizes grow with the image size. The input array is not modified.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    canvas = image.copy()
    scale = max(image.shape[:2]) / 640.0
    thickness = max(1, round(2 * scale))
    radius = max(2, round(3 * scale))
    for person in persons:
        _draw_person(canvas, person, keypoint_threshold, thickness, radius)
    return canvas
