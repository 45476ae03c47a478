"""Affine crops between image pixels and model-input pixels.

Conventions (HRNet / SimpleBaseline): pixel centres lie at integer coordinates, points are (x, y),
sizes are (width, height), angles are in degrees. A crop is described by a box centre and size in
image pixels plus a rotation; it is mapped onto the model input so that the centre lands on
(out_w / 2, out_h / 2).
"""

from collections.abc import Sequence

import cv2
import numpy as np

from effpose.contract import DEFAULT_INPUT_SIZE, DEFAULT_PADDING, INPUT_MEAN, INPUT_STD


def _positive_finite(value: float, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _validate_box(box_xyxy: Sequence[float] | np.ndarray) -> np.ndarray:
    box = np.asarray(box_xyxy, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box must be (x1, y1, x2, y2), got shape {box.shape}")
    if not np.all(np.isfinite(box)):
        raise ValueError(f"box must contain finite numbers, got {box.tolist()}")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box must have x2 > x1 and y2 > y1, got {box.tolist()}")
    return box


def box_to_center_size(
    box_xyxy: Sequence[float] | np.ndarray, aspect_ratio: float, padding: float = DEFAULT_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a box (x1, y1, x2, y2) in image pixels into a crop centre and (w, h) size.

    The box is grown (never shrunk) about its centre to the aspect ratio ``w / h`` of the model
    input, then both sides are multiplied by ``padding``. Returns float64 arrays of shape (2,).
    Raises ValueError for non-finite or empty boxes and for a non-positive ratio or padding.
    """
    x1, y1, x2, y2 = _validate_box(box_xyxy)
    aspect_ratio = _positive_finite(aspect_ratio, "aspect_ratio")
    padding = _positive_finite(padding, "padding")
    w, h = x2 - x1, y2 - y1
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    return center, np.array([w, h]) * padding


def get_affine_transform(
    center: Sequence[float] | np.ndarray,
    size: Sequence[float] | np.ndarray,
    output_size: Sequence[float] | np.ndarray,
    rotation_deg: float = 0.0,
    inverse: bool = False,
) -> np.ndarray:
    """Return the 2x3 float64 matrix mapping the box (center, size) in image pixels onto output_size.

    Closed form of HRNet's three-point ``get_affine_transform``: the box centre goes to
    (out_w / 2, out_h / 2), x is scaled by out_w / w and y by out_h / h (one uniform scale when the
    box already has the output's aspect ratio, as HRNet assumes). ``rotation_deg`` turns the sampled
    box clockwise on screen (y points down), so its content appears turned counter-clockwise in the
    output, exactly as in HRNet. ``inverse=True`` gives the output -> image matrix instead.
    """
    cx, cy = np.asarray(center, dtype=np.float64)
    w, h = np.asarray(size, dtype=np.float64)
    out_w, out_h = np.asarray(output_size, dtype=np.float64)
    _positive_finite(w, "size width")
    _positive_finite(h, "size height")
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    linear = np.array([[cos, sin], [-sin, cos]]) * np.array([[out_w / w], [out_h / h]])
    translation = np.array([out_w / 2.0, out_h / 2.0]) - linear @ np.array([cx, cy])
    matrix = np.hstack([linear, translation[:, None]])
    return invert_affine(matrix) if inverse else matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Invert one 2x3 affine matrix or a stack of them (..., 2, 3); returns float64 of the same shape."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"affine matrices must have shape (..., 2, 3), got {matrix.shape}")
    linear_inv = np.linalg.inv(matrix[..., :2])
    translation = -(linear_inv @ matrix[..., 2:])
    return np.concatenate([linear_inv, translation], axis=-1)


def transform_points(points: Sequence[float] | np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points of shape (..., 2); returns float64 points of the same shape."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {points.shape}")
    if matrix.shape != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3), got {matrix.shape}")
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_person(
    image: np.ndarray,
    box_xyxy: Sequence[float] | np.ndarray,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    padding: float = DEFAULT_PADDING,
    rotation_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a person box out of an (H, W, 3) uint8 image for a model input of size (width, height).

    Returns the crop, shape (input_size[1], input_size[0], 3), sampled with bilinear interpolation
    and black outside the image, and the 2x3 image -> crop matrix (see ``get_affine_transform``).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    out_w, out_h = int(input_size[0]), int(input_size[1])
    center, size = box_to_center_size(box_xyxy, out_w / out_h, padding)
    matrix = get_affine_transform(center, size, (out_w, out_h), rotation_deg)
    crop = cv2.warpAffine(
        image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return crop, matrix


def crop_to_tensor(
    crops: Sequence[np.ndarray] | np.ndarray,
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
) -> np.ndarray:
    """Stack BGR uint8 crops (H, W, 3) into the model's float32 NCHW input.

    Channels are reordered BGR -> RGB, scaled to [0, 1] and normalised as (x - mean) / std with the
    ImageNet statistics ``INPUT_MEAN`` / ``INPUT_STD`` (RGB order): this is the model's input contract.
    """
    if len(crops) == 0:
        raise ValueError("crop_to_tensor needs at least one crop")
    batch = np.stack([np.asarray(crop) for crop in crops])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"crops must be (H, W, 3) each, got stacked shape {batch.shape}")
    rgb = batch[..., ::-1].astype(np.float32) / np.float32(255.0)
    normalised = (rgb - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))
