"""INT8 post-training static quantization of the pose model and the person detector (ONNX Runtime, QDQ format).

Calibration data is prepared by the library's own inference code, so the quantizer sees exactly what the runtime
feeds the network: person crops cut by :meth:`effpose.runtime.PoseEstimator.prepare` around annotated boxes, or
whole images letterboxed by :func:`effpose.detectors.onnx_detector.preprocess`. Weights are quantized per output
channel (int8, symmetric, in the 7-bit range -64..64 by default: see :func:`quantize_model`), activations per
tensor (uint8 by default) with ranges from an entropy, percentile or min-max calibration. The model is first put
through ONNX Runtime's quantization pre-processing (shape inference, BatchNorm folded into the convolutions) and
then cross-layer equalization (:func:`equalize_cross_layer`, exact in float: it rescales channels between a
convolution and the next so that per-tensor activation ranges fit them all).

Only the network trunk is quantized: the Conv / ConvTranspose / Add / Relu nodes that come before any other op
reading their results (:func:`trunk_nodes`; an input normalisation before them stays float32 too). Nodes after
it (the detector's decoding: MaxPool peak picking, TopK, Exp of the box sizes) stay float32, and so do the
output layers (the trunk nodes whose result leaves the trunk: the pose model's heatmap predictor, the detector's
three prediction convolutions), whose 8-bit outputs would quantize the heatmap peaks, scores and box sizes
themselves. The quantized file carries the original's metadata (input contract, name, the
detector's calibrated threshold) plus ``effpose.precision`` and ``effpose.quantization`` (how it was made), so the
runtime and the service load it like any other model. Needs no torch.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from effpose.data.coco import load_person_records, read_coco_json
from effpose.detectors.onnx_detector import PERSON_DETECTOR_KIND, OnnxDetector, preprocess
from effpose.onnx_session import create_session
from effpose.runtime import PoseEstimator

Method = Literal["entropy", "percentile", "minmax"]
#: Activation types: uint8 (U8S8, the default) or int8 (S8S8). On AVX2 without VNNI, ORT 1.32 fused only part of
#: an S8S8 QDQ graph into QLinearConv (the other 1x1 convolutions ran as DequantizeLinear -> float Conv ->
#: QuantizeLinear, no faster than fp32); U8S8 fused every convolution (see docs/benchmarks.md).
ACTIVATION_TYPES: dict[str, QuantType] = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
ModelKind = Literal["pose", "detector"]
METHODS: dict[str, CalibrationMethod] = {
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "minmax": CalibrationMethod.MinMax,
}
#: Op types of the quantized trunk; their int8 kernels (QLinearConv, QLinearAdd) or QDQ folding exist on CPU.
TRUNK_OP_TYPES: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Add", "Relu"})
PRECISION_KEY = "effpose.precision"
QUANTIZATION_KEY = "effpose.quantization"
#: Report fields left out of the model's metadata (only known once the file is written).
NOT_IN_METADATA = ("out", "fp32_mb", "int8_mb", "fidelity")
#: Most samples whose activations the calibrator holds in memory at once (ONNX Runtime's calibrators keep every
#: intermediate tensor of what they are fed: about 70 MB per 256x192 crop). Fed one sample per run, so that every
#: batch has the same shape, as the histogram calibrators need.
MAX_SAMPLES_IN_MEMORY = 16


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_model` did: where, how, on what, and what stayed float32."""

    model: str
    out: str
    kind: str
    method: str
    activation_type: str
    reduce_range: bool
    equalized_pairs: int
    calibration_annotations: str
    calibration_samples: int
    excluded_nodes: list[str]
    quantized_op_types: list[str]
    fp32_mb: float = 0.0
    int8_mb: float = 0.0
    fidelity: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class ArrayDataReader(CalibrationDataReader):
    """Feeds a stack of ready network inputs to ONNX Runtime's calibrator one sample per run.

    Supports the calibrator's strided collection (``set_range``): it then reads the samples chunk by chunk.
    """

    def __init__(self, input_name: str, samples: np.ndarray):
        self.input_name = input_name
        self.samples = samples
        self._indices: Iterator[int] = iter(())
        self.set_range(0, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read samples ``start_index`` to ``end_index`` (exclusive) next."""
        self._indices = iter(range(start_index, min(end_index, len(self.samples))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self._indices, None)
        return None if index is None else {self.input_name: self.samples[index : index + 1]}

    def rewind(self) -> None:
        self.set_range(0, len(self.samples))


def calibration_stride(count: int, most: int = MAX_SAMPLES_IN_MEMORY) -> int:
    """The largest chunk of at most ``most`` samples that divides ``count`` (the calibrator needs equal chunks)."""
    return max(size for size in range(1, min(most, count) + 1) if count % size == 0)


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image, read as the CLI and the evaluation read it; FileNotFoundError when unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read calibration image {path}")
    return image


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer): deterministic and
    covering the whole file rather than its first images."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def pose_calibration_crops(estimator: PoseEstimator, annotations: Path, images: Path, count: int) -> np.ndarray:
    """Network inputs (N, 3, H, W) of ``count`` annotated persons, cropped by the estimator as inference does."""
    records = spread(load_person_records(annotations, images), count)
    by_image: dict[Path, list[tuple[float, float, float, float]]] = {}
    for record in records:
        by_image.setdefault(record.image_path, []).append(record.box_xyxy)
    tensors = [estimator.prepare(read_image(path), boxes).tensor for path, boxes in by_image.items()]
    return np.concatenate(tensors) if tensors else np.zeros((0, 3, *estimator.info.input_size[::-1]), np.float32)


def detector_calibration_images(detector: OnnxDetector, annotations: Path, images: Path,
                                count: int) -> np.ndarray:
    """Network inputs (N, 3, S, S) of ``count`` listed images, letterboxed as the detector does."""
    listed = spread(sorted(read_coco_json(annotations)["images"], key=lambda image: image["id"]), count)
    return np.concatenate([preprocess(read_image(images / image["file_name"]), detector.input_size,
                                      detector.layout)[0] for image in listed])


def model_kind(model: onnx.ModelProto) -> ModelKind:
    """``detector`` for the project's person detector (metadata ``effpose.kind``), else ``pose``."""
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    return "detector" if metadata.get("effpose.kind") == PERSON_DETECTOR_KIND else "pose"


def trunk_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The network trunk, in graph order: the nodes of :data:`TRUNK_OP_TYPES` that come before any other op
    reading the trunk (the decoding). Other ops before the trunk (input normalisation) are left out of it."""
    trunk, trunk_tensors, after = [], set(), set()  # after: tensors computed from the decoding on
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = set(node.input)
        if node.op_type in TRUNK_OP_TYPES and not inputs & after:
            trunk.append(node)
            trunk_tensors.update(node.output)
        elif inputs & (trunk_tensors | after):
            after.update(node.output)
    return trunk


def output_layers(graph: onnx.GraphProto, trunk: list[onnx.NodeProto]) -> list[str]:
    """Names of the trunk nodes whose output leaves the trunk (a graph output or a non-trunk node's input)."""
    trunk_names = {node.name for node in trunk}
    consumers = _consumers(graph)
    graph_outputs = {output.name for output in graph.output}
    return [node.name for node in trunk
            if any(out in graph_outputs or any(c.name not in trunk_names for c in consumers.get(out, []))
                   for out in node.output)]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _group(node: onnx.NodeProto) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)


def equalization_pairs(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(first, second) convolutions joined by a Relu that nothing else reads, whose weights are initializers
    used once: the second either dense (group 1) or depthwise (one group per channel)."""
    consumers = _consumers(graph)
    weights = {initializer.name for initializer in graph.initializer}
    uses = {name: len(nodes) for name, nodes in consumers.items()}
    pairs = []
    for first in graph.node:
        if first.op_type != "Conv" or len(first.input) < 3 or len(consumers.get(first.output[0], [])) != 1:
            continue
        relu = consumers[first.output[0]][0]
        followers = consumers.get(relu.output[0], []) if relu.op_type == "Relu" else []
        if len(followers) != 1 or followers[0].op_type != "Conv":
            continue
        second = followers[0]
        own_weights = all(name in weights and uses[name] == 1 for name in (*first.input[1:3], second.input[1]))
        if own_weights and _group(second) in (1, _channels(graph, second)):
            pairs.append((first, second))
    return pairs


def _channels(graph: onnx.GraphProto, conv: onnx.NodeProto) -> int:
    weight = next(i for i in graph.initializer if i.name == conv.input[1])
    return weight.dims[0]


#: Bound of the cross-layer equalization scales (16 was the best of 4, 16, 64, 1000 on the shipped pose model).
MAX_SCALE = 16.0


def equalize_cross_layer(model: onnx.ModelProto, passes: int = 1) -> int:
    """Cross-layer equalization (Nagel et al., *Data-free quantization*, ICCV 2019), in place.

    For every Conv -> Relu -> Conv pair, output channel i of the first is divided by s_i and input channel i of
    the second multiplied by it (exact, as Relu(x / s) = Relu(x) / s for s > 0), with s_i = sqrt(r1_i / r2_i)
    for the channel's weight ranges r1_i, r2_i, so that both end up with the same range. With BatchNorm folded,
    a depthwise network has channels of very different ranges; a per-tensor activation scale then rounds the
    small channels to zero, which the next layer's large weights amplify. ``s_i`` is clipped to
    [1 / :data:`MAX_SCALE`, :data:`MAX_SCALE`] and dead channels keep 1: unclipped, or over several passes (which
    compound the clip), channels that the next layer nearly ignores grow until they own the tensor's range (on the
    shipped pose model both measured worse than one clipped pass). Returns the number of pairs.
    """
    from onnx import numpy_helper

    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    pairs = equalization_pairs(model.graph)
    for _ in range(passes):
        for first, second in pairs:
            w1, b1, w2 = (numpy_helper.to_array(initializers[name]).astype(np.float64)
                          for name in (first.input[1], first.input[2], second.input[1]))
            depthwise = _group(second) > 1
            r1 = np.abs(w1).reshape(len(w1), -1).max(axis=1)
            r2 = (np.abs(w2).reshape(len(w2), -1).max(axis=1) if depthwise
                  else np.abs(w2).max(axis=(0, 2, 3)))
            alive = (r1 > 1e-6 * r1.max()) & (r2 > 1e-6 * r2.max())  # dead channels: scaling would blow them up
            scale = np.clip(np.where(alive, np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0), 1 / MAX_SCALE, MAX_SCALE)
            w1 /= scale[:, None, None, None]
            b1 /= scale
            w2 *= scale[:, None, None, None] if depthwise else scale[None, :, None, None]
            for name, value in ((first.input[1], w1), (first.input[2], b1), (second.input[1], w2)):
                initializers[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return len(pairs)


def copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    """Give ``target`` the metadata of ``source`` plus ``extra`` (the quantizer drops metadata_props)."""
    original = onnx.load(str(source))
    quantized = onnx.load(str(target))
    entries = {entry.key: entry.value for entry in original.metadata_props} | extra
    onnx.helper.set_model_props(quantized, entries)
    quantized.producer_name = original.producer_name or quantized.producer_name
    onnx.save(quantized, str(target))


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (1 by default: calibration is not timed)."""
    return create_session(path, "cpu", intra_op_threads=threads, inter_op_threads=1)


def output_fidelity(fp32: Path, int8: Path, samples: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """How far the int8 model's first output is from the fp32 model's on ``samples``: max and mean absolute
    difference and the fp32 output's spread (std), for the report."""
    sessions = [session(fp32), session(int8)]
    name = sessions[0].get_inputs()[0].name
    diffs, references = [], []
    for start in range(0, len(samples), batch_size):
        feed = {name: samples[start : start + batch_size]}
        reference, quantized = (s.run(None, feed)[0] for s in sessions)
        diffs.append(np.abs(quantized.astype(np.float64) - reference).ravel())
        references.append(reference.ravel())
    diff, reference = np.concatenate(diffs), np.concatenate(references)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "fp32_output_std": float(reference.std())}


def calibration_samples(model: Path, kind: ModelKind, annotations: Path, images: Path, count: int) -> np.ndarray:
    """The calibration inputs of a pose model (person crops) or a detector (letterboxed whole images)."""
    if kind == "detector":
        return detector_calibration_images(OnnxDetector(model, intra_op_threads=1), annotations, images, count)
    return pose_calibration_crops(PoseEstimator(model, intra_op_threads=1), annotations, images, count)


def quantize_model(
    model: str | Path,
    out: str | Path,
    annotations: str | Path,
    images: str | Path,
    method: Method = "percentile",
    count: int = 300,
    exclude: Iterable[str] | None = None,
    keep_output_layers_fp32: bool = True,
    activation_type: str = "uint8",
    equalize: bool = True,
    reduce_range: bool = True,
) -> QuantizationReport:
    """Quantize a pose model or person detector ``model`` to ``out`` (int8 QDQ), calibrated on ``count``
    samples of a COCO-format set (``annotations`` + ``images``).

    The kind is read from the metadata. ``exclude`` names more nodes to keep float32 (names as in the
    pre-processed graph, listed in the report); ``keep_output_layers_fp32`` keeps the output layers float32
    (see the module docstring); ``activation_type`` is a key of :data:`ACTIVATION_TYPES`; ``equalize`` applies
    :func:`equalize_cross_layer` first. ``reduce_range`` quantizes the weights to 7 bits: on x86 CPUs without VNNI
    (AVX2, AVX-512F) ONNX Runtime's U8S8 kernels add pairs of uint8 x int8 products in int16 (VPMADDUBSW), which
    saturates with full-range weights (2 x 255 x 127 > 32767); 7-bit weights cannot (2 x 255 x 64 < 32767). On an
    AVX2 CPU they keep more of the fp32 accuracy than 8-bit weights (docs/results.md, *7-bit weights*); an int8 file
    is made once and run on CPUs of either kind. Returns the report, also stored in the model's metadata.
    """
    model, out, annotations, images = Path(model), Path(out), Path(annotations), Path(images)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"unknown activation type {activation_type!r}: use one of {', '.join(ACTIVATION_TYPES)}")
    if count <= 0:
        raise ValueError(f"the calibration needs at least one sample, got {count}")
    kind = model_kind(onnx.load(str(model), load_external_data=False))
    samples = calibration_samples(model, kind, annotations, images, count)
    with tempfile.TemporaryDirectory(prefix="effpose-quantize-") as workdir:
        prepared = Path(workdir) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared))
        prepared_model = onnx.load(str(prepared))
        pairs = equalize_cross_layer(prepared_model) if equalize else 0
        onnx.save(prepared_model, str(prepared))
        graph = prepared_model.graph
        trunk = trunk_nodes(graph)
        if not trunk:
            raise ValueError(f"{model} has no Conv / ConvTranspose / Add / Relu nodes to quantize")
        excluded = (output_layers(graph, trunk) if keep_output_layers_fp32 else []) + list(exclude or [])
        quantize_static(
            str(prepared), str(out), ArrayDataReader(graph.input[0].name, samples),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=ACTIVATION_TYPES[activation_type], weight_type=QuantType.QInt8,
            nodes_to_quantize=[node.name for node in trunk], nodes_to_exclude=excluded,
            calibrate_method=METHODS[method], reduce_range=reduce_range,
            extra_options={"CalibStridedMinMax": calibration_stride(len(samples))},  # strided: all methods
        )
    report = QuantizationReport(
        model=str(model), out=str(out), kind=kind, method=method, activation_type=activation_type,
        reduce_range=reduce_range, equalized_pairs=pairs, calibration_annotations=str(annotations),
        calibration_samples=len(samples), excluded_nodes=excluded,
        quantized_op_types=sorted({node.op_type for node in trunk}),
        fp32_mb=round(model.stat().st_size / 1e6, 3),
    )
    copy_metadata(model, out, {PRECISION_KEY: "int8", QUANTIZATION_KEY: json.dumps(
        {key: value for key, value in report.to_json().items() if key not in NOT_IN_METADATA})})
    return QuantizationReport(**{**report.to_json(), "int8_mb": round(out.stat().st_size / 1e6, 3),
                                 "fidelity": output_fidelity(model, out, samples)})
