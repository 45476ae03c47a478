"""The effpose console script, run as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from effpose.assets import DEFAULT_PERSON_DETECTOR
from effpose.detectors import OnnxDetector
from effpose.runtime import PoseEstimator

EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EFFPOSE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_info_prints_spec_counts() -> None:
    result = run("info", "--arch", "A", "--input", "256x256", "--joints", "16")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == 1_299_360
    assert abs(info["macs"] / 0.542e9 - 1) < 0.01
    assert info["input"] == {"height": 256, "width": 256}


def test_info_rejects_bad_input_size() -> None:
    result = run("info", "--input", "250x-3")
    assert result.returncode == 2 and "multiples of 32" in result.stderr


@pytest.mark.slow
def test_export_needs_weights(tmp_path) -> None:
    result = run("export", "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "--checkpoint" in result.stderr


@pytest.mark.slow
def test_export_checkpoint(tmp_path, random_model_a) -> None:
    from effpose.model import save_checkpoint

    save_checkpoint(random_model_a, tmp_path / "a.pt")
    result = run("export", "--arch", "A", "--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "a.onnx"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["weights"] == "trained" and report["parity_max_abs_diff"] < 1e-4
    assert report["input_size"] == [192, 256]  # no training size recorded: the default
    save_checkpoint(random_model_a, tmp_path / "b.pt", train_config={"input_size": [96, 128]})
    trained_small = run("export", "--checkpoint", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.onnx"))
    assert trained_small.returncode == 0, trained_small.stderr
    assert json.loads(trained_small.stdout)["input_size"] == [96, 128]  # the size it was trained at
    assert PoseEstimator(tmp_path / "b.onnx").info.input_size == (96, 128)
    wrong_arch = run("export", "--arch", "C", "--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "c.onnx"))
    assert wrong_arch.returncode == 2 and "holds" in wrong_arch.stderr


def test_predict_on_a_real_photo(tmp_path, random_onnx_a, coco_val_person) -> None:
    image_path, box = coco_val_person
    drawn = tmp_path / "drawn.png"
    result = run("predict", str(image_path), "--model", str(random_onnx_a), "--box", ",".join(map(str, box)),
                 "--out", str(drawn), "--json", "--keypoint-threshold", "0")
    assert result.returncode == 0, result.stderr
    assert "random-init" in result.stderr  # an untrained model is never silent about it
    output = json.loads(result.stdout)
    image = cv2.imread(str(image_path))
    assert (output["width"], output["height"]) == (image.shape[1], image.shape[0])
    [person] = output["persons"]
    assert person["source"] == "client" and len(person["keypoints"]) == 17
    assert person["box"] == pytest.approx(box, abs=0.01)
    written = cv2.imread(str(drawn))
    assert written.shape == image.shape and np.any(written != image)


@pytest.mark.slow
@pytest.mark.data
def test_predict_finds_the_people_with_the_shipped_detector(data_dir, random_onnx_a) -> None:
    photo = data_dir / "coco/images/000000001000.jpg"  # a team photo
    result = run("predict", str(photo), "--model", str(random_onnx_a), "--json")
    assert result.returncode == 0, result.stderr
    persons = json.loads(result.stdout)["persons"]
    assert len(persons) >= 3 and {p["source"] for p in persons} == {"detector"}
    calibrated = OnnxDetector(DEFAULT_PERSON_DETECTOR).default_threshold  # the model's, not a fixed 0.4
    assert all(calibrated <= p["box_score"] <= 1 for p in persons)
    capped = run("predict", str(photo), "--model", str(random_onnx_a), "--max-persons", "2", "--json")
    assert len(json.loads(capped.stdout)["persons"]) == 2


@pytest.mark.slow
def test_predict_whole_image_and_errors(tmp_path, random_onnx_a) -> None:
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.full((120, 90, 3), 128, np.uint8))
    whole = run("predict", str(photo), "--model", str(random_onnx_a), "--whole-image", "--json")
    assert whole.returncode == 0, whole.stderr
    [person] = json.loads(whole.stdout)["persons"]
    assert person["box"] == [0, 0, 90, 120] and person["source"] == "whole_image"

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    result = run("predict", str(not_image), "--model", str(random_onnx_a))
    assert result.returncode == 2 and "cannot read" in result.stderr
    bad_box = run("predict", str(photo), "--model", str(random_onnx_a), "--box", "50,50,10,10")
    assert bad_box.returncode == 2 and "error" in bad_box.stderr
    garbled = run("predict", str(photo), "--model", str(random_onnx_a), "--box", "1,2,3")
    assert garbled.returncode == 2
    no_model = run("predict", str(photo), "--model", str(tmp_path / "none.onnx"))
    assert no_model.returncode == 2 and "not found" in no_model.stderr
