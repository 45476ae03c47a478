"""The models the Open Inference Protocol (KServe v2) frontends serve, protocol-neutral: tensors in, tensors out.

Two kinds, over the same inference core as ``/v1/pose``:

* ``effpose-pose``, the whole pipeline: input ``image`` (BYTES [1], an encoded image) and optional ``boxes`` (FP32
  [N, 4], x1, y1, x2, y2 in image pixels; none: the detector's); outputs ``keypoints`` (FP32 [N, 17, 3]: x, y in
  original-image pixels, score) and ``boxes`` (FP32 [N, 5]: the box and its score). Request parameters ``model``
  (a served pose model; default the default one), ``det_threshold``, ``max_persons`` and ``flip``.
* every served pose model under its own name, the raw network: input ``input`` (FP32 [B, 3, H, W], crops
  normalised as the model's contract says) and output ``heatmaps`` (FP32 [B, J, H/stride, W/stride]), computed in
  that model's batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from effpose import __version__
from service.core import InferenceCore, PoseRequest
from service.errors import BadRequest, ModelNotFound
from service.models import ServedModel

#: The v2 name of the whole pipeline.
PIPELINE_MODEL = "effpose-pose"
#: Tensor data types of the protocol and their numpy types (BYTES: object arrays of ``bytes``).
DATATYPES: dict[str, type] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol's metadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        """The ``{name, datatype, shape}`` object of model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, tensor: np.ndarray) -> np.ndarray:
        """``tensor`` if its data type and shape fit this spec; else :class:`BadRequest` naming the input."""
        if tensor.dtype != DATATYPES[self.datatype]:
            raise BadRequest(f"input {self.name!r} must be {self.datatype}", field=self.name)
        if tensor.ndim != len(self.shape) or any(want not in (-1, got) for want, got in zip(self.shape, tensor.shape)):
            raise BadRequest(f"input {self.name!r} must have shape {list(self.shape)} (-1: any), got "
                             f"{list(tensor.shape)}", field=self.name)
        return tensor


class V2Model(Protocol):
    """What the v2 frontends need of a model."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any],
                    timeout_s: float | None) -> dict[str, np.ndarray]:
        """The outputs (by name) for checked ``inputs``."""
        ...


def checked_inputs(model: V2Model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` checked against the model's specs: no unknown names, every required one present."""
    specs = {spec.name: spec for spec in model.inputs}
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise BadRequest(f"model {model.name!r} has no input {unknown[0]!r} (inputs: {', '.join(specs)})")
    missing = [name for name, spec in specs.items() if not spec.optional and name not in inputs]
    if missing:
        raise BadRequest(f"model {model.name!r} needs input {missing[0]!r}", field=missing[0])
    return {name: specs[name].check(tensor) for name, tensor in inputs.items()}


class PipelineModel:
    """``effpose-pose``: an encoded image (and optional boxes) in, every person's keypoints and box out."""

    name, platform = PIPELINE_MODEL, "effpose"
    inputs = (TensorSpec("image", "BYTES", (1,)), TensorSpec("boxes", "FP32", (-1, 4), optional=True))

    def __init__(self, core: InferenceCore):
        self.core = core
        self.version = __version__
        joints = core.models.default.info.num_joints
        self.outputs = (TensorSpec("keypoints", "FP32", (-1, joints, 3)), TensorSpec("boxes", "FP32", (-1, 5)))

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any],
                    timeout_s: float | None) -> dict[str, np.ndarray]:
        """Run the pipeline (admitted like ``/v1/pose``) on the image."""
        image = inputs["image"].reshape(-1)[0]
        if not isinstance(image, bytes) or not image:
            raise BadRequest("input 'image' must hold the encoded image bytes", field="image")
        boxes = inputs.get("boxes")
        request = PoseRequest(
            image=image, boxes=None if boxes is None else boxes.astype(np.float64).tolist(),
            det_threshold=_parameter(parameters, "det_threshold", float),
            max_persons=_parameter(parameters, "max_persons", int), flip=_parameter(parameters, "flip", bool),
            timeout_s=timeout_s, model=_parameter(parameters, "model", str))
        result = await self.core.estimate(request)
        joints = result.model.info.num_joints
        keypoints = np.array([person.keypoints for person in result.persons], np.float32).reshape(-1, joints, 3)
        boxes_out = np.array([[*person.box, person.box_score] for person in result.persons], np.float32)
        return {"keypoints": keypoints, "boxes": boxes_out.reshape(-1, 5)}


class NetworkModel:
    """A served pose model's raw network: normalised crops in, heatmaps out, in that model's batches."""

    platform = "onnxruntime_onnx"

    def __init__(self, core: InferenceCore, model: ServedModel):
        self.core, self.model = core, model
        self.name, self.version = model.name, model.version
        contract = model.info.contract
        width, height = contract.input_size
        heat_width, heat_height = contract.heatmap_size
        self.inputs = (TensorSpec("input", "FP32", (-1, 3, height, width)),)
        self.outputs = (TensorSpec("heatmaps", "FP32", (-1, contract.num_joints, heat_height, heat_width)),)

    async def infer(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any],
                    timeout_s: float | None) -> dict[str, np.ndarray]:
        """The network's heatmaps for a batch of crops (admitted like any request)."""
        return {"heatmaps": await self.core.run_network(self.model, inputs["input"], timeout_s)}


class V2Models:
    """Every model the v2 frontends serve, by name: the pipeline and each served pose model's network."""

    def __init__(self, core: InferenceCore):
        models: list[V2Model] = [PipelineModel(core), *(NetworkModel(core, model) for model in core.models)]
        self._by_name = {model.name: model for model in models}

    def get(self, name: str, version: str | None = None) -> V2Model:
        """The model ``name`` (at ``version`` when given); else :class:`ModelNotFound`."""
        model = self._by_name.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r}: serving {', '.join(self._by_name)}")
        if version and version != model.version:
            raise ModelNotFound(f"model {name!r} has version {model.version!r}, not {version!r}")
        return model

    def __iter__(self) -> Iterator[V2Model]:
        return iter(self._by_name.values())


def metadata(model: V2Model) -> dict[str, Any]:
    """The protocol's model metadata object."""
    return {"name": model.name, "versions": [model.version], "platform": model.platform,
            "inputs": [spec.metadata() for spec in model.inputs],
            "outputs": [spec.metadata() for spec in model.outputs]}


def _parameter(parameters: Mapping[str, Any], name: str, kind: type) -> Any:
    """A request parameter as ``kind`` (None when absent); a value of another type is a :class:`BadRequest`."""
    value = parameters.get(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"parameter {name!r} must be {kind.__name__}, got {value!r}", field=name)
    return value
