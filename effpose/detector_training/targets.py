"""CenterNet training targets for one canvas: centre heatmap, log box size and sub-cell offset maps.

Cell (i, j) of the stride-``s`` grid covers canvas pixels [s*j, s*j + s) x [s*i, s*i + s). A box with centre
(cx, cy) (edge coordinates) is assigned to the cell (floor(cx / s), floor(cy / s)); its targets there are the
offset (cx / s - j, cy / s - i) in [0, 1) and the size log(w / s), log(h / s); the heatmap holds a Gaussian of
peak exactly 1 at that cell with CenterNet's radius (objects-as-points, ``gaussian_radius`` at min overlap 0.7,
sigma = diameter / 6), the maximum where Gaussians overlap. Decoding (``effpose.detector_training.model``) inverts this:
centre = (cell + offset) * s, size = exp(log size) * s.
"""

from __future__ import annotations

import math

import numpy as np

from effpose.data.dataset import gaussian_heatmaps

STRIDE = 4


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


def encode_targets(boxes: np.ndarray, canvas: int, stride: int = STRIDE) -> dict[str, np.ndarray]:
    """Targets of (M, 4) xyxy boxes on an S x S canvas, as float32 maps of the (S / stride)^2 grid.

    ``heatmap`` (1, h, w), ``size`` (2, h, w) log(w / stride), log(h / stride), ``offset`` (2, h, w) and ``mask``
    (1, h, w): 1 at the cells that carry a box. Larger boxes are written first, so where two centres share a
    cell the smaller box owns its size and offset.
    """
    grid = canvas // stride
    heatmap = np.zeros((1, grid, grid), np.float32)
    size = np.zeros((2, grid, grid), np.float32)
    offset = np.zeros((2, grid, grid), np.float32)
    mask = np.zeros((1, grid, grid), np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / stride
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for index in np.argsort(-(widths * heights), kind="stable"):
        width, height = widths[index], heights[index]
        if width <= 0 or height <= 0:
            continue
        centre = (boxes[index, :2] + boxes[index, 2:]) / 2
        cell = np.clip(np.floor(centre), 0, grid - 1).astype(np.int64)
        sigma = (2 * max(0, int(gaussian_radius(height, width))) + 1) / 6
        np.maximum(heatmap[0], gaussian_heatmaps(cell[None].astype(np.float32), (grid, grid), sigma)[0],
                   out=heatmap[0])
        col, row = cell
        size[:, row, col] = np.log([width, height])
        offset[:, row, col] = centre - cell
        mask[0, row, col] = 1.0
    return {"heatmap": heatmap, "size": size, "offset": offset, "mask": mask}
