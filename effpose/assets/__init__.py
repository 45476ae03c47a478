"""Models that ship inside the package, located without any download."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEFAULT_POSE_MODEL = ASSETS_DIR / "efficientpose_a_coco17.onnx"
DEFAULT_PERSON_DETECTOR = ASSETS_DIR / "person_detector.onnx"


def default_pose_model() -> Path:
    """Path of the shipped trained pose model; a clear FileNotFoundError while none ships yet."""
    if not DEFAULT_POSE_MODEL.is_file():
        raise FileNotFoundError(
            f"no shipped pose model at {DEFAULT_POSE_MODEL}; pass --model PATH (e.g. one made by 'effpose export')"
        )
    return DEFAULT_POSE_MODEL


def default_person_detector() -> Path | None:
    """Path of the shipped trained person detector (``effpose export-detector``), or None when none ships."""
    return DEFAULT_PERSON_DETECTOR if DEFAULT_PERSON_DETECTOR.is_file() else None
