"""Heatmap regression loss."""

from torch import Tensor, nn


class JointsMSELoss(nn.Module):
    """Mean squared error between predicted and target heatmaps, each joint weighted (SimpleBaseline/HRNet).

    ``target_weight`` (N, J) is 0 for unlabelled joints, 1 for labelled ones and a smaller value for
    pseudo-labels. Scaled by 0.5 as in the reference implementations. ``fg_weight`` > 0 weights each pixel by
    ``1 + fg_weight * target`` (foreground-weighted MSE), so the few pixels of a joint's blob are not outvoted by
    the background that an all-zero heatmap already fits.
    """

    def __init__(self, fg_weight: float = 0.0) -> None:
        super().__init__()
        self.fg_weight = fg_weight

    def forward(self, output: Tensor, target: Tensor, target_weight: Tensor) -> Tensor:
        weight = target_weight[:, :, None, None]
        if self.fg_weight:
            weight = weight * (1.0 + self.fg_weight * target)
        return 0.5 * ((output - target) ** 2 * weight).mean()
