"""ONNX export of a pose network (dynamic batch, self-describing metadata) and a parity check against torch."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from effpose import __version__
from effpose.contract import DEFAULT_INPUT_SIZE, PoseContract
from effpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES
from effpose.model import EfficientPose

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"
OPSET = 17


def model_contract(model: EfficientPose, input_size: tuple[int, int]) -> PoseContract:
    """The contract of ``model`` at crops of ``input_size`` (width, height): its joints, their flip pairs."""
    joints = model.num_joints
    return PoseContract(input_size=tuple(input_size), keypoint_names=tuple(KEYPOINT_NAMES[:joints]),
                        flip_pairs=tuple(pair for pair in FLIP_PAIRS if max(pair) < joints))


def model_metadata(model: EfficientPose, input_size: tuple[int, int], weights: str, version: str) -> dict[str, str]:
    """Metadata stored in the ONNX file: identity, the network's config and the contract the runtime reads."""
    return {
        "effpose.name": model.genotype.name,
        "effpose.version": version,
        "effpose.weights": weights,
        **model_contract(model, input_size).to_metadata(),
        "effpose.config": json.dumps(model.config()),
    }


def save_onnx(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path, input_name: str, output_name: str,
    metadata: dict[str, str],
) -> Path:
    """Trace ``module`` on ``example`` (legacy exporter, opset :data:`OPSET`, dynamic batch axis), attach
    ``metadata`` as metadata_props, check the model and write it to ``path``."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "effpose"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export_onnx(
    model: EfficientPose,
    path: str | Path,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    weights: str = "trained",
    version: str = __version__,
) -> Path:
    """Export ``model`` for crops of ``input_size`` (width, height) with a dynamic batch axis.

    ``weights`` says what the weights are ("trained", "random-init", ...) and travels in the metadata.
    """
    model = model.eval()
    dummy = torch.zeros(2, 3, input_size[1], input_size[0])
    return save_onnx(model, dummy, path, INPUT_NAME, OUTPUT_NAME, model_metadata(model, input_size, weights, version))


def restate_contract(path: str | Path, **changes: object) -> PoseContract:
    """Rewrite the contract in an exported model's metadata with ``changes`` (e.g. the decoder refinement chosen on
    validation at release); the graph and the weights stay as they are. Returns the contract now stated."""
    proto = onnx.load(str(path))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    shape = [dim.dim_value or dim.dim_param for dim in proto.graph.input[0].type.tensor_type.shape.dim]
    contract = replace(PoseContract.from_metadata(metadata, shape), **changes)
    metadata.update(contract.to_metadata())
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return contract


@torch.no_grad()
def check_parity(
    model: EfficientPose,
    onnx_path: str | Path,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run torch and ONNX Runtime on the same random crops; return the max abs difference.

    Raises AssertionError when it exceeds ``atol``.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in batch_sizes:
        crops = rng.standard_normal((batch, 3, input_size[1], input_size[0])).astype(np.float32)
        expected = model.eval()(torch.from_numpy(crops)).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: crops})[0]
        if actual.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {actual.shape} != torch {expected.shape}")
        worst = max(worst, float(np.abs(actual - expected).max()))
    if worst > atol:
        raise AssertionError(f"ONNX Runtime differs from torch by {worst:.3g} > {atol:g}")
    return worst
