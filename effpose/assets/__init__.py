"""Models that ship inside the package, located without any download."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEFAULT_POSE_MODEL = ASSETS_DIR / "efficientpose_a_coco17.onnx"


def default_pose_model() -> Path:
    """Path of the shipped trained pose model; a clear FileNotFoundError while none ships yet."""
    if not DEFAULT_POSE_MODEL.is_file():
        raise FileNotFoundError(
            f"no shipped pose model at {DEFAULT_POSE_MODEL}; pass --model PATH (e.g. one made by 'effpose export')"
        )
    return DEFAULT_POSE_MODEL
