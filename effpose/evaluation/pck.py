"""PCK (percentage of correct keypoints) normalised by the torso diameter.

Definition used here:

* a joint *counts* when its GT visibility v > 0 and the optional ``mask`` allows it (pass the inverse
  of the ``pseudo`` flags, so that pseudo-labels are not scored);
* the torso diameter of a person is the distance left_shoulder (5) -> right_hip (12); when one of them
  does not count it falls back to right_shoulder (6) -> left_hip (11). Persons with neither pair (or a
  zero-length torso) are excluded entirely and reported in ``num_excluded``;
* a counted joint is *correct* when its predicted position lies within ``threshold`` x torso diameter
  (distance <= threshold * torso) of the GT position.

PCK is correct / counted over all joints of the included persons; per-joint PCK is the same per keypoint
and NaN for a keypoint that never counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: (first, second) keypoint pairs whose distance is the torso diameter, in order of preference.
TORSO_PAIRS: tuple[tuple[int, int], ...] = ((5, 12), (6, 11))


@dataclass(frozen=True)
class PCKResult:
    """PCK over all counted joints, per joint (NaN where never counted), and the counts behind them."""

    pck: float  # NaN when no joint counted at all
    per_joint: np.ndarray  # (J,) float
    correct: np.ndarray  # (J,) int
    counted: np.ndarray  # (J,) int
    num_persons: int  # persons with a torso diameter (scored)
    num_excluded: int  # persons without one (not scored)
    threshold: float


def torso_diameter(gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Torso diameter (N,) of each person from GT points (N, J, 2+) and counted joints (N, J); NaN if none."""
    diameter = np.full(len(gt), np.nan)
    for first, second in reversed(TORSO_PAIRS):  # preferred pair last, so it overwrites the fallback
        usable = valid[:, first] & valid[:, second]
        diameter[usable] = np.linalg.norm(gt[usable, first, :2] - gt[usable, second, :2], axis=-1)
    diameter[diameter <= 0] = np.nan
    return diameter


def pck(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2, mask: np.ndarray | None = None) -> PCKResult:
    """PCK@``threshold`` of predictions (N, J, 2) against GT (N, J, 3: x, y, v); see the module docstring.

    ``mask`` (N, J) bool: False excludes a joint (e.g. a pseudo-label) from scoring and from the torso.
    """
    pred = np.asarray(pred, dtype=np.float64)[..., :2]
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape[:-1] + (2,) or gt.ndim != 3 or gt.shape[-1] != 3:
        raise ValueError(f"pred must be (N, J, 2) and gt (N, J, 3), got {pred.shape} and {gt.shape}")
    valid = gt[..., 2] > 0
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    torso = torso_diameter(gt, valid)
    scored = ~np.isnan(torso)
    valid &= scored[:, None]
    distance = np.linalg.norm(pred - gt[..., :2], axis=-1)
    hits = valid & (distance <= threshold * np.where(scored, torso, 0.0)[:, None])
    counted, correct = valid.sum(axis=0), hits.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = correct / counted
    total = int(counted.sum())
    return PCKResult(
        pck=float(correct.sum() / total) if total else float("nan"),
        per_joint=per_joint,
        correct=correct,
        counted=counted,
        num_persons=int(scored.sum()),
        num_excluded=int((~scored).sum()),
        threshold=threshold,
    )
