"""Pre- and post-processing for top-down pose estimation, free of torch.

``affine`` crops person boxes out of images into model inputs; ``heatmap`` decodes the model's
stride-4 heatmaps into keypoints and maps them back to image pixels. Conventions (HRNet /
SimpleBaseline): pixel centres at integer coordinates, points (x, y), sizes (width, height).
"""

from effpose.processing.affine import (
    INPUT_MEAN,
    INPUT_STD,
    box_to_center_size,
    crop_person,
    crop_to_tensor,
    get_affine_transform,
    invert_affine,
    transform_points,
)
from effpose.processing.heatmap import decode_heatmaps, flip_heatmaps_back, heatmap_to_image, merge_flip

__all__ = [
    "INPUT_MEAN",
    "INPUT_STD",
    "box_to_center_size",
    "crop_person",
    "crop_to_tensor",
    "decode_heatmaps",
    "flip_heatmaps_back",
    "get_affine_transform",
    "heatmap_to_image",
    "invert_affine",
    "merge_flip",
    "transform_points",
]
