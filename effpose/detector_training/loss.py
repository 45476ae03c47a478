"""CenterNet loss: penalty-reduced focal loss on the centre heatmap, L1 on log size and offset at box centres.

Weights default to 1 / 1 / 1. CenterNet weights its size L1 by 0.1 because it regresses raw sizes in pixels
(tens of units); here the size is log(w / 4), whose L1 error is the relative size error, of the same order as the
offset error in cells, so both regressions get weight 1 (the same balance CenterNet's 0.1 strikes for pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effpose.detector_training.model import DetectorOutput


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's focal loss on logits (N, 1, H, W) against a Gaussian heatmap with peaks of exactly 1.

    Positives (target == 1) weigh (1 - p)^alpha log p, negatives (1 - target)^beta p^alpha log(1 - p); the sum is
    divided by the number of positives (at least 1). Logs come from ``logsigmoid``, so no clamping is needed.
    """
    probability = torch.sigmoid(logits)
    positive = target.eq(1).float()
    positive_loss = F.logsigmoid(logits) * (1 - probability) ** alpha * positive
    negative_loss = F.logsigmoid(-logits) * probability**alpha * (1 - target) ** beta * (1 - positive)
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1.0)


def masked_l1(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the cells where ``mask`` (N, 1, H, W) is 1, per channel of (N, C, H, W) maps."""
    return (torch.abs(prediction - target) * mask).sum() / (mask.sum() * prediction.shape[1]).clamp(min=1.0)


class CenterNetLoss(nn.Module):
    """Weighted sum of :func:`focal_loss` (heatmap) and :func:`masked_l1` (size, offset); returns every part."""

    def __init__(self, heatmap_weight: float = 1.0, size_weight: float = 1.0, offset_weight: float = 1.0):
        super().__init__()
        self.weights = {"heatmap": heatmap_weight, "size": size_weight, "offset": offset_weight}

    def forward(self, output: DetectorOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``targets`` holds the maps of :func:`effpose.detector_training.targets.encode_targets`, batched."""
        mask = targets["mask"]
        parts = {
            "heatmap": focal_loss(output.heatmap.float(), targets["heatmap"]),
            "size": masked_l1(output.size.float(), targets["size"], mask),
            "offset": masked_l1(output.offset.float(), targets["offset"], mask),
        }
        return {"loss": sum(self.weights[name] * value for name, value in parts.items()), **parts}


def distillation_loss(student: DetectorOutput, teacher: DetectorOutput) -> Tensor:
    """Dense distillation from a trained detector (e.g. the full network a depth-pruned one was cut from).

    Centre heatmap: binary cross-entropy of the student's logits against the teacher's probabilities in every cell,
    summed and divided by the teacher's total probability mass (about the number of persons, as the focal loss
    divides by its positives). Size and offset: L1 weighted by the teacher's centre probability, so the student copies
    the regressions where the teacher sees a person. Zero gradient when the student computes what the teacher does.
    """
    target = torch.sigmoid(teacher.heatmap.float())
    heatmap = F.binary_cross_entropy_with_logits(student.heatmap.float(), target, reduction="sum")
    heatmap = (heatmap - F.binary_cross_entropy(target, target, reduction="sum")) / target.sum().clamp(min=1.0)
    return (heatmap + masked_l1(student.size.float(), teacher.size.float(), target)
            + masked_l1(student.offset.float(), teacher.offset.float(), target))
