"""EfficientPose: fixed stem + searched backbone + slim transposed-conv head + SIC + 1x1 prediction.

The trunk (stem, backbone, head) is :class:`GenotypeTrunk`, which the person detector reuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effpose.genotype import SKIP, STEM_WIDTH, Genotype, load_genotype
from effpose.keypoints import NUM_KEYPOINTS
from effpose.model.blocks import ConvBNReLU, build_op

HEAD_CHANNELS = (64, 32)


def _upsample(cin: int, cout: int) -> nn.Sequential:
    """Transposed conv k4 s2 p1 (doubles the resolution, no bias), BN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def build_stem(stem_channels: int) -> nn.Sequential:
    """The fixed stem: conv3x3 s2 3->32, depthwise 3x3, linear 1x1 to ``stem_channels`` (output stride 2)."""
    return nn.Sequential(
        ConvBNReLU(3, STEM_WIDTH, 3, 2),
        ConvBNReLU(STEM_WIDTH, STEM_WIDTH, 3, 1, groups=STEM_WIDTH),
        ConvBNReLU(STEM_WIDTH, stem_channels, 1, act=False),
    )


def build_head(backbone_channels: int) -> nn.Sequential:
    """The slim head: two transposed convs (to 64, then 32 channels), stride 16 -> 4."""
    return nn.Sequential(_upsample(backbone_channels, HEAD_CHANNELS[0]), _upsample(*HEAD_CHANNELS))


def build_sic(width: int) -> nn.Sequential:
    """Spatial information correction: depthwise 3x3 (no bias, no BN) + ReLU before the prediction."""
    return nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False), nn.ReLU(inplace=True))


def init_weights(module: nn.Module) -> None:
    """Kaiming (fan-out) convs, N(0, 0.001) transposed convs, unit BN: over every submodule of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, std=0.001)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def init_pose_weights(model: nn.Module, predictor: nn.Conv2d) -> None:
    """A pose network's init: :func:`init_weights` over ``model``, then its heatmap ``predictor`` at N(0, 0.001)."""
    init_weights(model)
    nn.init.normal_(predictor.weight, std=0.001)
    nn.init.zeros_(predictor.bias)


class GenotypeTrunk(nn.Module):
    """Fixed stem + genotype backbone (output stride 16) + slim transposed-conv head (output stride 4).

    The trunk that EfficientPose and the person detector (``effpose.detector_training``) share: subclasses add their
    prediction layers, call :func:`init_weights` once everything is built, and describe themselves in
    :meth:`config`. Submodule names (``stem``, ``backbone``, ``head``) are the state-dict prefixes.
    """

    def __init__(self, genotype: Genotype):
        super().__init__()
        if genotype.output_stride != 16:
            raise ValueError(f"genotype {genotype.name!r}: output stride {genotype.output_stride}, the head needs 16")
        self.genotype = genotype
        self.stem = build_stem(genotype.stem_channels)
        stages: list[nn.Module] = []
        cin = genotype.stem_channels
        for stage in genotype.stages:
            layers = [build_op(op, cin if i == 0 else stage.channels, stage.channels, stage.stride if i == 0 else 1)
                      for i, op in enumerate(stage.ops)]
            stages.append(nn.Sequential(*layers))
            cin = stage.channels
        self.backbone = nn.Sequential(*stages)
        self.head = build_head(cin)

    @property
    def feature_channels(self) -> int:
        """Channels of the stride-4 features (:meth:`features`)."""
        return HEAD_CHANNELS[-1]

    def features(self, x: Tensor) -> Tensor:
        """Stride-4 features (N, 32, H/4, W/4) of an input (N, 3, H, W)."""
        return self.head(self.backbone(self.stem(x)))

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {"genotype": self.genotype.to_dict()}

    def layer_prefixes(self, skipped: bool) -> tuple[str, ...]:
        """State-dict prefixes (``backbone.S.L.``) of the backbone layers this genotype skips (``skipped``) or runs."""
        return tuple(f"backbone.{s}.{i}." for s, stage in enumerate(self.genotype.stages)
                     for i, op in enumerate(stage.ops) if (op == SKIP) == skipped)

    def start_as_identity(self, layer_prefixes: list[str]) -> None:
        """Make the backbone layers under ``layer_prefixes`` compute the identity (the last BatchNorm of each residual
        branch scaled to zero), so that a deeper copy of a trained network starts as that network (depth growth)."""
        layers = dict(self.named_modules())
        for prefix in layer_prefixes:
            layer = layers[prefix.rstrip(".")]
            if not getattr(layer, "use_residual", False):
                raise ValueError(f"layer {prefix.rstrip('.')} has no residual connection: it cannot start as identity")
            nn.init.zeros_(layer.body[-1][1].weight)


class EfficientPose(GenotypeTrunk):
    """Top-down pose network: image crop (N, 3, H, W) -> heatmaps (N, J, H/4, W/4).

    ``sic`` toggles the spatial information correction (depthwise 3x3 + ReLU before the prediction), so that
    the no-SIC ablation is the same class.
    """

    def __init__(self, genotype: Genotype, num_joints: int = NUM_KEYPOINTS, sic: bool = True):
        super().__init__(genotype)
        self.num_joints = num_joints
        self.sic_enabled = sic
        width = self.feature_channels
        self.sic = build_sic(width) if sic else nn.Identity()
        self.predictor = nn.Conv2d(width, num_joints, 1)
        init_pose_weights(self, self.predictor)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.sic(self.features(x)))

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {**super().config(), "num_joints": self.num_joints, "sic": self.sic_enabled}


def build_model(arch: str | Genotype, num_joints: int = NUM_KEYPOINTS, sic: bool = True) -> EfficientPose:
    """Build a network from a built-in name (A, B, C, mbv2), a genotype JSON path, or a Genotype."""
    genotype = arch if isinstance(arch, Genotype) else load_genotype(arch)
    return EfficientPose(genotype, num_joints=num_joints, sic=sic)


def save_checkpoint(model: GenotypeTrunk, path: str | Path, **extra: Any) -> None:
    """Save weights together with the network config, so that :func:`load_checkpoint` needs nothing else."""
    torch.save({"config": model.config(), "state_dict": model.state_dict(), **extra}, path)


def checkpoint_weights(checkpoint: dict[str, Any], moving_average: bool) -> dict[str, Tensor]:
    """The weights of a training checkpoint: its raw ``state_dict``, or (``moving_average``, where it holds one,
    as a resume point written with ``ema_decay`` > 0 does) the moving average that training validates and exports."""
    if moving_average and "ema" in checkpoint:
        prefix = "module."  # torch.optim.swa_utils.AveragedModel's names, beside its n_averaged counter
        return {name[len(prefix):]: value for name, value in checkpoint["ema"].items() if name.startswith(prefix)}
    return checkpoint["state_dict"]


def load_checkpoint(path: str | Path, arch: str | None = None,
                    moving_average: bool = False) -> tuple[EfficientPose, dict[str, Any]]:
    """Rebuild a network from a checkpoint written by :func:`save_checkpoint` (or the training job).

    A bare state dict is accepted too when ``arch`` names the architecture. ``moving_average``: see
    :func:`checkpoint_weights`. Returns the model (eval mode) and the checkpoint's remaining entries.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        checkpoint = {"state_dict": checkpoint}
    config = checkpoint.get("config")
    if config is not None:
        genotype = Genotype.from_dict(config["genotype"])
        if arch is not None and load_genotype(arch) != genotype:
            raise ValueError(f"checkpoint {path} holds {genotype.name!r}, not {arch!r}")
        model = EfficientPose(genotype, num_joints=config["num_joints"], sic=config["sic"])
    elif arch is not None:
        num_joints = checkpoint["state_dict"]["predictor.weight"].shape[0]
        model = build_model(arch, num_joints=num_joints, sic="sic.0.weight" in checkpoint["state_dict"])
    else:
        raise ValueError(f"checkpoint {path} has no network config: pass the architecture")
    model.load_state_dict(checkpoint_weights(checkpoint, moving_average))
    model.eval()
    return model, {k: v for k, v in checkpoint.items() if k not in ("state_dict", "config")}
