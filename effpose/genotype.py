"""Architecture descriptions (genotypes) as plain data: the A/B/C tables and their JSON form.

A genotype is the stem width plus a list of stages; each stage has an output width, the stride of its
first layer, and one operation per layer. Operations are ``ir_k{K}_e{E}`` (inverted residual with a KxK
depthwise conv and expansion E) or ``skip`` (identity, allowed only after the first layer of a stage).
The architecture search writes genotypes in the same JSON form, and ``effpose.model`` builds any of them.
This module imports no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIP = "skip"
SEARCH_OPS: tuple[str, ...] = ("ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "ir_k7_e3", "ir_k7_e6", SKIP)
STEM_WIDTH = 32  # conv3x3 s2 3->32 and depthwise 3x3 on 32, fixed in every variant
_OP_PATTERN = re.compile(r"^ir_k(?P<kernel>[1-9]\d*)_e(?P<expansion>[1-9]\d*)$")


@dataclass(frozen=True)
class InvertedResidualSpec:
    """Kernel size and expansion ratio of one ``ir_k{K}_e{E}`` operation."""

    kernel: int
    expansion: int


def parse_op(op: str) -> InvertedResidualSpec | None:
    """Parse an operation name; ``None`` for ``skip``. Raises ValueError on anything else."""
    if op == SKIP:
        return None
    match = _OP_PATTERN.match(op)
    if match is None or int(match["kernel"]) % 2 == 0:
        raise ValueError(f"unknown operation {op!r}: expected 'skip' or 'ir_k<odd K>_e<E>' such as 'ir_k3_e6'")
    return InvertedResidualSpec(int(match["kernel"]), int(match["expansion"]))


@dataclass(frozen=True)
class Stage:
    """One backbone stage: output channels, stride of its first layer, and one op per layer."""

    channels: int
    stride: int
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Genotype:
    """A complete backbone description (stem output width + stages)."""

    name: str
    stem_channels: int
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if self.stem_channels <= 0 or not self.stages:
            raise ValueError(f"genotype {self.name!r}: needs a positive stem width and at least one stage")
        for index, stage in enumerate(self.stages):
            if stage.channels <= 0 or stage.stride not in (1, 2) or not stage.ops:
                raise ValueError(f"genotype {self.name!r} stage {index}: channels > 0, stride 1 or 2, >= 1 op")
            for op in stage.ops:
                parse_op(op)
            if stage.ops[0] == SKIP:
                raise ValueError(f"genotype {self.name!r} stage {index}: the first layer of a stage cannot be 'skip'")

    @property
    def output_channels(self) -> int:
        """Channels of the backbone output (the head's input)."""
        return self.stages[-1].channels

    @property
    def output_stride(self) -> int:
        """Total stride of stem (2) and stages."""
        stride = 2
        for stage in self.stages:
            stride *= stage.stride
        return stride

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the format the search job writes)."""
        return {
            "name": self.name,
            "stem_channels": self.stem_channels,
            "stages": [{"channels": s.channels, "stride": s.stride, "ops": list(s.ops)} for s in self.stages],
        }

    def skip_layers(self, layers: set[tuple[int, int]], name: str) -> Genotype:
        """This genotype with the layers ``(stage, layer)`` (0-based) replaced by ``skip``: a depth-pruned copy whose
        remaining layers keep their places (and state-dict names); a stage's first layer cannot be skipped."""
        unknown = [(s, i) for s, i in layers if not (0 <= s < len(self.stages) and 0 <= i < len(self.stages[s].ops))]
        if unknown:
            raise ValueError(f"genotype {self.name!r} has no layers {sorted(unknown)}")
        stages = tuple(Stage(stage.channels, stage.stride,
                             tuple(SKIP if (s, i) in layers else op for i, op in enumerate(stage.ops)))
                       for s, stage in enumerate(self.stages))
        return Genotype(name, self.stem_channels, stages)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        """Inverse of :meth:`to_dict`; validates the content."""
        try:
            stages = tuple(Stage(int(s["channels"]), int(s["stride"]), tuple(s["ops"])) for s in data["stages"])
            return cls(str(data["name"]), int(data["stem_channels"]), stages)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a genotype description: {exc}") from exc


def _stage(channels: int, stride: int, ops: str) -> Stage:
    """Stage from the spec's shorthand, e.g. ``"k5e6 k7e3*7"`` -> ir_k5_e6 then seven ir_k7_e3."""
    expanded: list[str] = []
    for token in ops.split():
        name, _, repeat = token.partition("*")
        op = SKIP if name == SKIP else re.sub(r"^k(\d+)e(\d+)$", r"ir_k\1_e\2", name)
        expanded.extend([op] * int(repeat or 1))
    return Stage(channels, stride, tuple(expanded))


EFFICIENTPOSE_A = Genotype("efficientpose_a", 16, (
    _stage(24, 2, "k3e6 k7e3 k3e6 k3e3"),
    _stage(32, 2, "k3e6 k3e3 k5e3 k3e3 k3e3 k3e3"),
    _stage(64, 2, "k5e6 k7e3*7"),
    _stage(96, 1, "k5e6 k5e6 k7e6 k5e6 k7e3 k7e3 k7e3 k7e6"),
))
EFFICIENTPOSE_B = Genotype("efficientpose_b", 24, (
    _stage(32, 2, "k3e6 k3e6 k5e3 k7e3 k5e3 k7e3"),
    _stage(64, 2, "k5e6 k5e3 k7e3*6"),
    _stage(96, 2, "k7e6 k5e6 k5e6 k7e3 k7e3 k3e6 k7e3 k7e6 k7e6 k7e3"),
    _stage(160, 1, "k7e3*6 skip k7e3 k7e6 k7e3"),
))
EFFICIENTPOSE_C = Genotype("efficientpose_c", 24, (
    _stage(32, 2, "k5e3 k3e6 k3e3 k3e3 skip k5e3"),
    _stage(64, 2, "k3e6 k7e6 k5e6 k3e6 k5e6 k3e6 k3e6 k3e6"),
    _stage(96, 2, "k7e6*8 k7e3 k7e6"),
    _stage(160, 1, "k7e6 k7e6 k7e3 k7e3 k7e6*6"),
))
# MobileNetV2 cut at output stride 16 (its 24/32/64/96 stages, all k3e6) with the same stem and head:
# the hand-designed baseline the searched networks are compared with.
MOBILENETV2 = Genotype("mobilenetv2", 16, (
    _stage(24, 2, "k3e6*2"),
    _stage(32, 2, "k3e6*3"),
    _stage(64, 2, "k3e6*4"),
    _stage(96, 1, "k3e6*3"),
))

GENOTYPES: dict[str, Genotype] = {
    "A": EFFICIENTPOSE_A,
    "B": EFFICIENTPOSE_B,
    "C": EFFICIENTPOSE_C,
    "mbv2": MOBILENETV2,
}


def load_genotype(name_or_path: str | Path) -> Genotype:
    """A built-in genotype by name (A, B, C, mbv2; case-insensitive) or one read from a JSON file."""
    key = str(name_or_path)
    for name, genotype in GENOTYPES.items():
        if key.lower() in (name.lower(), genotype.name):
            return genotype
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown architecture {key!r}: use one of {sorted(GENOTYPES)} or a genotype JSON file")
    return Genotype.from_dict(json.loads(path.read_text()))


def save_genotype(genotype: Genotype, path: str | Path) -> None:
    """Write a genotype as JSON (readable by :func:`load_genotype`)."""
    Path(path).write_text(json.dumps(genotype.to_dict(), indent=2) + "\n")
