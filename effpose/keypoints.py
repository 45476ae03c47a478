"""COCO-17 keypoint definitions: the one place that names, orders and pairs the keypoints."""

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# COCO's skeleton (person_keypoints categories[0].skeleton), converted from 1-based to 0-based indices.
SKELETON: tuple[tuple[int, int], ...] = tuple(
    (a - 1, b - 1)
    for a, b in (
        (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
        (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
    )
)

# (left, right) pairs swapped by a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))

# Per-keypoint OKS sigmas used by the COCO keypoint evaluation (pycocotools COCOeval).
OKS_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89], dtype=np.float64
) / 10.0



def flip_order(flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS, num_keypoints: int = NUM_KEYPOINTS) -> list[int]:
    """Index order that swaps every (left, right) pair: ``keypoints[flip_order()]`` relabels a mirrored person."""
    order = list(range(num_keypoints))
    for left, right in flip_pairs:
        order[left], order[right] = right, left
    return order
