"""CenterNet loss: penalty-reduced focal loss on the centre heatmap, L1 on log size and offset at box centres
(optionally GIoU of the decoded boxes, as TTFNet).

Weights default to 1 / 1 / 1 (GIoU 0: off). CenterNet weights its size L1 by 0.1 because it regresses raw sizes in
pixels (tens of units); here the size is log(w / 4), whose L1 error is the relative size error, of the same order as
the offset error in cells, so both regressions get weight 1 (the same balance CenterNet's 0.1 strikes for pixels).
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


MAX_LOG_SIZE = 10.0  # log(w / stride) clamp before exp in the GIoU loss (untrained heads can output anything)


def cell_boxes(size: Tensor, offset: Tensor) -> Tensor:
    """Boxes (M, 4) x1, y1, x2, y2 in grid cells from (M, 2) log sizes and (M, 2) centres relative to their cell
    (the cell's own position cancels out of IoU, so it is left out)."""
    half = torch.exp(size.clamp(max=MAX_LOG_SIZE)) / 2
    return torch.cat([offset - half, offset + half], dim=1)


def giou_loss(output: DetectorOutput, targets: dict[str, Tensor]) -> Tensor:
    """1 - generalised IoU between the box each regression cell decodes and its target box, weighted by the cell's
    ``mask`` value and divided by the weights' sum (cells of weight 0 are never decoded)."""
    weight = targets["mask"][:, 0]
    cells = weight > 0
    if not cells.any():
        return output.size.sum() * 0.0

    def boxes(size: Tensor, offset: Tensor) -> Tensor:
        return cell_boxes(size.float().permute(0, 2, 3, 1)[cells], offset.float().permute(0, 2, 3, 1)[cells])

    predicted, target = boxes(output.size, output.offset), boxes(targets["size"], targets["offset"])
    inner = (torch.minimum(predicted[:, 2:], target[:, 2:]) - torch.maximum(predicted[:, :2], target[:, :2]))
    intersection = inner.clamp(min=0).prod(dim=1)
    area = (predicted[:, 2:] - predicted[:, :2]).prod(dim=1) + (target[:, 2:] - target[:, :2]).prod(dim=1)
    union = area - intersection
    hull = (torch.maximum(predicted[:, 2:], target[:, 2:]) - torch.minimum(predicted[:, :2], target[:, :2])).prod(dim=1)
    giou = intersection / union - (hull - union) / hull
    return ((1 - giou) * weight[cells]).sum() / weight[cells].sum()


class CenterNetLoss(nn.Module):
    """Weighted sum of :func:`focal_loss` (heatmap), :func:`masked_l1` (size, offset) and, with a positive
    ``giou_weight``, :func:`giou_loss`; returns every part it computes."""

    def __init__(self, heatmap_weight: float = 1.0, size_weight: float = 1.0, offset_weight: float = 1.0,
                 giou_weight: float = 0.0):
        super().__init__()
        self.weights = {"heatmap": heatmap_weight, "size": size_weight, "offset": offset_weight}
        if giou_weight > 0:
            self.weights["giou"] = giou_weight

    def forward(self, output: DetectorOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``targets`` holds the maps of :func:`effpose.detector_training.targets.encode_targets`, batched."""
        mask = targets["mask"]
        parts = {
            "heatmap": focal_loss(output.heatmap.float(), targets["heatmap"]),
            "size": masked_l1(output.size.float(), targets["size"], mask),
            "offset": masked_l1(output.offset.float(), targets["offset"], mask),
        }
        if "giou" in self.weights:
            parts["giou"] = giou_loss(output, targets)
        return {"loss": sum(self.weights[name] * value for name, value in parts.items()), **parts}


def teacher_targets(teacher: DetectorOutput) -> dict[str, Tensor]:
    """A trained detector's outputs as distillation targets: its centre probabilities (which also weight its
    regressions) and its size and offset maps."""
    probability = torch.sigmoid(teacher.heatmap.float())
    return {"heatmap": probability, "size": teacher.size.float(), "offset": teacher.offset.float(),
            "mask": probability}


def distillation_loss(student: DetectorOutput, teacher: dict[str, Tensor], regression: bool = True) -> Tensor:
    """Dense distillation from a teacher's maps: :func:`teacher_targets` of a trained detector (e.g. the full network
    a depth-pruned one was cut from), or the soft targets of an ONNX detector's boxes
    (:class:`~effpose.detector_training.teacher.OnnxTeacher`).

    Centre heatmap: binary cross-entropy of the student's logits against the teacher's probabilities in every cell,
    summed and divided by the teacher's total probability mass (about the number of persons, as the focal loss
    divides by its positives). Size and offset: L1 weighted by the teacher's ``mask`` (its centre probability, or its
    boxes' regression weights), so the student copies the regressions where the teacher sees a person;
    ``regression=False`` leaves them out (with Gaussian regression cells the student learns its off-centre
    regressions from the boxes, which a centre-trained teacher never did). Zero gradient when the student computes
    what the teacher does.
    """
    target = teacher["heatmap"]
    heatmap = F.binary_cross_entropy_with_logits(student.heatmap.float(), target, reduction="sum")
    heatmap = (heatmap - F.binary_cross_entropy(target, target, reduction="sum")) / target.sum().clamp(min=1.0)
    if not regression:
        return heatmap
    return (heatmap + masked_l1(student.size.float(), teacher["size"], teacher["mask"])
            + masked_l1(student.offset.float(), teacher["offset"], teacher["mask"]))
