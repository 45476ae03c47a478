"""Temporal smoothing of keypoints in video, torch-free: One Euro filters on persons tracked across frames.

The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cutoff rises with the
signal's speed: ``cutoff = min_cutoff + beta * |speed|``, so slow jitter is smoothed hard while fast motion
follows with little lag. :class:`PoseTracker` associates the persons of consecutive frames by box IoU (greedy)
and runs one filter per person over its keypoints' (x, y); scores and boxes pass through unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from effpose.processing.boxes import box_iou


@dataclass(frozen=True)
class OneEuroParams:
    """Filter parameters: ``min_cutoff`` and ``d_cutoff`` in Hz, ``beta`` in seconds per signal unit (s/px)."""

    min_cutoff: float = 1.0
    beta: float = 0.007
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0) or not all(
            math.isfinite(v) for v in (self.min_cutoff, self.beta, self.d_cutoff)
        ):
            raise ValueError(f"One Euro parameters need min_cutoff > 0, d_cutoff > 0 and beta >= 0, got {self}")


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Exponential smoothing factor of a first-order low-pass filter with ``cutoff`` Hz sampled every ``dt`` s."""
    rate = 2.0 * math.pi * np.asarray(cutoff) * dt
    return rate / (rate + 1.0)


class OneEuroFilter:
    """One Euro filter of an array-valued signal; every element is filtered on its own (its own speed and cutoff)."""

    def __init__(self, params: OneEuroParams = OneEuroParams()):
        self.params = params
        self._time: float | None = None
        self._value = np.zeros(0)
        self._speed = np.zeros(0)

    def __call__(self, value: np.ndarray, timestamp: float) -> np.ndarray:
        """Filter the sample ``value`` taken at ``timestamp`` seconds (later than the previous one); the first
        sample passes through unchanged."""
        value = np.asarray(value, dtype=np.float64)
        if self._time is None:
            self._time, self._value, self._speed = timestamp, value.copy(), np.zeros_like(value)
            return value.copy()
        dt = timestamp - self._time
        if not dt > 0:
            raise ValueError(f"timestamps must increase: {timestamp} after {self._time}")
        speed = (value - self._value) / dt
        self._speed = self._speed + smoothing_factor(self.params.d_cutoff, dt) * (speed - self._speed)
        cutoff = self.params.min_cutoff + self.params.beta * np.abs(self._speed)
        self._value = self._value + smoothing_factor(cutoff, dt) * (value - self._value)
        self._time = timestamp
        return self._value.copy()


def greedy_match(scores: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(row, column) pairs of an (R, C) score matrix, best score first, each row and column used once, every
    pair scoring at least ``threshold``."""
    pairs: list[tuple[int, int]] = []
    rows: set[int] = set()
    columns: set[int] = set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        row, column = divmod(int(flat), scores.shape[1])
        if scores[row, column] < threshold:
            break
        if row not in rows and column not in columns:
            pairs.append((row, column))
            rows.add(row)
            columns.add(column)
    return pairs


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    filter: OneEuroFilter
    missed: int = field(default=0)


class PoseTracker:
    """Follows persons from frame to frame by box IoU and smooths each one's keypoint coordinates.

    A person whose box overlaps a track's last box by at least ``iou_threshold`` (greedy, best IoU first)
    continues that track; others start a new track with a fresh filter. A track unseen for more than
    ``max_missed`` frames is forgotten.
    """

    def __init__(self, params: OneEuroParams = OneEuroParams(), iou_threshold: float = 0.3, max_missed: int = 5):
        if not 0.0 < iou_threshold <= 1.0 or max_missed < 0:
            raise ValueError(f"need 0 < iou_threshold <= 1 and max_missed >= 0, got {iou_threshold}, {max_missed}")
        self.params = params
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._time: float | None = None

    def update(self, timestamp: float, boxes: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Smooth one frame: ``boxes`` (N, 4) xyxy and ``keypoints`` (N, J, 3) (x, y, score) at ``timestamp``
        seconds, later than the previous frame's. Returns the smoothed keypoints (N, J, 3) and each person's
        track id (from 1)."""
        if self._time is not None and not timestamp > self._time:
            raise ValueError(f"frame timestamps must increase: {timestamp} after {self._time}")
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        smoothed = np.array(keypoints, dtype=np.float64)
        if len(smoothed) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(smoothed)} keypoint sets")
        self._time = timestamp
        iou = box_iou(np.array([track.box for track in self._tracks]).reshape(-1, 4), boxes)
        matched = {column: self._tracks[row] for row, column in greedy_match(iou, self.iou_threshold)}
        for track in self._tracks:
            track.missed += 1
        ids = []
        for index, box in enumerate(boxes):
            track = matched.get(index) or self._new_track()
            track.box, track.missed = box, 0
            smoothed[index, :, :2] = track.filter(smoothed[index, :, :2], timestamp)
            ids.append(track.track_id)
        self._tracks = [track for track in self._tracks if track.missed <= self.max_missed]
        return smoothed, ids

    def _new_track(self) -> _Track:
        track = _Track(self._next_id, np.zeros(4), OneEuroFilter(self.params))
        self._next_id += 1
        self._tracks.append(track)
        return track
