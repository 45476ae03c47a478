"""Heatmap decoding, flip-test merging and mapping back to image pixels.

Conventions (HRNet / SimpleBaseline): pixel centres lie at integer coordinates; heatmap pixel
(hx, hy) stands for model-input pixel (stride * hx, stride * hy); points are (x, y). Heatmaps are
arrays of shape (N, J, h, w): N crops, J keypoints.
"""

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from effpose.contract import DEFAULT_DARK_KERNEL, DEFAULT_REFINEMENT, Refinement, check_dark_kernel
from effpose.keypoints import flip_order
from effpose.processing.affine import invert_affine

DecodeMethod = Refinement
FlipShift = Literal["exact", "pixel"]

_LOG_FLOOR = 1e-10


def _as_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (N, J, h, w), got {heatmaps.shape}")
    return heatmaps


def _argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer (x, y) of each map's maximum and the maximum itself."""
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, h * w)
    index = flat.argmax(axis=-1)
    scores = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    return index % w, index // w, scores


def _sample(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values maps[n, j, y[n, j], x[n, j]] (indices clipped into the map)."""
    n, j, h, w = maps.shape
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    return maps[np.arange(n)[:, None], np.arange(j)[None, :], y, x]


def _quarter_offsets(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SimpleBaseline rule: 0.25 px toward the higher neighbour, per axis, none on the border."""
    _, _, h, w = heatmaps.shape
    dx = _sample(heatmaps, x + 1, y) - _sample(heatmaps, x - 1, y)
    dy = _sample(heatmaps, x, y + 1) - _sample(heatmaps, x, y - 1)
    off_x = np.where((x > 0) & (x < w - 1), 0.25 * np.sign(dx), 0.0)
    off_y = np.where((y > 0) & (y < h - 1), 0.25 * np.sign(dy), 0.0)
    return np.stack([off_x, off_y], axis=-1)


def _blur_keep_max(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK modulation: zero-padded Gaussian blur (OpenCV's default sigma), rescaled to the old maximum."""
    radius = kernel // 2
    taps = cv2.getGaussianKernel(kernel, 0)
    n, j, h, w = heatmaps.shape
    if heatmaps.size == 0:
        return heatmaps
    # All maps stacked into one tall image; each map's own zero padding keeps its neighbours out.
    padded = np.pad(heatmaps, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    tall = padded.reshape(n * j * (h + 2 * radius), w + 2 * radius)
    filtered = cv2.sepFilter2D(tall, -1, taps, taps, borderType=cv2.BORDER_CONSTANT)
    blurred = filtered.reshape(padded.shape)[..., radius : radius + h, radius : radius + w]
    old_max = heatmaps.max(axis=(-2, -1), keepdims=True)
    new_max = blurred.max(axis=(-2, -1), keepdims=True)
    ratio = np.divide(old_max, new_max, out=np.zeros_like(old_max), where=new_max > 0)
    return blurred * ratio


def _dark_offsets(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray, kernel: int) -> np.ndarray:
    """DARK: one Newton step on the blurred log-heatmap at the argmax.

    Finite differences as in the reference code (central gradient, step-2 second derivatives).
    The step is taken only at least 2 px from the border and where the Hessian is negative
    definite (a true local maximum); elsewhere the offset is 0.
    """
    _, _, h, w = heatmaps.shape
    logmap = np.log(np.maximum(_blur_keep_max(heatmaps, kernel), _LOG_FLOOR))

    def at(ox: int, oy: int) -> np.ndarray:
        return _sample(logmap, x + ox, y + oy)

    centre = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    usable = (x >= 2) & (x <= w - 3) & (y >= 2) & (y <= h - 3) & (dxx < 0) & (det > 0)
    safe_det = np.where(usable, det, 1.0)
    off_x = -(dyy * dx - dxy * dy) / safe_det
    off_y = -(dxx * dy - dxy * dx) / safe_det
    return np.where(usable[..., None], np.stack([off_x, off_y], axis=-1), 0.0)


def decode_heatmaps(
    heatmaps: np.ndarray, method: DecodeMethod = DEFAULT_REFINEMENT, dark_kernel: int = DEFAULT_DARK_KERNEL
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (N, J, h, w) heatmaps to sub-pixel peak coordinates and scores.

    Returns coords (N, J, 2) float64 (x, y) in heatmap pixels and scores (N, J), the heatmap maxima.
    ``"quarter"``: argmax moved 0.25 px toward the higher neighbour in x and in y (SimpleBaseline).
    ``"dark"``: argmax refined by a second-order Taylor (Newton) step on the log of the heatmap
    blurred with a ``dark_kernel`` x ``dark_kernel`` Gaussian (DARK, Zhang et al., CVPR 2020).
    No refinement on the border (quarter) or within 2 px of it (dark), nor (dark) where the
    log-heatmap's Hessian is not negative definite; there the plain argmax is returned.
    """
    heatmaps = _as_heatmaps(heatmaps)
    x, y, scores = _argmax(heatmaps)
    if method == "quarter":
        offsets = _quarter_offsets(heatmaps, x, y)
    elif method == "dark":
        check_dark_kernel(dark_kernel)
        offsets = _dark_offsets(heatmaps, x, y, dark_kernel)
    else:
        raise ValueError(f"method must be 'quarter' or 'dark', got {method!r}")
    return np.stack([x, y], axis=-1).astype(np.float64) + offsets, scores


def heatmap_to_image(coords: np.ndarray, crop_matrices: np.ndarray, stride: float) -> np.ndarray:
    """Map (N, J, 2) heatmap-pixel coords to image pixels.

    Coords are multiplied by ``stride`` (model-input pixels per heatmap pixel) and then sent
    through the inverse of each crop's (N, 2, 3) image -> crop matrix. Returns (N, J, 2) float64.
    """
    coords = np.asarray(coords, dtype=np.float64)
    crop_matrices = np.asarray(crop_matrices, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape (N, J, 2), got {coords.shape}")
    if crop_matrices.shape != (coords.shape[0], 2, 3):
        raise ValueError(f"crop_matrices must have shape ({coords.shape[0]}, 2, 3), got {crop_matrices.shape}")
    inverse = invert_affine(crop_matrices)
    points = coords * float(stride)
    return np.einsum("nij,nkj->nki", inverse[..., :2], points) + inverse[:, None, :, 2]


def _shift_right(heatmaps: np.ndarray, shift: float) -> np.ndarray:
    """Shift along width by ``shift`` px (may be fractional) with linear interpolation, edge-replicated."""
    w = heatmaps.shape[-1]
    source = np.clip(np.arange(w) - shift, 0.0, w - 1.0)
    left = np.floor(source).astype(np.intp)
    right = np.minimum(left + 1, w - 1)
    weight = source - left
    return heatmaps[..., left] * (1.0 - weight) + heatmaps[..., right] * weight


def _swap_channels(heatmaps: np.ndarray, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    return heatmaps[:, flip_order(tuple(flip_pairs), heatmaps.shape[1])]


def flip_heatmaps_back(
    flipped_heatmaps: np.ndarray,
    flip_pairs: Sequence[tuple[int, int]],
    input_width: int,
    shift: FlipShift = "exact",
) -> np.ndarray:
    """Turn heatmaps predicted on the horizontally mirrored crop into heatmaps of the original crop.

    Mirrors along width, swaps each (left, right) channel pair, then shifts right to undo the
    misalignment between mirroring the input (x -> input_width - 1 - x) and mirroring the heatmap
    (hx -> w - 1 - hx), which is 1 - 1/stride heatmap px with stride = input_width / w.
    ``"exact"`` shifts by that amount with linear interpolation; ``"pixel"`` shifts by 1 px as in
    SimpleBaseline / DARK. The leftmost column repeats the edge value. Returns float64 (N, J, h, w).
    """
    heatmaps = _as_heatmaps(flipped_heatmaps)
    stride = input_width / heatmaps.shape[-1]
    if shift == "exact":
        amount = 1.0 - 1.0 / stride
    elif shift == "pixel":
        amount = 1.0
    else:
        raise ValueError(f"shift must be 'exact' or 'pixel', got {shift!r}")
    return _shift_right(_swap_channels(heatmaps[..., ::-1], flip_pairs), amount)


def merge_flip(
    heatmaps: np.ndarray,
    flipped_heatmaps: np.ndarray,
    flip_pairs: Sequence[tuple[int, int]],
    input_width: int,
    shift: FlipShift = "exact",
) -> np.ndarray:
    """Flip test: average the (N, J, h, w) heatmaps with ``flip_heatmaps_back(flipped_heatmaps, ...)``."""
    heatmaps = _as_heatmaps(heatmaps)
    back = flip_heatmaps_back(flipped_heatmaps, flip_pairs, input_width, shift)
    if back.shape != heatmaps.shape:
        raise ValueError(f"heatmaps {heatmaps.shape} and flipped heatmaps {back.shape} differ in shape")
    return 0.5 * (heatmaps + back)
