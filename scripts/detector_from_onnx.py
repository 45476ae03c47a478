"""Recover a trainable person-detector checkpoint from a shipped detector ONNX (whose training run is gone).

    python scripts/detector_from_onnx.py --onnx effpose/assets/person_detector.onnx --out runs/detector_seed.pt

The export folds every Conv + BatchNorm pair into one convolution with a bias. Each fused (W', b') is loaded as the
convolution's weight, and its BatchNorm is set from the statistics of that convolution's output on real letterboxed
training images (mean m, std s): gamma = s, beta = m + b', running mean m, running variance s^2 - eps. In eval mode
the network then computes exactly what the ONNX file computes (checked here on those images), and in training mode
batch statistics close to (m, s) keep it close, so training continues where the shipped detector stopped.
Layers the export kept unfused (transposed convolutions with their BatchNorm, the output convolutions) are
loaded by name. The result is a checkpoint for a config's ``init_checkpoint``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from effpose.detector_training.augment import DetectionAugment
from effpose.detector_training.config import DetectionSource
from effpose.detector_training.data import DetectionDataset, load_source
from effpose.detector_training.model import CenterNetDetector, DetectionGraph
from effpose.genotype import Genotype
from effpose.model import save_checkpoint

PREFIX = "detector."  # the ONNX graph wraps the detector in DetectionGraph


def execution_order(model: nn.Module, images: torch.Tensor) -> list[nn.Module]:
    """Convolutions (plain and transposed) in the order a forward pass runs them, as the ONNX graph lists them."""
    order: list[nn.Module] = []
    hooks = [module.register_forward_hook(lambda module, *_: order.append(module))
             for module in model.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return order


def following_batchnorm(model: nn.Module) -> dict[nn.Module, nn.BatchNorm2d]:
    """Each convolution that a BatchNorm follows in the same Sequential, mapped to that BatchNorm."""
    pairs = {}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            pairs.update({first: second for first, second in zip(children, children[1:])
                          if isinstance(second, nn.BatchNorm2d)})
    return pairs


def main() -> None:
    """Load, re-derive the BatchNorms, check parity with ONNX Runtime, save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, default=Path("effpose/assets/person_detector.onnx"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--annotations", default="coco/annotations/person_keypoints_train.json",
                        help="images for the BatchNorm statistics (under the data root)")
    parser.add_argument("--images", default="coco/images")
    parser.add_argument("--count", type=int, default=32, help="how many letterboxed images")
    args = parser.parse_args()

    graph = onnx.load(args.onnx)
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    config = json.loads(metadata["effpose.config"])
    input_size = json.loads(metadata["effpose.input_size"])[0]
    model = CenterNetDetector(Genotype.from_dict(config["genotype"]), max_detections=config["max_detections"]).eval()
    tensors = {item.name: torch.from_numpy(numpy_helper.to_array(item).copy()) for item in graph.graph.initializer}

    records = load_source(DetectionSource(annotations=args.annotations, images=args.images, name="bn"))
    dataset = DetectionDataset(records[: args.count], input_size, DetectionAugment.none())
    images = torch.stack([dataset[index]["image"] for index in range(len(dataset))])

    state = model.state_dict()
    named = {name[len(PREFIX):]: value for name, value in tensors.items() if name[len(PREFIX):] in state}
    model.load_state_dict(named, strict=False)
    batchnorms = following_batchnorm(model)
    nodes = [node for node in graph.graph.node if node.op_type in ("Conv", "ConvTranspose")]
    convolutions = execution_order(model, images[:1])
    if len(nodes) != len(convolutions):
        raise ValueError(f"{len(nodes)} ONNX convolutions but {len(convolutions)} in the network")
    fused_bias: dict[nn.Module, torch.Tensor] = {}
    for node, conv in zip(nodes, convolutions):
        weight = tensors[node.input[1]]
        if weight.shape != conv.weight.shape:
            raise ValueError(f"{node.input[1]}: shape {tuple(weight.shape)} != {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(weight)
        if node.op_type == "Conv" and conv in batchnorms and not node.input[1].startswith(PREFIX):
            fused_bias[conv] = tensors[node.input[2]]

    outputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [conv.register_forward_hook(lambda module, _, out: outputs.__setitem__(module, out)) for conv in fused_bias]
    for conv in fused_bias:  # identity BatchNorm first, so that each conv's output is what the ONNX conv computes
        norm = batchnorms[conv]
        norm.weight.data.fill_(1.0)
        norm.bias.data.copy_(fused_bias[conv])
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    for conv, bias in fused_bias.items():
        norm, output = batchnorms[conv], outputs[conv]
        mean = output.mean(dim=(0, 2, 3))
        variance = output.var(dim=(0, 2, 3), unbiased=False).clamp(min=2 * norm.eps)
        norm.weight.data.copy_(torch.sqrt(variance))
        norm.bias.data.copy_(mean + bias)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance - norm.eps)

    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: images[:4].numpy()})[0]
    with torch.no_grad():
        actual = DetectionGraph(model, input_size)(images[:4]).numpy()
    error = float(np.abs(actual - expected).max())
    print(f"{len(fused_bias)} fused Conv+BN pairs re-derived; max |torch - onnx| over 4 images: {error:.2e}")
    if error > 1e-2:
        raise SystemExit("parity check failed: the recovered network does not compute what the ONNX file does")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, args.out, recovered_from=str(args.onnx), parity_max_abs_error=error)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
