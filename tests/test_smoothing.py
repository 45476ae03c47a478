"""Temporal smoothing: the One Euro filter against the paper's equations, and the IoU tracker across frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effpose.processing.smoothing import (
    OneEuroFilter,
    OneEuroParams,
    PoseTracker,
    greedy_match,
)

FPS = 30.0


def test_one_euro_matches_the_equations_by_hand():
    params = OneEuroParams(min_cutoff=1.0, beta=0.5, d_cutoff=2.0)
    smoother = OneEuroFilter(params)
    assert smoother(np.array([0.0]), 0.0)[0] == 0.0  # the first sample passes through
    # second sample x=1 at t=0.5: speed 2, smoothed speed a_d*2, cutoff 1 + 0.5*a_d*2, x_hat = a*1
    alpha_d = (2 * math.pi * 2.0 * 0.5) / (2 * math.pi * 2.0 * 0.5 + 1)
    cutoff = 1.0 + 0.5 * alpha_d * 2.0
    alpha = (2 * math.pi * cutoff * 0.5) / (2 * math.pi * cutoff * 0.5 + 1)
    assert smoother(np.array([1.0]), 0.5)[0] == pytest.approx(alpha)


def test_one_euro_smooths_jitter_of_a_still_point():
    rng = np.random.default_rng(0)
    noisy = 100.0 + rng.normal(0.0, 3.0, size=(120, 17, 2))
    smoother = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.007))
    smoothed = np.array([smoother(sample, i / FPS) for i, sample in enumerate(noisy)])
    settled = slice(30, None)
    assert np.std(smoothed[settled]) < 0.35 * np.std(noisy[settled])
    assert np.abs(smoothed[settled].mean() - 100.0) < 1.0


def test_beta_cuts_the_lag_on_fast_motion():
    times = np.arange(60) / FPS
    ramp = 600.0 * times  # 600 px/s
    lags = {}
    for beta in (0.0, 0.05):
        smoother = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=beta))
        lags[beta] = ramp[-1] - smoother_run(smoother, ramp, times)[-1]
    assert lags[0.0] > 50.0  # a plain 1 Hz low-pass trails far behind
    assert lags[0.05] < 0.25 * lags[0.0]


def smoother_run(smoother: OneEuroFilter, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.array([smoother(np.array([v]), t)[0] for v, t in zip(values, times)])


def test_timestamps_must_increase_and_parameters_make_sense():
    smoother = OneEuroFilter()
    smoother(np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="increase"):
        smoother(np.ones(2), 1.0)
    for bad in ({"min_cutoff": 0.0}, {"beta": -1.0}, {"d_cutoff": -2.0}, {"min_cutoff": math.nan}):
        with pytest.raises(ValueError):
            OneEuroParams(**bad)


def test_greedy_match_takes_the_best_pairs_first():
    scores = np.array([[0.9, 0.8, 0.0],
                       [0.85, 0.1, 0.0],
                       [0.0, 0.0, 0.2]])
    assert greedy_match(scores, 0.3) == [(0, 0)]  # greedy, not optimal: (1, 0) lost to the better (0, 0)
    assert greedy_match(scores, 0.05) == [(0, 0), (2, 2), (1, 1)]
    assert greedy_match(np.zeros((0, 3)), 0.3) == []


def person(x: float, y: float, rng: np.random.Generator, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A 17-keypoint person laid out around (x, y) with its box, plus Gaussian noise on the keypoints."""
    offsets = np.stack([np.linspace(-20, 20, 17), np.linspace(-60, 60, 17)], axis=1)
    points = np.array([x, y]) + offsets + rng.normal(0.0, noise, size=(17, 2))
    keypoints = np.concatenate([points, np.full((17, 1), 0.9)], axis=1)
    return np.array([x - 40, y - 80, x + 40, y + 80]), keypoints


def test_tracker_follows_persons_not_list_order_and_reduces_jitter():
    rng = np.random.default_rng(1)
    tracker = PoseTracker(OneEuroParams(min_cutoff=1.0, beta=0.0))
    raw, smooth, truth, ids_seen = [], [], [], []
    for frame in range(90):
        places = [(100.0 + frame, 200.0), (400.0, 220.0 - frame)]  # two persons walking 1 px per frame
        people = [person(x, y, rng, noise=4.0) for x, y in places]
        order = [1, 0] if frame % 2 else [0, 1]  # the detector lists them in a different order every frame
        keypoints = np.array([people[i][1] for i in order])
        smoothed, ids = tracker.update(frame / FPS, np.array([people[i][0] for i in order]), keypoints)
        np.testing.assert_array_equal(smoothed[..., 2], keypoints[..., 2])  # scores pass through
        back = [order.index(i) for i in range(2)]  # person i is row back[i]
        ids_seen.append([ids[row] for row in back])
        raw.append(keypoints[back, :, :2])
        smooth.append(smoothed[back, :, :2])
        truth.append(np.array([person(x, y, rng)[1][:, :2] for x, y in places]))
    assert all(seen == ids_seen[0] for seen in ids_seen) and len(set(ids_seen[0])) == 2

    def jitter(track: list[np.ndarray]) -> float:  # frame-to-frame motion that the true motion does not explain
        return float(np.abs(np.diff(np.array(track[30:]) - np.array(truth[30:]), axis=0)).mean())

    assert jitter(smooth) < 0.3 * jitter(raw)


def test_tracks_survive_short_gaps_and_are_forgotten_after_long_ones():
    rng = np.random.default_rng(2)
    tracker = PoseTracker(max_missed=2)
    box, keypoints = person(100.0, 100.0, rng)
    (_, [first]) = tracker.update(0.0, box[None], keypoints[None])
    for step in (1, 2):  # missing for two frames
        tracker.update(step / FPS, np.zeros((0, 4)), np.zeros((0, 17, 3)))
    _, [again] = tracker.update(3 / FPS, box[None], keypoints[None])
    assert again == first
    for step in (4, 5, 6):  # missing for three frames: forgotten
        tracker.update(step / FPS, np.zeros((0, 4)), np.zeros((0, 17, 3)))
    moved = keypoints + [3.0, 3.0, 0.0]
    smoothed, [new] = tracker.update(7 / FPS, box[None], moved[None])
    assert new != first
    np.testing.assert_allclose(smoothed[0], moved)  # a new track starts fresh: no pull from the past


def test_tracker_rejects_non_increasing_timestamps_without_changing_state():
    rng = np.random.default_rng(3)
    tracker = PoseTracker()
    box, keypoints = person(50.0, 50.0, rng)
    tracker.update(1.0, box[None], keypoints[None])
    with pytest.raises(ValueError, match="increase"):
        tracker.update(1.0, box[None], keypoints[None])
    _, [track] = tracker.update(2.0, box[None], keypoints[None])
    assert track == 1
