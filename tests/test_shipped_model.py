"""The models that ship in the package (pose model, person detector): trained weights, a model card, and numbers
that reproduce."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from effpose.assets import DEFAULT_PERSON_DETECTOR, DEFAULT_POSE_MODEL, default_person_detector, default_pose_model
from effpose.detectors import OnnxDetector
from effpose.runtime import PoseEstimator

CARD = DEFAULT_POSE_MODEL.with_suffix(".json")
DETECTOR_CARD = DEFAULT_PERSON_DETECTOR.with_suffix(".json")
EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"


def test_shipped_model_is_trained_and_described() -> None:
    estimator = PoseEstimator(default_pose_model())
    assert estimator.info.weights == "trained"
    card = json.loads(CARD.read_text())
    assert estimator.info.input_size == (card["input"]["width"], card["input"]["height"])
    assert estimator.info.num_joints == 17
    assert card["export"]["onnx"] == DEFAULT_POSE_MODEL.name
    assert card["model"] == estimator.info.name
    for key in ("data", "recipe", "crops_seen", "cpu_hours", "wall_hours", "hardware"):
        assert key in card["training"]
    assert card["training"]["crops_seen"] > 460_800  # more than the five stages before the campaign
    assert {"coco_val", "coco_val_flip", "lspet_val", "lspet_val_flip"} <= set(card["validation_gt_boxes"])


@pytest.mark.slow
def test_eval_reproduces_the_card(data_dir: Path) -> None:
    expected = json.loads(CARD.read_text())["validation_gt_boxes"]["coco_val"]
    result = subprocess.run(
        [EFFPOSE, "eval", "--model", str(DEFAULT_POSE_MODEL), "--annotations", str(data_dir / expected["annotations"]),
         "--images", str(data_dir / "coco" / "images"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    for key in ("AP", "AP50", "AP75", "AR", "PCK@0.2"):
        assert measured[key] == pytest.approx(expected[key], abs=1e-3), key


def test_shipped_detector_is_trained_calibrated_and_described() -> None:
    detector = OnnxDetector(default_person_detector())
    card = json.loads(DETECTOR_CARD.read_text())
    metadata = {entry.key: entry.value for entry in onnx.load(str(DEFAULT_PERSON_DETECTOR)).metadata_props}
    assert metadata["effpose.weights"] == "trained"
    assert tuple(detector.input_size) == (card["input"]["width"], card["input"]["height"])
    assert card["export"]["onnx"] == DEFAULT_PERSON_DETECTOR.name
    assert detector.default_threshold == pytest.approx(card["score_threshold"]["value"], abs=1e-4)
    for key in ("data", "recipe", "samples_seen", "train_hours", "hardware"):
        assert key in card["training"]


@pytest.mark.slow
def test_eval_detector_reproduces_the_card(data_dir: Path) -> None:
    expected = json.loads(DETECTOR_CARD.read_text())["validation"]["coco_val"]
    result = subprocess.run(
        [EFFPOSE, "eval-detector", "--model", str(DEFAULT_PERSON_DETECTOR), "--annotations",
         str(data_dir / expected["annotations"]), "--images", str(data_dir / "coco" / "images"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    for key in ("AP", "AP50", "AP75", "AR"):
        assert measured[key] == pytest.approx(expected[key], abs=1e-3), key
