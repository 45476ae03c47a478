"""Detector training images: one image (or a 2x2 mosaic of four) placed on the S x S letterbox canvas.

Geometry uses continuous "edge" coordinates (a pixel spans [i, i + 1), COCO boxes are edges), in which placing an
image is ``x' = scale * x + offset`` per axis, mirrored first when flipped; ``cv2.warpAffine`` (pixel centres at
integers) gets the same map shifted by half a pixel. Without augmentation the placement is exactly the inference
letterbox (``effpose.detectors.letterbox`` centred, pad 114). With it, the image is scaled by U(scale_range)
around the letterbox scale and put at a uniformly random position: smaller than the canvas it moves around
(translation), larger it is cropped. Mosaic splits the canvas at a random centre into four tiles, each holding a
different image placed the same way within its tile. Copy-paste puts persons cut out of other images (their boxes,
with feathered edges: the data has no masks) on the canvas at random sizes and places, so that people appear in
scenes they were never photographed in. Mixup (YOLOX's) blends the canvas half and half with a second canvas of
other images, drawn the same way, and keeps the boxes of both. Boxes follow the pixels; a box keeps only
its visible part and is dropped when that is smaller than ``min_box_size`` or than ``min_visible`` of the whole box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from effpose.data.dataset import check_fractions, jitter_colour
from effpose.processing.boxes import box_coverage

PAD_VALUE = 114  # the letterbox padding of the inference path


@dataclass(frozen=True)
class DetectionAugment:
    """Augmentation amounts (the defaults are the training recipe; :meth:`none` is the inference letterbox).

    ``scale_range``: the letterbox scale of a tile is multiplied by U(low, high). ``flip_prob``: horizontal
    mirror per image. ``mosaic_prob``: probability that a sample is a 2x2 mosaic of four images.
    ``paste_prob``: probability that 1 to ``paste_count`` persons (box crops of random items) are pasted on a sample,
    each ``paste_height`` (low, high) canvas pixels tall (log-uniform; a crop is enlarged at most twice), flipped and
    colour-jittered like an image; a box a paste covers beyond ``min_visible`` is dropped.
    ``mixup_prob``: probability that a sample is the half-and-half blend of two such canvases, with both box sets.
    ``brightness`` / ``contrast`` / ``saturation``: factors U(1 -/+ value) per image (``jitter_colour``).
    ``min_box_size`` (canvas pixels) and ``min_visible`` (fraction of the box area): what a cropped box must keep.
    """

    scale_range: tuple[float, float] = (0.5, 1.5)
    flip_prob: float = 0.5
    mosaic_prob: float = 0.5
    paste_prob: float = 0.0
    paste_count: int = 3
    paste_height: tuple[float, float] = (24.0, 160.0)
    mixup_prob: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    min_box_size: float = 2.0
    min_visible: float = 0.25

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        check_fractions(self, ("flip_prob", "mosaic_prob", "paste_prob", "mixup_prob", "min_visible"))
        if self.paste_count < 1 or not 0 < self.paste_height[0] <= self.paste_height[1]:
            raise ValueError(f"paste_count must be >= 1 and paste_height (low, high) with 0 < low <= high, got "
                             f"{self.paste_count} and {self.paste_height}")
        check_fractions(self, ("brightness", "contrast", "saturation"), below_one=True)
        if self.min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size}")

    @classmethod
    def none(cls) -> DetectionAugment:
        """No augmentation: every image is letterboxed exactly as at inference."""
        return cls(scale_range=(1.0, 1.0), flip_prob=0.0, mosaic_prob=0.0, paste_prob=0.0, mixup_prob=0.0,
                   brightness=0.0, contrast=0.0, saturation=0.0)

    @property
    def enabled(self) -> bool:
        """Whether any random draw is needed."""
        return self != DetectionAugment.none()


@dataclass(frozen=True)
class Placement:
    """Where one image lands on the canvas: ``x' = scale * x + offset`` (mirrored x first when ``flip``), seen
    only through ``tile`` (x1, y1, x2, y2, canvas pixels), with its colour factors (1.0 = unchanged)."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    tile: tuple[int, int, int, int]
    flip: bool = False
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def matrix(self, image_width: int) -> np.ndarray:
        """The 2x3 image -> canvas map in edge coordinates."""
        (sx, sy), (dx, dy) = self.scale, self.offset
        if self.flip:
            return np.array([[-sx, 0.0, sx * image_width + dx], [0.0, sy, dy]])
        return np.array([[sx, 0.0, dx], [0.0, sy, dy]])

    def visible(self, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Canvas pixels (x1, y1, x2, y2) covered by the image within the tile (empty: x2 <= x1 or y2 <= y1)."""
        corners = transform_boxes(np.array([[0.0, 0.0, *image_size]]), self.matrix(image_size[0]))[0]
        x1, y1, x2, y2 = self.tile
        return (max(x1, int(np.ceil(corners[0]))), max(y1, int(np.ceil(corners[1]))),
                min(x2, int(np.floor(corners[2]))), min(y2, int(np.floor(corners[3]))))


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (M, 4) xyxy boxes by an axis-aligned 2x3 edge-coordinate matrix (a mirror swaps x1 and x2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs = boxes[:, [0, 2]] * matrix[0, 0] + matrix[0, 2]
    ys = boxes[:, [1, 3]] * matrix[1, 1] + matrix[1, 2]
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def letterbox_placement(image_size: tuple[int, int], canvas: int) -> Placement:
    """The inference letterbox of an image of ``image_size`` (width, height): centred, aspect kept, rounded sizes."""
    width, height = image_size
    ratio = min(canvas / width, canvas / height)
    new_w, new_h = min(canvas, max(1, round(width * ratio))), min(canvas, max(1, round(height * ratio)))
    return Placement(scale=(new_w / width, new_h / height), offset=((canvas - new_w) // 2, (canvas - new_h) // 2),
                     tile=(0, 0, canvas, canvas))


def random_placement(
    image_size: tuple[int, int], tile: tuple[int, int, int, int], augment: DetectionAugment, rng: np.random.Generator
) -> Placement:
    """A random scale (around the scale that fits the tile), position, flip and colour for one image."""
    width, height = image_size
    tile_w, tile_h = tile[2] - tile[0], tile[3] - tile[1]
    scale = min(tile_w / width, tile_h / height) * rng.uniform(*augment.scale_range)
    new_w, new_h = width * scale, height * scale
    dx = tile[0] + rng.uniform(min(0.0, tile_w - new_w), max(0.0, tile_w - new_w))
    dy = tile[1] + rng.uniform(min(0.0, tile_h - new_h), max(0.0, tile_h - new_h))
    colour = tuple(float(rng.uniform(1 - amount, 1 + amount))
                   for amount in (augment.brightness, augment.contrast, augment.saturation))
    return Placement(scale=(scale, scale), offset=(dx, dy), tile=tile, flip=bool(rng.random() < augment.flip_prob),
                     colour=colour)


def mosaic_tiles(canvas: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Four tiles (top-left, top-right, bottom-left, bottom-right) around a centre drawn in the middle half."""
    cx, cy = (int(rng.integers(canvas // 4, 3 * canvas // 4 + 1)) for _ in range(2))
    return [(0, 0, cx, cy), (cx, 0, canvas, cy), (0, cy, cx, canvas), (cx, cy, canvas, canvas)]


def place(canvas: np.ndarray, image: np.ndarray, boxes: np.ndarray, placement: Placement,
          augment: DetectionAugment) -> np.ndarray:
    """Draw ``image`` (BGR uint8) into ``canvas`` (float32 BGR, S x S) and return its boxes on the canvas.

    Boxes are clipped to the visible part of the image and filtered by ``augment.min_box_size`` / ``min_visible``.
    """
    x1, y1, x2, y2 = placement.tile
    if x2 <= x1 or y2 <= y1:
        return np.zeros((0, 4))
    height, width = image.shape[:2]
    matrix = placement.matrix(width)
    # edge -> pixel-centre convention, then relative to the tile: warpAffine fills exactly the tile
    pixel = matrix.copy()
    pixel[:, 2] += matrix[:, :2].sum(axis=1) * 0.5 - 0.5 - np.array([x1, y1])
    canvas[y1:y2, x1:x2] = cv2.warpAffine(image, pixel, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    vx1, vy1, vx2, vy2 = placement.visible((width, height))
    if placement.colour != (1.0, 1.0, 1.0) and vx2 > vx1 and vy2 > vy1:
        canvas[vy1:vy2, vx1:vx2] = jitter_colour(canvas[vy1:vy2, vx1:vx2], *placement.colour)
    placed = transform_boxes(boxes, matrix)
    clipped = np.clip(placed, [vx1, vy1, vx1, vy1], [vx2, vy2, vx2, vy2])
    size = clipped[:, 2:] - clipped[:, :2]
    area = np.prod(placed[:, 2:] - placed[:, :2], axis=1)
    keep = np.all(size >= max(augment.min_box_size, 1e-6), axis=1) & (
        np.prod(size, axis=1) >= augment.min_visible * area)
    return clipped[keep]


def compose(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], placements: Sequence[Placement],
            canvas: int, augment: DetectionAugment) -> tuple[np.ndarray, np.ndarray]:
    """Place each image on a fresh S x S canvas (float32 BGR, padded with 114); returns it and all boxes (M, 4)."""
    image = np.full((canvas, canvas, 3), PAD_VALUE, dtype=np.float32)
    placed = [place(image, item, item_boxes, placement, augment)
              for item, item_boxes, placement in zip(images, boxes, placements)]
    return image, np.concatenate(placed).astype(np.float32) if placed else np.zeros((0, 4), np.float32)


PASTE_FEATHER = 0.1  # a pasted crop fades in over this fraction of its shorter side


def box_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The pixels of ``box`` (x1, y1, x2, y2, edge coordinates, rounded outwards and clipped to the image), or
    None when that leaves no pixel."""
    height, width = image.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    return image[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else None


def feather_mask(height: int, width: int) -> np.ndarray:
    """(H, W, 1) float32 opacity: 1 inside, falling linearly to 0 at the border over PASTE_FEATHER of the shorter
    side."""
    ramp = max(1.0, PASTE_FEATHER * min(height, width))
    ys = np.minimum(np.arange(height) + 0.5, height - np.arange(height) - 0.5) / ramp
    xs = np.minimum(np.arange(width) + 0.5, width - np.arange(width) - 0.5) / ramp
    return np.clip(np.minimum(ys[:, None], xs[None, :]), 0.0, 1.0).astype(np.float32)[..., None]


def paste_person(canvas: np.ndarray, boxes: np.ndarray, crop: np.ndarray, augment: DetectionAugment,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``crop`` (a person's box crop, BGR uint8) on ``canvas`` (float32 BGR, S x S, changed in place) at a
    random size (``augment.paste_height``, at most twice the crop's height, the whole crop inside the canvas),
    place, flip and colour; returns the canvas and its boxes: those the crop covers beyond ``min_visible`` dropped,
    the crop's own appended (unless under ``min_box_size``)."""
    size = canvas.shape[0]
    crop_h, crop_w = crop.shape[:2]
    low, high = np.log(augment.paste_height)
    height = min(float(np.exp(rng.uniform(low, high))), 2.0 * crop_h)
    scale = min(height / crop_h, size / crop_h, size / crop_w)
    new_w, new_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    x, y = int(rng.integers(0, size - new_w + 1)), int(rng.integers(0, size - new_h + 1))
    flip = bool(rng.random() < augment.flip_prob)
    colour = [float(rng.uniform(1 - amount, 1 + amount))
              for amount in (augment.brightness, augment.contrast, augment.saturation)]
    if min(new_w, new_h) < augment.min_box_size:
        return canvas, boxes
    patch = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    patch = jitter_colour(patch[:, ::-1] if flip else patch, *colour)
    alpha = feather_mask(new_h, new_w)
    region = canvas[y:y + new_h, x:x + new_w]
    region += alpha * (patch - region)
    pasted = np.array([[x, y, x + new_w, y + new_h]], np.float32)
    keep = 1.0 - box_coverage(boxes, pasted)[:, 0] >= augment.min_visible
    return canvas, np.concatenate([boxes[keep], pasted]).astype(np.float32)
