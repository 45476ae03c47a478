"""CenterNet training targets for one canvas: centre heatmap, log box size and sub-cell offset maps.

Cell (i, j) of the stride-``s`` grid covers canvas pixels [s*j, s*j + s) x [s*i, s*i + s). A box with centre
(cx, cy) (edge coordinates) is assigned to the cell (floor(cx / s), floor(cy / s)); its targets there are the
offset (cx / s - j, cy / s - i) in [0, 1) and the size log(w / s), log(h / s); the heatmap holds a Gaussian of
peak exactly 1 at that cell with CenterNet's radius (objects-as-points, ``gaussian_radius`` at min overlap 0.7,
sigma = diameter / 6), the maximum where Gaussians overlap. Decoding (``effpose.detector_training.model``) inverts this:
centre = (cell + offset) * s, size = exp(log size) * s.

Regression cells: CenterNet learns size and offset only at the centre cell (``"centre"``). With ``"gaussian"``
(TTFNet's Gaussian-weighted regression samples) every cell where the box's centre Gaussian is at least
:data:`MIN_REGRESSION_WEIGHT` carries the box's size and its own offset ``centre / s - cell`` (outside [0, 1)
off the centre), weighted by the Gaussian's value there; a cell two boxes' Gaussians share belongs to the higher one
(the smaller box on ties). A peak that lands next to the centre then still decodes the right box, and each person
gives the regression heads many samples instead of one.

Soft targets (a teacher's detections, ``scores``): each box's Gaussian peaks at its score instead of 1 and its
regression weights are scaled by the score, so an uncertain detection teaches less than a sure one.
"""

from __future__ import annotations

import math

import numpy as np

from effpose.data.dataset import gaussian_heatmaps

STRIDE = 4
REGRESSION_CELLS: tuple[str, ...] = ("centre", "gaussian")
MIN_REGRESSION_WEIGHT = 0.05  # Gaussian value below which a cell carries no regression target ("gaussian")


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (in grid cells) within which a shifted box still has IoU >= ``min_overlap`` with the
    box of ``height`` x ``width`` cells: the smallest root of CornerNet's three corner cases."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_targets(boxes: np.ndarray, canvas: int, stride: int = STRIDE, regression_cells: str = "centre",
                   scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Targets of (M, 4) xyxy boxes on an S x S canvas, as float32 maps of the (S / stride)^2 grid.

    ``heatmap`` (1, h, w), ``size`` (2, h, w) log(w / stride), log(h / stride), ``offset`` (2, h, w) and ``mask``
    (1, h, w): the regression weight of each cell, 1 at box centres, 0 where no box is regressed (``"gaussian"``
    ``regression_cells``: the Gaussian's value around each centre, see the module docstring). Larger boxes are
    written first, so where two centres share a cell the smaller box owns its size and offset. With ``scores`` (M,)
    in (0, 1] each box's heatmap and regression weights are scaled by its score (soft targets).
    """
    if regression_cells not in REGRESSION_CELLS:
        raise ValueError(f"regression_cells must be one of {REGRESSION_CELLS}, got {regression_cells!r}")
    grid = canvas // stride
    heatmap = np.zeros((1, grid, grid), np.float32)
    size = np.zeros((2, grid, grid), np.float32)
    offset = np.zeros((2, grid, grid), np.float32)
    mask = np.zeros((1, grid, grid), np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / stride
    scores = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(scores)} scores for {len(boxes)} boxes")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for index in np.argsort(-(widths * heights), kind="stable"):
        width, height = widths[index], heights[index]
        if width <= 0 or height <= 0:
            continue
        centre = (boxes[index, :2] + boxes[index, 2:]) / 2
        cell = np.clip(np.floor(centre), 0, grid - 1).astype(np.int64)
        sigma = (2 * max(0, int(gaussian_radius(height, width))) + 1) / 6
        gaussian = gaussian_heatmaps(cell[None].astype(np.float32), (grid, grid), sigma)[0] * scores[index]
        np.maximum(heatmap[0], gaussian, out=heatmap[0])
        if regression_cells == "gaussian":
            rows, cols = np.nonzero((gaussian >= MIN_REGRESSION_WEIGHT * scores[index]) & (gaussian >= mask[0]))
            weights = gaussian[rows, cols]
        else:
            rows, cols, weights = cell[1:], cell[:1], scores[index : index + 1]
        size[:, rows, cols] = np.log([[width], [height]])
        offset[0, rows, cols] = centre[0] - cols
        offset[1, rows, cols] = centre[1] - rows
        mask[0, rows, cols] = weights
    return {"heatmap": heatmap, "size": size, "offset": offset, "mask": mask}
