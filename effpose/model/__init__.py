"""Torch networks built from genotypes (training, search and export side; serving does not import this)."""

from effpose.model.blocks import InvertedResidual, build_op, set_drop_path
from effpose.model.complexity import Complexity, measure_complexity
from effpose.model.network import EfficientPose, GenotypeTrunk, build_model, load_checkpoint, save_checkpoint

__all__ = [
    "Complexity",
    "EfficientPose",
    "GenotypeTrunk",
    "InvertedResidual",
    "build_model",
    "build_op",
    "load_checkpoint",
    "measure_complexity",
    "save_checkpoint",
    "set_drop_path",
]
