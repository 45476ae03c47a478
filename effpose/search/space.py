"""Search spaces: the stage layout (widths, strides, layer counts) is fixed, one op per layer is searched.

Every layer chooses among the six ``ir_k{K}_e{E}`` ops; a layer after the first of its stage may also be
``skip``. The "A" space has EfficientPose-A's layout, the "large" space that of B and C (which share it).
This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from effpose.genotype import EFFICIENTPOSE_A, EFFICIENTPOSE_C, SEARCH_OPS, SKIP, Genotype, Stage


@dataclass(frozen=True)
class StageLayout:
    """One stage of a search space: output channels, stride of its first layer, number of layers."""

    channels: int
    stride: int
    layers: int


@dataclass(frozen=True)
class SearchLayer:
    """One searchable layer: where it sits, its shape, and the ops it may choose.

    ``reduction`` is the total stride in front of the layer (stem included), so that its input is
    ``(cin, H / reduction, W / reduction)`` for an (H, W) crop.
    """

    index: int
    stage: int
    position: int
    cin: int
    cout: int
    stride: int
    reduction: int
    candidates: tuple[str, ...]

    def input_shape(self, input_size: tuple[int, int]) -> tuple[int, int, int]:
        """(channels, height, width) of this layer's input for crops of ``input_size`` (width, height)."""
        width, height = input_size
        return self.cin, height // self.reduction, width // self.reduction


@dataclass(frozen=True)
class SearchSpace:
    """Stem width and stage layouts; the candidates per layer follow from them (see the module doc)."""

    name: str
    stem_channels: int
    stages: tuple[StageLayout, ...]

    def __post_init__(self) -> None:
        # the space's member with the first candidate everywhere validates widths, strides and output stride 16
        if self.reference_genotype().output_stride != 16:
            raise ValueError(f"search space {self.name!r} must have output stride 16 (stem 2 x stage strides)")

    def layers(self) -> list[SearchLayer]:
        """Every searchable layer in order, with its input and output widths, stride and candidates."""
        layers: list[SearchLayer] = []
        cin, reduction = self.stem_channels, 2
        for stage_index, stage in enumerate(self.stages):
            for position in range(stage.layers):
                stride = stage.stride if position == 0 else 1
                candidates = tuple(op for op in SEARCH_OPS if op != SKIP or position > 0)
                layers.append(SearchLayer(len(layers), stage_index, position, cin, stage.channels, stride, reduction,
                                          candidates))
                cin, reduction = stage.channels, reduction * stride
        return layers

    def genotype(self, ops: Sequence[str], name: str) -> Genotype:
        """The member of this space with ``ops[i]`` in layer i (the form the rest of effpose builds)."""
        layers = self.layers()
        if len(ops) != len(layers):
            raise ValueError(f"search space {self.name!r} has {len(layers)} layers, got {len(ops)} ops")
        for layer, op in zip(layers, ops):
            if op not in layer.candidates:
                raise ValueError(f"layer {layer.index} of space {self.name!r} cannot be {op!r}: {layer.candidates}")
        stages, start = [], 0
        for stage in self.stages:
            stages.append(Stage(stage.channels, stage.stride, tuple(ops[start:start + stage.layers])))
            start += stage.layers
        return Genotype(name, self.stem_channels, tuple(stages))

    def reference_genotype(self) -> Genotype:
        """A member of the space (each layer's first candidate), e.g. to measure what does not depend on the ops."""
        stages = tuple(Stage(s.channels, s.stride, (SEARCH_OPS[0],) * s.layers) for s in self.stages)
        return Genotype(f"{self.name}_reference", self.stem_channels, stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in search checkpoints and cost tables)."""
        return {"name": self.name, "stem_channels": self.stem_channels,
                "stages": [{"channels": s.channels, "stride": s.stride, "layers": s.layers} for s in self.stages]}

    @classmethod
    def from_genotype(cls, name: str, genotype: Genotype) -> SearchSpace:
        """The space with ``genotype``'s stem width and stage layouts."""
        return cls(name, genotype.stem_channels,
                   tuple(StageLayout(s.channels, s.stride, len(s.ops)) for s in genotype.stages))


SEARCH_SPACES: dict[str, SearchSpace] = {
    "A": SearchSpace.from_genotype("A", EFFICIENTPOSE_A),
    "large": SearchSpace.from_genotype("large", EFFICIENTPOSE_C),  # B and C share this layout
}


def get_space(name: str) -> SearchSpace:
    """A built-in search space by name (``A`` or ``large``)."""
    if name not in SEARCH_SPACES:
        raise ValueError(f"unknown search space {name!r}: use one of {sorted(SEARCH_SPACES)}")
    return SEARCH_SPACES[name]
