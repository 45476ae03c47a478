"""ONNX Runtime pose estimator: image + person boxes -> keypoints in image pixels. Imports no torch.

The stages are separate (``prepare`` crops, ``infer`` runs the network, ``decode`` maps heatmaps back) so that
a batcher can pool crops of many requests into one ``infer`` call; ``estimate`` chains them for one image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from effpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES, SKELETON
from effpose.processing import crop_person, crop_to_tensor, decode_heatmaps, heatmap_to_image, merge_flip
from effpose.processing.heatmap import DecodeMethod

PERSON_SCORE_KEYPOINT_THRESHOLD = 0.2


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model says about itself (ONNX metadata written by ``effpose.export``)."""

    name: str
    version: str
    weights: str
    input_size: tuple[int, int]  # (width, height)
    num_joints: int
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> ModelInfo:
        """Read the metadata; falls back to the input shape and COCO defaults for foreign ONNX files."""
        meta = session.get_modelmeta().custom_metadata_map
        shape = session.get_inputs()[0].shape
        if not (isinstance(shape[2], int) and isinstance(shape[3], int)):
            raise ValueError(f"model input must have a fixed height and width, got shape {shape}")
        num_joints = int(meta.get("effpose.num_joints", len(KEYPOINT_NAMES)))
        return cls(
            name=meta.get("effpose.name", "unknown"),
            version=meta.get("effpose.version", "unknown"),
            weights=meta.get("effpose.weights", "unknown"),
            input_size=(int(shape[3]), int(shape[2])),
            num_joints=num_joints,
            keypoint_names=tuple(json.loads(meta.get("effpose.keypoint_names", json.dumps(KEYPOINT_NAMES)))),
            skeleton=tuple(tuple(p) for p in json.loads(meta.get("effpose.skeleton", json.dumps(SKELETON)))),
            mean=tuple(json.loads(meta.get("effpose.input_mean", "[0.485, 0.456, 0.406]"))),
            std=tuple(json.loads(meta.get("effpose.input_std", "[0.229, 0.224, 0.225]"))),
        )


@dataclass
class PersonPose:
    """One person: box (x1, y1, x2, y2) in image pixels, its score, and J keypoints (x, y, score)."""

    box: np.ndarray
    box_score: float
    keypoints: np.ndarray  # (J, 3): x, y in original-image pixels, score
    score: float
    source: str = "client"

    def to_dict(self, names: Sequence[str] = KEYPOINT_NAMES, keypoint_threshold: float | None = None) -> dict:
        """JSON-ready form: every keypoint is present, in model order, with its score.

        With ``keypoint_threshold`` each keypoint also says whether its score reaches it (``visible``).
        """
        keypoints = []
        for name, (x, y, s) in zip(names, self.keypoints):
            keypoint = {"name": name, "x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4)}
            if keypoint_threshold is not None:
                keypoint["visible"] = bool(s >= keypoint_threshold)
            keypoints.append(keypoint)
        return {
            "box": [round(float(v), 2) for v in self.box],
            "box_score": round(float(self.box_score), 4),
            "source": self.source,
            "score": round(float(self.score), 4),
            "keypoints": keypoints,
        }

    def to_coco(self, image_id: int) -> dict:
        """One entry of a COCO keypoint results file (bbox as x, y, width, height)."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 3) for v in self.keypoints.reshape(-1)],
            "score": float(self.score),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        }


@dataclass
class PreparedCrops:
    """Network input for a set of boxes and the image->crop matrices needed to map results back."""

    tensor: np.ndarray  # (N, 3, H, W) float32
    matrices: np.ndarray  # (N, 2, 3)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Map "cpu" / "cuda" / "auto" (CUDA when ONNX Runtime has it) or explicit provider names to a list."""
    available = ort.get_available_providers()
    if isinstance(providers, str):
        choice = providers.lower()
        if choice == "cpu":
            return ["CPUExecutionProvider"]
        if choice in ("cuda", "auto"):
            if "CUDAExecutionProvider" in available:
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if choice == "cuda":
                raise ValueError(f"CUDAExecutionProvider is not available (have {available}); install onnxruntime-gpu")
            return ["CPUExecutionProvider"]
        raise ValueError(f"unknown providers {providers!r}: use cpu, cuda, auto or a list of provider names")
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not available (have {available})")
    return list(providers)


def person_score(keypoint_scores: np.ndarray, box_score: float, threshold: float = PERSON_SCORE_KEYPOINT_THRESHOLD) -> float:
    """Box score times the mean score of the confident keypoints (the HRNet/SimpleBaseline rescoring)."""
    confident = keypoint_scores[keypoint_scores > threshold]
    return float(box_score * confident.mean()) if confident.size else 0.0


class PoseEstimator:
    """Top-down pose estimation with an exported EfficientPose ONNX model."""

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        padding: float = 1.25,
        decode: DecodeMethod = "quarter",
        flip: bool = False,
    ):
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"pose model not found: {model_path}")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        self.session = ort.InferenceSession(str(model_path), options, providers=resolve_providers(providers))
        self.info = ModelInfo.from_session(self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.padding = padding
        self.decode_method = decode
        self.flip = flip

    def prepare(self, image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]]) -> PreparedCrops:
        """Crop every box (x1, y1, x2, y2) of a BGR uint8 image to the model input; bad boxes raise ValueError."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops, matrices = [], []
        for box in boxes:
            crop, matrix = crop_person(image, box, self.info.input_size, self.padding)
            crops.append(crop)
            matrices.append(matrix)
        width, height = self.info.input_size
        tensor = (
            crop_to_tensor(crops, self.info.mean, self.info.std)
            if crops else np.zeros((0, 3, height, width), np.float32)
        )
        return PreparedCrops(tensor, np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3), boxes)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Raw heatmaps (N, J, h, w) of a crop batch (N may be 0): one ONNX Runtime call, nothing else."""
        if len(tensor) == 0:
            width, height = self.info.input_size
            return np.zeros((0, self.info.num_joints, height // 4, width // 4), np.float32)
        return self.session.run(None, {self.input_name: tensor})[0]

    @staticmethod
    def with_mirrored(tensor: np.ndarray) -> np.ndarray:
        """The batch followed by its horizontally mirrored copy (the flip test's network input)."""
        return np.concatenate([tensor, tensor[..., ::-1]], axis=0)

    def merge_mirrored(self, heatmaps: np.ndarray) -> np.ndarray:
        """Average the heatmaps of a :meth:`with_mirrored` batch back into one heatmap per crop."""
        count = len(heatmaps) // 2
        return merge_flip(heatmaps[:count], heatmaps[count:], FLIP_PAIRS, self.info.input_size[0])

    def infer(self, tensor: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """Heatmaps (N, J, h, w) for a crop batch; with flip test, mirrored crops run in the same batch."""
        flip = self.flip if flip is None else flip
        if not flip or len(tensor) == 0:
            return self.run(tensor)
        return self.merge_mirrored(self.run(self.with_mirrored(tensor)))

    def decode(self, heatmaps: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """Keypoints (N, J, 3): x, y in original-image pixels and the heatmap peak as score."""
        coords, scores = decode_heatmaps(heatmaps, method=self.decode_method)
        stride = self.info.input_size[0] / heatmaps.shape[-1]
        points = heatmap_to_image(coords, matrices, stride)
        return np.concatenate([points, scores[..., None]], axis=-1)

    def estimate(
        self,
        image: np.ndarray,
        boxes: np.ndarray | Sequence[Sequence[float]],
        box_scores: Sequence[float] | None = None,
        flip: bool | None = None,
        source: str = "client",
    ) -> list[PersonPose]:
        """Poses of the people in ``boxes`` of a BGR uint8 image, in the order of the boxes."""
        prepared = self.prepare(image, boxes)
        keypoints = self.decode(self.infer(prepared.tensor, flip), prepared.matrices)
        box_scores = [1.0] * len(prepared.boxes) if box_scores is None else list(box_scores)
        return [
            PersonPose(box, float(bs), kps, person_score(kps[:, 2], float(bs)), source)
            for box, bs, kps in zip(prepared.boxes, box_scores, keypoints)
        ]
