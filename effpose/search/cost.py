"""Cost tables of a search space: each candidate op's cost in each layer, plus the fixed cost of the rest.

Two metrics: multiply-accumulates (``macs``: :func:`effpose.model.measure_complexity` of the op alone at its
layer's input resolution; the fixed part is stem, head, SIC and predictor, so that a member's table cost is
exactly ``measure_complexity`` of the built network) and measured latency (``latency_ms``: each op exported to
ONNX on its own and timed with ONNX Runtime at batch 1, median of ``reps`` runs; the fixed part is the stem and
the head with SIC and predictor, timed the same way). ``skip`` costs 0 in both. The JSON form
(``effpose build-lut``) is ``{"metric", "space", "input_size", "fixed", "layers": {"<index>": {op: cost}},
"measured_with"}``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from torch import nn

from effpose.export import save_onnx
from effpose.genotype import SKIP, Genotype
from effpose.keypoints import NUM_KEYPOINTS
from effpose.model import build_model, build_op, measure_complexity
from effpose.model.network import HEAD_CHANNELS, build_head, build_sic, build_stem
from effpose.onnx_session import resolve_providers
from effpose.search.space import SearchSpace

METRICS: tuple[str, ...] = ("macs", "latency_ms")


@dataclass(frozen=True)
class CostTable:
    """Per-layer op costs of one search space at one input size (width, height), in ``metric`` units."""

    metric: str
    space: dict[str, Any]  # SearchSpace.to_dict() of the space measured
    input_size: tuple[int, int]
    fixed: float
    layers: tuple[dict[str, float], ...]
    measured_with: dict[str, Any] = field(default_factory=dict)

    def costs(self, index: int, ops: tuple[str, ...]) -> list[float]:
        """The costs of ``ops`` in layer ``index``."""
        return [self.layers[index][op] for op in ops]

    def genotype_cost(self, genotype: Genotype) -> float:
        """Fixed cost + the cost of ``genotype``'s op in every layer (a member of the measured space)."""
        ops = [op for stage in genotype.stages for op in stage.ops]
        return self.fixed + sum(layer[op] for layer, op in zip(self.layers, ops, strict=True))

    def check(self, space: SearchSpace, input_size: tuple[int, int]) -> None:
        """Raise ValueError unless this table covers every candidate of ``space`` at ``input_size``."""
        if self.space != space.to_dict():
            raise ValueError(f"the cost table measures space {self.space}, not {space.to_dict()}")
        if tuple(self.input_size) != tuple(input_size):
            raise ValueError(f"the cost table is for input {self.input_size} (width, height), the search uses "
                             f"{tuple(input_size)}")
        missing = [(layer.index, op) for layer in space.layers() for op in layer.candidates
                   if layer.index >= len(self.layers) or op not in self.layers[layer.index]]
        if missing:
            raise ValueError(f"the cost table lacks (layer, op) {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (layers keyed by their index)."""
        return {"metric": self.metric, "space": self.space, "input_size": list(self.input_size), "fixed": self.fixed,
                "layers": {str(index): dict(costs) for index, costs in enumerate(self.layers)},
                "measured_with": self.measured_with}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        """Inverse of :meth:`to_dict`."""
        try:
            width, height = (int(v) for v in data["input_size"])
            layers = tuple({op: float(cost) for op, cost in data["layers"][str(index)].items()}
                           for index in range(len(data["layers"])))
            table = cls(str(data["metric"]), dict(data["space"]), (width, height), float(data["fixed"]), layers,
                        dict(data.get("measured_with", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cost table: {exc!r}") from exc
        if table.metric not in METRICS:
            raise ValueError(f"unknown cost metric {table.metric!r}: use one of {METRICS}")
        return table

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        """Read a JSON table written by :meth:`save` (``effpose build-lut``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cost table not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))


def mac_table(space: SearchSpace, input_size: tuple[int, int], num_joints: int = NUM_KEYPOINTS,
              sic: bool = True) -> CostTable:
    """MACs of every candidate op in every layer at ``input_size`` (width, height), and of the fixed parts."""
    layers = []
    for layer in space.layers():
        channels, height, width = layer.input_shape(input_size)
        layers.append({op: float(measure_complexity(build_op(op, layer.cin, layer.cout, layer.stride), (width, height),
                                                    channels).macs)
                       for op in layer.candidates})
    reference = space.reference_genotype()
    total = measure_complexity(build_model(reference, num_joints=num_joints, sic=sic), input_size).macs
    searched = sum(costs[op] for costs, op in zip(layers, (op for stage in reference.stages for op in stage.ops)))
    return CostTable("macs", space.to_dict(), tuple(input_size), float(total - searched), tuple(layers),
                     {"num_joints": num_joints, "sic": sic})


def _median_latency_ms(module: nn.Module, shape: tuple[int, int, int], folder: Path, options: ort.SessionOptions,
                       providers: list[str], reps: int, warmup: int) -> float:
    """Export ``module`` for a (1, *shape) input to ONNX and time it: median milliseconds of ``reps`` runs."""
    example = torch.randn(1, *shape)
    path = save_onnx(module.eval(), example, folder / "module.onnx", "input", "output", {})
    session = ort.InferenceSession(str(path), options, providers=providers)
    feed = {"input": example.numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def latency_table(space: SearchSpace, input_size: tuple[int, int], threads: int = 1, providers: str = "cpu",
                  reps: int = 20, warmup: int = 5, num_joints: int = NUM_KEYPOINTS, sic: bool = True) -> CostTable:
    """ONNX Runtime latency (ms, batch 1) of every candidate op in every layer and of the fixed parts.

    ``threads`` is ONNX Runtime's intra-op thread count (the service's ``EFFPOSE_THREADS``); ``providers`` is
    ``cpu`` or ``cuda`` (as for the runtime). ``skip`` is 0 ms: an identity costs nothing inside a network.
    """
    if reps < 1 or warmup < 0 or threads < 1:
        raise ValueError("reps and threads must be >= 1 and warmup >= 0")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    chosen = resolve_providers(providers)
    width, height = input_size
    with tempfile.TemporaryDirectory(prefix="effpose-lut-") as folder:
        def measure(module: nn.Module, shape: tuple[int, int, int]) -> float:
            return _median_latency_ms(module, shape, Path(folder), options, chosen, reps, warmup)

        layers = [{op: 0.0 if op == SKIP else measure(build_op(op, layer.cin, layer.cout, layer.stride),
                                                      layer.input_shape(input_size))
                   for op in layer.candidates} for layer in space.layers()]
        backbone_channels = space.stages[-1].channels
        output = nn.Sequential(build_head(backbone_channels),
                               build_sic(HEAD_CHANNELS[-1]) if sic else nn.Identity(),
                               nn.Conv2d(HEAD_CHANNELS[-1], num_joints, 1))
        fixed = (measure(build_stem(space.stem_channels), (3, height, width))
                 + measure(output, (backbone_channels, height // 16, width // 16)))
    return CostTable("latency_ms", space.to_dict(), tuple(input_size), fixed, tuple(layers),
                     {"threads": threads, "providers": chosen, "reps": reps, "warmup": warmup, "batch": 1,
                      "num_joints": num_joints, "sic": sic, "onnxruntime": ort.__version__})
