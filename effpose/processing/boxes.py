"""Box geometry: pairwise IoU and coverage (numpy) and greedy non-maximum suppression (OpenCV) of axis-aligned boxes."""

from __future__ import annotations

import cv2
import numpy as np


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union (N, M) of (N, 4) and (M, 4) xyxy boxes; 0 where the union is empty."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_coverage(boxes: np.ndarray, covers: np.ndarray) -> np.ndarray:
    """Pairwise share (N, M) of each of the (N, 4) xyxy ``boxes``' area that each of the (M, 4) ``covers`` overlaps;
    0 for a box without area."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(covers, dtype=np.float64).reshape(-1, 4)
    area = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    return np.divide(inter, area[:, None], out=np.zeros_like(inter), where=area[:, None] > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first.

    Boxes are visited by descending score (ties in input order); a box is dropped when its IoU with an already
    kept box is greater than ``iou_threshold``. ``boxes`` is (N, 4) xyxy, ``scores`` is (N,). Boxes without a
    positive, finite area overlap nothing (IoU 0, as :func:`box_iou` says), so they are kept and suppress nothing.
    The greedy pass is OpenCV's ``cv2.dnn.NMSBoxes`` (the same rule, in C++), given each box's rank as its score
    so that ties keep the input order.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise ValueError(f"nms needs boxes (N, 4) and scores (N,), got {boxes.shape} and {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(boxes), dtype=np.float64)
    rank[order] = np.arange(len(boxes), 0, -1)  # distinct and positive: NMSBoxes keeps scores above 0
    proper = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    kept = ~proper
    candidates = np.flatnonzero(proper)
    if candidates.size:
        xywh = np.concatenate([boxes[candidates, :2], boxes[candidates, 2:] - boxes[candidates, :2]], axis=1)
        chosen = cv2.dnn.NMSBoxes(xywh.tolist(), rank[candidates].tolist(), 0.0, float(iou_threshold))
        kept[candidates[np.asarray(chosen, dtype=np.int64).reshape(-1)]] = True
    return order[kept[order]].astype(np.int64)
