"""Training data: COCO-format person records, top-down samples with heatmap targets, mixed sampling.

Needs torch (the ``train`` extra); the inference path (``effpose.processing``) does not import it.
"""

from effpose.data.coco import PersonRecord, load_person_records
from effpose.data.dataset import (
    AugmentConfig,
    CropParams,
    MixedSampler,
    TopDownDataset,
    gaussian_heatmaps,
    jitter_colour,
    read_image,
)

__all__ = [
    "AugmentConfig",
    "CropParams",
    "MixedSampler",
    "PersonRecord",
    "TopDownDataset",
    "gaussian_heatmaps",
    "jitter_colour",
    "load_person_records",
    "read_image",
]
