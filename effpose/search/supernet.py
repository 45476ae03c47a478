"""The super-network: EfficientPose's stem, head, SIC and predictor around one mixed layer per searchable layer.

A :class:`MixedLayer` holds every candidate op of its layer and an architecture vector ``alpha`` over them
(init 1e-3 * N(0, 1)). Each step runs one path: :meth:`SuperNet.sample` draws one op per layer, uniformly during
the warm-up and from softmax(alpha) after it. A path drawn from alpha multiplies each layer's output by
``w / w.detach()`` with ``w = softmax(alpha)[op]``: the value is unchanged (the factor is 1), but the task loss
now has the gradient ``dL/dw / w`` with respect to ``w``, which flows into alpha (a straight-through estimate).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effpose.genotype import Genotype
from effpose.keypoints import NUM_KEYPOINTS
from effpose.model.blocks import build_op
from effpose.model.network import HEAD_CHANNELS, build_head, build_sic, build_stem, init_pose_weights
from effpose.search.cost import CostTable
from effpose.search.space import SearchLayer, SearchSpace


class MixedLayer(nn.Module):
    """Every candidate op of one layer, its architecture parameters ``alpha``, and the path the next forward runs."""

    def __init__(self, layer: SearchLayer):
        super().__init__()
        self.layer = layer
        self.ops = nn.ModuleList(build_op(op, layer.cin, layer.cout, layer.stride) for op in layer.candidates)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(layer.candidates)))
        self.path = 0
        self.weighted = False  # the path was drawn from softmax(alpha): scale the output so that alpha learns

    @property
    def candidates(self) -> tuple[str, ...]:
        """The op names, in the order of ``alpha`` and ``ops``."""
        return self.layer.candidates

    def probabilities(self) -> Tensor:
        """softmax(alpha)."""
        return F.softmax(self.alpha, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.ops[self.path](x)
        if not self.weighted:
            return out
        weight = self.probabilities()[self.path]
        return out * (weight / weight.detach())


class SuperNet(nn.Module):
    """Crop (N, 3, H, W) -> heatmaps (N, J, H/4, W/4) through the sampled path of every mixed layer.

    Submodule names match :class:`~effpose.model.network.EfficientPose` (``stem``, ``backbone`` = stages of
    layers, ``head``, ``sic``, ``predictor``), so the FNA seed remap (:func:`effpose.model.seed.remap_lite0`)
    fills every candidate of every layer.
    """

    def __init__(self, space: SearchSpace, num_joints: int = NUM_KEYPOINTS, sic: bool = True):
        super().__init__()
        self.space, self.num_joints, self.sic_enabled = space, num_joints, sic
        layers = space.layers()
        self.stem = build_stem(space.stem_channels)
        self.backbone = nn.Sequential(*(
            nn.Sequential(*(MixedLayer(layer) for layer in layers if layer.stage == stage))
            for stage in range(len(space.stages))
        ))
        self.head = build_head(space.stages[-1].channels)
        self.sic = build_sic(HEAD_CHANNELS[-1]) if sic else nn.Identity()
        self.predictor = nn.Conv2d(HEAD_CHANNELS[-1], num_joints, 1)
        init_pose_weights(self, self.predictor)

    @property
    def mixed_layers(self) -> list[MixedLayer]:
        """The searchable layers in order."""
        return [layer for stage in self.backbone for layer in stage]

    def arch_parameters(self) -> list[nn.Parameter]:
        """Every layer's alpha (the architecture optimiser's parameters)."""
        return [layer.alpha for layer in self.mixed_layers]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the alphas (the weight optimiser's parameters)."""
        alphas = {id(alpha) for alpha in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in alphas]

    @torch.no_grad()
    def sample(self, generator: torch.Generator, uniform: bool) -> list[int]:
        """Choose the path of the next forward: one op per layer, uniformly or from softmax(alpha).

        ``generator`` (a CPU generator) makes the draw reproducible; seeded alike on every DDP rank (whose alphas
        are equal), it gives every rank the same path. Returns the chosen op index per layer.
        """
        layers = self.mixed_layers
        sizes = [len(layer.candidates) for layer in layers]
        if uniform:
            paths = [int(torch.randint(size, (), generator=generator)) for size in sizes]
        else:
            probabilities = torch.cat([layer.probabilities() for layer in layers]).float().cpu()  # one transfer
            paths = [int(torch.multinomial(p, 1, generator=generator)) for p in probabilities.split(sizes)]
        for layer, path in zip(layers, paths):
            layer.path, layer.weighted = path, not uniform
        return paths

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.sic(self.head(self.backbone(self.stem(x)))))

    def argmax_ops(self) -> list[str]:
        """The most likely op of every layer."""
        return [layer.candidates[int(layer.alpha.argmax())] for layer in self.mixed_layers]

    def derive(self, name: str) -> Genotype:
        """The searched architecture: argmax(alpha) in every layer."""
        return self.space.genotype(self.argmax_ops(), name)

    def expected_cost(self, table: CostTable) -> Tensor:
        """fixed cost + sum over layers of softmax(alpha) . cost(op), differentiable in alpha."""
        total = torch.tensor(table.fixed, dtype=torch.float32, device=self.predictor.weight.device)
        for layer in self.mixed_layers:
            costs = layer.alpha.new_tensor(table.costs(layer.layer.index, layer.candidates), dtype=torch.float32)
            total = total + (layer.probabilities().float() * costs).sum()
        return total

    @torch.no_grad()
    def mean_entropy(self) -> float:
        """Mean entropy (nats) of the layers' softmax(alpha): log(7) ~ 1.95 when uniform, 0 when decided."""
        probabilities = [layer.probabilities() for layer in self.mixed_layers]
        return float(torch.stack([-(p * p.clamp_min(1e-12).log()).sum() for p in probabilities]).mean())

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in search checkpoints)."""
        return {"space": self.space.to_dict(), "num_joints": self.num_joints, "sic": self.sic_enabled}
