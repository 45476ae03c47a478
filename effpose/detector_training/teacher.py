"""A detector in ONNX (e.g. YOLOX-nano) as a distillation teacher that labels every training canvas as the student
sees it: after mosaic, scaling, flipping and colour jitter ("consistent teaching").

Its detections (score >= ``min_score``, after its own NMS) become soft CenterNet targets
(:func:`~effpose.detector_training.targets.encode_targets` with ``scores``): a Gaussian that peaks at the detection's
score, and size and offset weighted by it. The teacher runs in the data-loader worker on ONNX Runtime with one
thread; its session is opened on first use in each process, so the dataset still pickles to worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from effpose.detector_training.targets import STRIDE, encode_targets
from effpose.detectors import OnnxDetector

MAX_TEACHER_DETECTIONS = 100


class OnnxTeacher:
    """Soft targets for a canvas from the detections of the ONNX detector at ``model_path``."""

    def __init__(self, model_path: str | Path, min_score: float = 0.1, regression_cells: str = "centre"):
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"the teacher's min_score must lie in (0, 1), got {min_score}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"distillation detector {self.model_path} not found (set EFFPOSE_DATA?)")
        self.min_score = min_score
        self.regression_cells = regression_cells
        self._detector: OnnxDetector | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}  # an ONNX Runtime session does not pickle: reopened per process

    def detect(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's person boxes (M, 4) xyxy in canvas pixels and their scores (M,) on a float BGR canvas."""
        if self._detector is None:
            self._detector = OnnxDetector(self.model_path, intra_op_threads=1)
        image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        detections = self._detector.detect(image, self.min_score, MAX_TEACHER_DETECTIONS)
        boxes = np.asarray([d.box for d in detections], np.float32).reshape(-1, 4)
        return boxes, np.asarray([d.score for d in detections], np.float32)

    def targets(self, canvas: np.ndarray) -> dict[str, np.ndarray]:
        """The soft target maps of ``canvas`` (S, S, 3), keyed ``teacher_heatmap``, ``teacher_size``,
        ``teacher_offset`` and ``teacher_mask``."""
        boxes, scores = self.detect(canvas)
        maps = encode_targets(boxes, canvas.shape[0], STRIDE, self.regression_cells, scores)
        return {f"teacher_{name}": value for name, value in maps.items()}
