"""CenterNet-style single-class person detector on the EfficientPose trunk, with box decoding inside the graph.

Input: RGB in [0, 1], (N, 3, S, S), the letterboxed image; ImageNet normalisation is the network's first
operation. The trunk (:class:`~effpose.model.network.GenotypeTrunk`: stem, genotype backbone at stride 16, two
transposed convs up to stride 4) gives 32 stride-4 channels; three small heads (depthwise 3x3 + BN + ReLU,
1x1 + BN + ReLU, 1x1 with bias) predict per grid cell, as encoded by :mod:`effpose.detector_training.targets`:

* ``heatmap`` (1): logit that a person's box centre lies in the cell (bias -2.19, i.e. p = 0.1, as in CenterNet);
* ``size`` (2): log(w / 4), log(h / 4), the box size in log stride units (scale-invariant, always positive);
* ``offset`` (2): centre / 4 - cell, the centre's position inside the cell ([0, 1) at the centre cell; training
  with ``regression_cells="gaussian"`` also teaches the cells around it, whose offsets lie outside).

:class:`DetectionGraph` is what ships: peaks of the heatmap (3x3 max-pool suppression), the top K by score,
rows (x1, y1, x2, y2, sigmoid score) in input pixels clipped to the input, sorted by score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effpose.genotype import Genotype, load_genotype
from effpose.model.blocks import ConvBNReLU
from effpose.model.network import GenotypeTrunk, checkpoint_weights, init_weights
from effpose.processing import INPUT_MEAN, INPUT_STD

KIND = "person_detector"  # checkpoint config "kind" and ONNX metadata effpose.kind
STRIDE = 4
MAX_DETECTIONS = 100
HEATMAP_PRIOR = 0.1  # initial centre probability everywhere (CenterNet's bias -2.19)
_NOT_A_PEAK = -1e4  # logit given to cells that are not 3x3 maxima (sigmoid: 0)


class DetectorOutput(NamedTuple):
    """Raw head outputs, each (N, C, S/4, S/4): centre logits (C=1), log sizes and offsets (C=2)."""

    heatmap: Tensor
    size: Tensor
    offset: Tensor


def _prediction_head(width: int, outputs: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, pointwise + BN + ReLU, 1x1 prediction with bias."""
    return nn.Sequential(ConvBNReLU(width, width, 3, groups=width), ConvBNReLU(width, width, 1),
                         nn.Conv2d(width, outputs, 1))


class CenterNetDetector(GenotypeTrunk):
    """Person detector: image (N, 3, S, S), RGB 0-1 -> :class:`DetectorOutput` on the stride-4 grid."""

    def __init__(self, genotype: Genotype, max_detections: int = MAX_DETECTIONS):
        super().__init__(genotype)
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.max_detections = max_detections
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)
        width = self.feature_channels
        self.heatmap = _prediction_head(width, 1)
        self.size = _prediction_head(width, 2)
        self.offset = _prediction_head(width, 2)
        init_weights(self)
        for head in (self.heatmap, self.size, self.offset):
            nn.init.normal_(head[-1].weight, std=0.001)
            nn.init.zeros_(head[-1].bias)
        nn.init.constant_(self.heatmap[-1].bias, math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))

    def forward(self, images: Tensor) -> DetectorOutput:
        features = self.features((images - self.mean) / self.std)
        return DetectorOutput(self.heatmap(features), self.size(features), self.offset(features))

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints and the ONNX metadata)."""
        return {**super().config(), "kind": KIND, "max_detections": self.max_detections, "stride": STRIDE,
                "size_encoding": "log(w / stride), log(h / stride)", "offset_encoding": "centre / stride - cell"}


def heatmap_peaks(heatmap: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` highest logits (N, k) of (N, 1, H, W) centre logits that are maxima of their 3x3 neighbourhood,
    sorted descending, and their flat cell indices (N, k); cells that are not maxima count as logit -1e4."""
    peaks = heatmap.masked_fill(F.max_pool2d(heatmap, 3, 1, 1) != heatmap, _NOT_A_PEAK)
    return peaks.flatten(1).topk(k)


def decode_detections(output: DetectorOutput, k: int, input_size: int) -> Tensor:
    """Detections (N, k, 5): x1, y1, x2, y2 (input pixels, clipped to [0, input_size]) and score, best first."""
    logits, indices = heatmap_peaks(output.heatmap, k)
    grid = input_size // STRIDE
    columns = (indices % grid).float()
    rows = torch.div(indices, grid, rounding_mode="floor").float()
    regression = torch.cat([output.size, output.offset], 1).flatten(2)
    values = regression.gather(2, indices.unsqueeze(1).repeat(1, 4, 1))  # (N, 4, k)
    half_w, half_h = torch.exp(values[:, 0]) * (STRIDE / 2), torch.exp(values[:, 1]) * (STRIDE / 2)
    cx, cy = (columns + values[:, 2]) * STRIDE, (rows + values[:, 3]) * STRIDE
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1).clamp(0, input_size)
    return torch.cat([boxes, torch.sigmoid(logits).unsqueeze(-1)], dim=-1)


class DetectionGraph(nn.Module):
    """The shipped computation: letterboxed RGB 0-1 images (N, 3, S, S) -> detections (N, K, 5)."""

    def __init__(self, detector: CenterNetDetector, input_size: int):
        super().__init__()
        if input_size % 32 or (input_size // STRIDE) ** 2 < detector.max_detections:
            raise ValueError(f"input size {input_size} must be a multiple of 32 with at least "
                             f"{detector.max_detections} cells on the stride-{STRIDE} grid")
        self.detector = detector
        self.input_size = input_size

    def forward(self, images: Tensor) -> Tensor:
        return decode_detections(self.detector(images), self.detector.max_detections, self.input_size)


def build_centernet(arch: str | Genotype = "A", max_detections: int = MAX_DETECTIONS) -> CenterNetDetector:
    """A detector on a built-in genotype (A, B, C, mbv2), a genotype JSON path, or a Genotype."""
    genotype = arch if isinstance(arch, Genotype) else load_genotype(arch)
    return CenterNetDetector(genotype, max_detections=max_detections)


def load_detector(path: str | Path, moving_average: bool = False) -> tuple[CenterNetDetector, dict[str, Any]]:
    """Rebuild a detector from a checkpoint written by training (``best.pt`` / ``last.pt``) or by
    :func:`effpose.model.save_checkpoint`; returns it in eval mode and the checkpoint's other entries.

    ``moving_average``: where the checkpoint holds the weights' moving average (a resume point's ``ema``), load
    that instead of the raw weights (:func:`~effpose.model.network.checkpoint_weights`; ``best.pt`` holds it
    already).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not config or config.get("kind") != KIND:
        raise ValueError(f"checkpoint {path} does not hold a person detector (no config with kind {KIND!r})")
    model = CenterNetDetector(Genotype.from_dict(config["genotype"]), max_detections=config["max_detections"])
    # copies, so float16 resume points load into float32 weights
    model.load_state_dict(checkpoint_weights(checkpoint, moving_average))
    model.eval()
    return model, {key: value for key, value in checkpoint.items() if key not in ("state_dict", "config")}
