"""Parameter and multiply-accumulate (MAC) counts of a network at a given input size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effpose.contract import DEFAULT_INPUT_SIZE


@dataclass(frozen=True)
class Complexity:
    """Parameter count and MACs for one input of the given (width, height)."""

    params: int
    macs: int
    input_size: tuple[int, int]


def _layer_macs(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """MACs of one conv layer for batch 1, counting transposed convs at their true cost."""
    if isinstance(module, nn.ConvTranspose2d):
        # every input pixel scatters a KxK kernel into Cout/groups output channels
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return inputs[0, 0].numel() * module.in_channels * (module.out_channels // module.groups) * kernel
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def measure_complexity(model: nn.Module, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, channels: int = 3) -> Complexity:
    """Count parameters and MACs by running one (1, channels, H, W) forward pass with hooks on every conv.

    ``channels`` is 3 for a network; a single layer (e.g. one searchable op) takes its own input width.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, args[0], output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, input_size[1], input_size[0]))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, macs=total, input_size=input_size)
