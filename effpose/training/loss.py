"""Heatmap regression loss."""

from torch import Tensor, nn


class JointsMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps, each joint weighted (SimpleBaseline/HRNet).

    ``target_weight`` (N, J) is 0 for unlabelled joints, 1 for labelled ones and a smaller value for
    pseudo-labels. Scaled by 0.5 as in the reference implementations.
    """

    def forward(self, output: Tensor, target: Tensor, target_weight: Tensor) -> Tensor:
        weight = target_weight[:, :, None, None]
        return 0.5 * ((output - target) ** 2 * weight).mean()
