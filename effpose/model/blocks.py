"""The building blocks: conv-BN-ReLU and the searched ``ir_k{K}_e{E}`` inverted residual."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from effpose.genotype import parse_op


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    """KxK convolution (no bias), batch norm, optional ReLU; 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, KxK depthwise (carries the stride), 1x1 linear projection; residual when shapes allow.

    ``drop_path``: in training, the probability that a sample skips the residual branch (stochastic depth; the
    kept branches are scaled by 1 / (1 - drop_path)). Set it with :func:`set_drop_path`; it holds no weights.
    """

    def __init__(self, cin: int, cout: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        hidden = make_divisible(cin * expansion)
        self.use_residual = stride == 1 and cin == cout
        self.drop_path = 0.0
        self.body = nn.Sequential(
            ConvBNReLU(cin, hidden, 1),
            ConvBNReLU(hidden, hidden, kernel, stride, groups=hidden),
            ConvBNReLU(hidden, cout, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if not self.use_residual:
            return out
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            mask = torch.empty((out.shape[0], 1, 1, 1), dtype=out.dtype, device=out.device).bernoulli_(keep)
            out = out * mask / keep
        return x + out


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Give the residual blocks of ``model`` stochastic depth rising linearly with depth to ``rate`` (EfficientNet's
    rule: block i of n drops with ``rate * (i + 1) / n``); returns n. ``rate`` 0 turns it off."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path must lie in [0, 1), got {rate}")
    blocks = [module for module in model.modules() if isinstance(module, InvertedResidual) and module.use_residual]
    for i, block in enumerate(blocks):
        block.drop_path = rate * (i + 1) / len(blocks)
    return len(blocks)


def build_op(op: str, cin: int, cout: int, stride: int) -> nn.Module:
    """Build one layer from its operation name (``ir_k3_e6``, ``skip``, ...)."""
    spec = parse_op(op)
    if spec is None:
        if stride != 1 or cin != cout:
            raise ValueError(f"'skip' needs stride 1 and equal widths, got {cin}->{cout} stride {stride}")
        return nn.Identity()
    return InvertedResidual(cin, cout, spec.kernel, spec.expansion, stride)
