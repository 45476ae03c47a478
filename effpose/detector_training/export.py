"""ONNX export of the person detector (the contract ``effpose.detectors`` reads) and its parity check against torch.

Contract: input ``images`` float32 [N, 3, S, S], RGB in [0, 1], the image letterboxed centred with pad 114
(``effpose.detectors.onnx_detector.preprocess(image, (S, S), "yolov8")``); ImageNet normalisation is inside the graph.
Output ``detections`` float32 [N, K, 5] (K = 100): x1, y1, x2, y2 in input pixels and score in [0, 1], sorted by
score, decoded in the graph (sigmoid heatmap, 3x3 max-pool peaks, TopK, size and offset heads); no NMS needed.
Dynamic batch axis, legacy exporter, opset 17. Metadata: ``effpose.kind`` = "person_detector", ``effpose.name``,
``effpose.version``, ``effpose.weights`` ("trained" / "random"), ``effpose.input_size`` [S, S],
``effpose.config`` (genotype, K, stride, encodings), plus ``effpose.input_format`` / ``effpose.output_format``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from effpose import __version__
from effpose.detector_training.model import KIND, CenterNetDetector, DetectionGraph, heatmap_peaks
from effpose.export import save_onnx

INPUT_NAME = "images"
OUTPUT_NAME = "detections"
WEIGHTS = ("trained", "random")


def detector_metadata(model: CenterNetDetector, input_size: int, weights: str, version: str) -> dict[str, str]:
    """Metadata stored in the ONNX file; the runtime adapter reads the kind and the input size from it."""
    return {
        "effpose.kind": KIND,
        "effpose.name": f"person_detector_{model.genotype.name}",
        "effpose.version": version,
        "effpose.weights": weights,
        "effpose.input_size": json.dumps([input_size, input_size]),
        "effpose.config": json.dumps(model.config()),
        "effpose.input_format": "RGB float32 NCHW in [0, 1], letterboxed centred with pad 114 (ImageNet "
                                "normalisation is inside the graph)",
        "effpose.output_format": f"float32 [N, {model.max_detections}, 5]: x1, y1, x2, y2 (input pixels), score; "
                                 "sorted by score, no NMS needed",
    }


def export_detector(
    model: CenterNetDetector, path: str | Path, input_size: int = 320, weights: str = "trained",
    version: str = __version__,
) -> Path:
    """Export ``model`` with its decoding for S x S inputs (S = ``input_size``), dynamic batch axis."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    graph = DetectionGraph(model.eval(), input_size).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    return save_onnx(graph, example, path, INPUT_NAME, OUTPUT_NAME,
                     detector_metadata(model, input_size, weights, version))


def _ambiguous(heatmap: np.ndarray, cells: np.ndarray, logits: np.ndarray, tolerance: float) -> np.ndarray:
    """Which of one image's detections (flat ``cells``, peak ``logits``) a tiny numeric difference could change:
    a neighbour within ``tolerance`` (which cell is the peak) or a logit within it of the last one kept."""
    width = heatmap.shape[1]
    padded = np.pad(heatmap, 1, constant_values=-np.inf)
    rows, columns = np.divmod(cells, width)
    windows = np.stack([padded[r:r + 3, c:c + 3] for r, c in zip(rows, columns)])
    near_ties = (np.abs(windows - logits[:, None, None]) <= tolerance).sum(axis=(1, 2)) > 1
    return near_ties | (logits - logits[-1] <= tolerance)


def detection_difference(expected: np.ndarray, actual: np.ndarray, heatmap: np.ndarray, cells: np.ndarray,
                         logits: np.ndarray, tolerance: float) -> float:
    """Max abs difference between torch (``expected``) and ONNX (``actual``) detections (N, K, 5), robust to ties.

    Scores are compared as sorted lists (whatever the order of equal scores). Each torch detection whose peak is
    numerically well defined (:func:`_ambiguous`) is matched to the ONNX detection of nearest box among those
    with a score within ``tolerance``; ``heatmap`` (N, H, W), ``cells`` and ``logits`` (N, K) are torch's.
    """
    worst = float(np.abs(np.sort(expected[..., 4], axis=1) - np.sort(actual[..., 4], axis=1)).max())
    for image in range(len(expected)):
        stable = ~_ambiguous(heatmap[image], cells[image], logits[image], tolerance)
        for row in expected[image][stable]:
            candidates = actual[image][np.abs(actual[image, :, 4] - row[4]) <= tolerance]
            box_diff = np.abs(candidates[:, :4] - row[:4]).max(axis=1).min() if len(candidates) else np.inf
            worst = max(worst, float(box_diff))
    return worst


@torch.no_grad()
def check_detector_parity(
    model: CenterNetDetector, onnx_path: str | Path, input_size: int = 320, batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-3, seed: int = 0,
) -> float:
    """Run torch and ONNX Runtime on the same random images; return the max abs difference of the detections
    (:func:`detection_difference`, ``atol`` also being the tie tolerance). Raises AssertionError above ``atol``."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph = DetectionGraph(model.eval(), input_size)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in batch_sizes:
        images = rng.random((batch, 3, input_size, input_size), dtype=np.float32)
        heatmap = model(torch.from_numpy(images)).heatmap
        logits, cells = heatmap_peaks(heatmap, model.max_detections)
        expected = graph(torch.from_numpy(images)).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        if actual.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {actual.shape} != torch {expected.shape}")
        worst = max(worst, detection_difference(expected, actual, heatmap[:, 0].numpy(), cells.numpy(),
                                                logits.numpy(), atol))
    if worst > atol:
        raise AssertionError(f"ONNX Runtime detections differ from torch by {worst:.3g} > {atol:g}")
    return worst
