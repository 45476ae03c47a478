"""The pose model on ONNX Runtime: crops of person boxes in, heatmaps out, keypoints in image pixels. Imports no torch.

:class:`PoseEstimator` holds the session and the model's metadata and provides the steps (``prepare`` crops,
``run`` the network, ``decode`` heatmaps back to the image); :mod:`effpose.pipeline` chains them, with
a person detector, into the one top-down pipeline everything uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from effpose.contract import PoseContract
from effpose.onnx_session import create_session
from effpose.processing import crop_person, crop_to_tensor, decode_heatmaps, heatmap_to_image, merge_flip
from effpose.processing.heatmap import DecodeMethod


class NotAPoseModel(ValueError):
    """An ONNX file whose metadata says it is another kind of model (e.g. a person detector)."""


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model says about itself (ONNX metadata written by ``effpose.export``): who it is and its
    :class:`~effpose.contract.PoseContract`."""

    name: str
    version: str
    weights: str
    contract: PoseContract

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> ModelInfo:
        """Read the metadata; foreign ONNX files get the default contract at their input's size. A file that says
        it is another kind of model (``effpose.kind``, e.g. ``person_detector``) raises :class:`NotAPoseModel`."""
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("effpose.kind", "pose") != "pose":
            raise NotAPoseModel(f"this ONNX file is a {meta['effpose.kind']} model, not a pose model")
        return cls(name=meta.get("effpose.name", "unknown"), version=meta.get("effpose.version", "unknown"),
                   weights=meta.get("effpose.weights", "unknown"),
                   contract=PoseContract.from_metadata(meta, session.get_inputs()[0].shape))

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of a crop."""
        return self.contract.input_size

    @property
    def num_joints(self) -> int:
        """Keypoints per person."""
        return self.contract.num_joints

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """The keypoints' names, in model order."""
        return self.contract.keypoint_names

    @property
    def skeleton(self) -> tuple[tuple[int, int], ...]:
        """Pairs of keypoint indices to draw as limbs."""
        return self.contract.skeleton


@dataclass
class PreparedCrops:
    """Network input for a set of boxes and the image->crop matrices needed to map results back."""

    tensor: np.ndarray  # (N, 3, H, W) float32
    matrices: np.ndarray  # (N, 2, 3)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


class PoseEstimator:
    """Top-down pose estimation with an exported EfficientPose ONNX model."""

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        padding: float | None = None,
        decode: DecodeMethod | None = None,
        flip: bool = False,
    ):
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"pose model not found: {model_path}")
        self.session = create_session(model_path, providers, intra_op_threads, inter_op_threads)
        self.info = ModelInfo.from_session(self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.contract = self.info.contract
        self.padding = self.contract.padding if padding is None else padding
        self.decode_method = decode or self.contract.refinement  # None: the refinement the model states
        self.flip = flip

    def prepare(self, image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]]) -> PreparedCrops:
        """Crop every box (x1, y1, x2, y2) of a BGR uint8 image to the model input; bad boxes raise ValueError."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops, matrices = [], []
        for box in boxes:
            crop, matrix = crop_person(image, box, self.contract.input_size, self.padding)
            crops.append(crop)
            matrices.append(matrix)
        width, height = self.contract.input_size
        tensor = (
            crop_to_tensor(crops, self.contract.mean, self.contract.std)
            if crops else np.zeros((0, 3, height, width), np.float32)
        )
        return PreparedCrops(tensor, np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3), boxes)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Raw heatmaps (N, J, h, w) of a crop batch (N may be 0): one ONNX Runtime call, nothing else."""
        if len(tensor) == 0:
            width, height = self.contract.heatmap_size
            return np.zeros((0, self.contract.num_joints, height, width), np.float32)
        return self.session.run(None, {self.input_name: tensor})[0]

    @staticmethod
    def with_mirrored(tensor: np.ndarray) -> np.ndarray:
        """The batch followed by its horizontally mirrored copy (the flip test's network input)."""
        return np.concatenate([tensor, tensor[..., ::-1]], axis=0)

    def merge_mirrored(self, heatmaps: np.ndarray) -> np.ndarray:
        """Average the heatmaps of a :meth:`with_mirrored` batch back into one heatmap per crop."""
        count = len(heatmaps) // 2
        return merge_flip(heatmaps[:count], heatmaps[count:], self.contract.flip_pairs, self.contract.input_size[0])

    def decode(self, heatmaps: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """Keypoints (N, J, 3): x, y in original-image pixels and the heatmap peak as score."""
        if tuple(heatmaps.shape[-2:][::-1]) != self.contract.heatmap_size:
            raise ValueError(f"heatmaps of {heatmaps.shape[-1]}x{heatmaps.shape[-2]} do not match the contract's "
                             f"{self.contract.heatmap_size[0]}x{self.contract.heatmap_size[1]} (stride "
                             f"{self.contract.stride})")
        coords, scores = decode_heatmaps(heatmaps, method=self.decode_method, dark_kernel=self.contract.dark_kernel)
        points = heatmap_to_image(coords, matrices, self.contract.stride)
        return np.concatenate([points, scores[..., None]], axis=-1)
