"""The pose model's contract: what every user of the network must do exactly as its training did.

:class:`PoseContract` is written into the ONNX metadata at export (:mod:`effpose.export`) and read back from it
by the runtime (:mod:`effpose.runtime`): crop size, heatmap stride, box padding, input normalisation, keypoint
names, skeleton, flip pairs and output decoder with its sub-pixel refinement. This module is the only place
their defaults live.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Literal, get_args

from effpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES, SKELETON

#: (width, height) of a crop when nothing says otherwise (the paper's 256x192).
DEFAULT_INPUT_SIZE: tuple[int, int] = (192, 256)
#: The person box is enlarged by this factor (at the input's aspect ratio) before cropping.
DEFAULT_PADDING = 1.25
#: Input pixels per heatmap pixel.
HEATMAP_STRIDE = 4
#: ImageNet per-channel mean, RGB order, for inputs scaled to [0, 1].
INPUT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation, RGB order, for inputs scaled to [0, 1].
INPUT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The output the runtime decodes: one heatmap per joint at 1 / stride of the input.
HEATMAP_DECODER = "heatmaps"
#: Sub-pixel refinements of each heatmap's argmax (see :mod:`effpose.processing.heatmap`).
Refinement = Literal["quarter", "dark"]
REFINEMENTS: tuple[str, ...] = get_args(Refinement)
#: The refinement when a model does not state one; releases state the one that scored best on the validation split.
DEFAULT_REFINEMENT: Refinement = "quarter"
#: DARK's Gaussian blur kernel when a model does not state one (the DARK paper's, for 64x48 heatmaps).
DEFAULT_DARK_KERNEL = 11


def check_dark_kernel(kernel: int) -> None:
    """Raise ValueError unless ``kernel`` is a usable DARK blur kernel (a positive odd integer)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"dark_kernel must be a positive odd integer, got {kernel}")

_PREFIX = "effpose."


@dataclass(frozen=True)
class PoseContract:
    """Everything between an image and the network that must match training (see the module docstring)."""

    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (width, height)
    stride: int = HEATMAP_STRIDE
    padding: float = DEFAULT_PADDING
    mean: tuple[float, float, float] = INPUT_MEAN
    std: tuple[float, float, float] = INPUT_STD
    keypoint_names: tuple[str, ...] = tuple(KEYPOINT_NAMES)
    skeleton: tuple[tuple[int, int], ...] = tuple(tuple(pair) for pair in SKELETON)
    flip_pairs: tuple[tuple[int, int], ...] = tuple(tuple(pair) for pair in FLIP_PAIRS)
    decoder: str = HEATMAP_DECODER
    refinement: Refinement = DEFAULT_REFINEMENT
    dark_kernel: int = DEFAULT_DARK_KERNEL

    def __post_init__(self) -> None:
        width, height = self.input_size
        if width <= 0 or height <= 0 or width % self.stride or height % self.stride:
            raise ValueError(f"input size {self.input_size} must be positive multiples of the stride {self.stride}")
        if self.padding <= 0:
            raise ValueError(f"padding must be > 0, got {self.padding}")
        if self.refinement not in REFINEMENTS:
            raise ValueError(f"refinement must be one of {REFINEMENTS}, got {self.refinement!r}")
        check_dark_kernel(self.dark_kernel)
        if any(not 0 <= joint < self.num_joints for pair in self.flip_pairs for joint in pair):
            raise ValueError(f"flip pairs {self.flip_pairs} name joints outside 0..{self.num_joints - 1}")

    @cached_property
    def num_joints(self) -> int:
        """Keypoints per person (heatmap channels)."""
        return len(self.keypoint_names)

    @cached_property
    def heatmap_size(self) -> tuple[int, int]:
        """(width, height) of the output heatmaps (computed once: the runtime reads it for every batch)."""
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    def to_metadata(self) -> dict[str, str]:
        """ONNX metadata entries (``effpose.<field>``, JSON values), plus the joint count and a readable format."""
        entries = {f"{_PREFIX}{_METADATA_KEYS[name]}": json.dumps(value) for name, value in asdict(self).items()}
        entries[f"{_PREFIX}num_joints"] = str(self.num_joints)
        entries[f"{_PREFIX}input_format"] = "RGB float32 NCHW, (pixel/255 - mean) / std"
        return entries

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], input_shape: Sequence[object] | None = None) -> PoseContract:
        """The contract an ONNX file states; fields it does not state (older or foreign files) take the defaults,
        except the input size, which then comes from ``input_shape`` (N, 3, H, W). A stated size that
        contradicts a fixed ``input_shape`` raises ValueError."""
        stated = {name: json.loads(metadata[f"{_PREFIX}{key}"]) for name, key in _METADATA_KEYS.items()
                  if f"{_PREFIX}{key}" in metadata}
        fixed = input_shape is not None and all(isinstance(side, int) for side in input_shape[2:4])
        shape_size = (int(input_shape[3]), int(input_shape[2])) if fixed else None
        if "input_size" in stated:
            stated["input_size"] = tuple(stated["input_size"])
            if shape_size is not None and stated["input_size"] != shape_size:
                raise ValueError(f"metadata says input size {stated['input_size']} but the model's input is "
                                 f"{shape_size[0]}x{shape_size[1]} (width x height)")
        elif shape_size is not None:
            stated["input_size"] = shape_size
        else:
            raise ValueError(f"model input must have a fixed height and width, got shape {list(input_shape or [])}")
        for name in ("mean", "std", "keypoint_names"):
            if name in stated:
                stated[name] = tuple(stated[name])
        for name in ("skeleton", "flip_pairs"):
            if name in stated:
                stated[name] = tuple(tuple(pair) for pair in stated[name])
        return cls(**stated)


#: Contract field -> metadata key (after ``effpose.``); the means and deviations keep their historical names.
_METADATA_KEYS: dict[str, str] = {
    "input_size": "input_size", "stride": "stride", "padding": "padding", "mean": "input_mean",
    "std": "input_std", "keypoint_names": "keypoint_names", "skeleton": "skeleton", "flip_pairs": "flip_pairs",
    "decoder": "decoder", "refinement": "refinement", "dark_kernel": "dark_kernel",
}
