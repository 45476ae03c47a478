"""Detector evaluation: COCO person box AP on hand-made sets, results files, and the CLI on the real YOLOX-nano."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from effpose.detectors import Detection
from effpose.evaluation.detection import coco_box_ap, detect_images

GT_BOXES = {1: [[10, 20, 50, 100]], 2: [[5, 5, 40, 40], [60, 10, 30, 80]]}  # image_id -> xywh


def ground_truth() -> dict:
    annotations = [
        {"id": 10 * image_id + n, "image_id": image_id, "category_id": 1, "bbox": box, "area": box[2] * box[3],
         "iscrowd": 0}
        for image_id, boxes in GT_BOXES.items() for n, box in enumerate(boxes)
    ]
    images = [{"id": image_id, "file_name": f"{image_id}.png", "width": 128, "height": 128} for image_id in GT_BOXES]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def results_for(shift: float = 0.0, score: float = 0.9) -> list[dict]:
    return [{"image_id": image_id, "category_id": 1, "bbox": [x + shift, y, w, h], "score": score}
            for image_id, boxes in GT_BOXES.items() for x, y, w, h in boxes]


def test_box_ap_perfect_shifted_and_empty() -> None:
    gt = ground_truth()
    assert coco_box_ap(gt, results_for())["AP"] == pytest.approx(1.0)
    shifted = coco_box_ap(gt, results_for(shift=8.0))
    assert 0.0 < shifted["AP"] < 1.0 and shifted["AP50"] == pytest.approx(1.0)
    assert coco_box_ap(gt, [])["AP"] == 0.0
    assert coco_box_ap(gt, results_for()[:1])["AR"] == pytest.approx(1 / 3, abs=1e-6)


class BoxesFromTheImage:
    """A stand-in detector: one box around the white pixels of the image."""

    name = "white-pixels"

    def detect(self, image: np.ndarray, score_threshold: float, max_detections: int) -> list[Detection]:
        ys, xs = np.nonzero(image[..., 0] > 200)
        return [Detection((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), 0.8)]


def test_detect_images_writes_coco_results(tmp_path: Path) -> None:
    gt = ground_truth()
    for entry in gt["images"]:
        image = np.zeros((128, 128, 3), np.uint8)
        x, y, w, h = GT_BOXES[entry["id"]][0]
        image[y:y + h, x:x + w] = 255
        cv2.imwrite(str(tmp_path / entry["file_name"]), image)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    run = detect_images(BoxesFromTheImage(), tmp_path / "gt.json", tmp_path, score_threshold=0.5)
    assert run.num_images == 2 and len(run.milliseconds) == 2
    assert [(r["image_id"], r["bbox"], r["score"]) for r in run.results] == [
        (1, [10, 20, 50, 100], 0.8), (2, [5, 5, 40, 40], 0.8)]


@pytest.mark.data
def test_detect_and_eval_detector_cli_on_yolox_nano(data_dir: Path, tmp_path: Path) -> None:
    """The third-party YOLOX-nano, a known-good reference: its person AP on the shared val split is far from 0."""
    model = data_dir / "models/yolox_nano/yolox_nano.onnx"
    annotations = data_dir / "coco/annotations/person_keypoints_val.json"
    common = ["--model", str(model), "--annotations", str(annotations), "--images", str(data_dir / "coco/images"),
              "--threads", "2"]
    evaluated = subprocess.run([sys.executable, "-m", "effpose.cli", "eval-detector", *common, "--json"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert 0.35 < report["AP"] < 0.9 and report["AP50"] > report["AP"] and report["num_images"] == 111
    assert report["ms_median"] > 0
    out = tmp_path / "dets.json"
    detected = subprocess.run([sys.executable, "-m", "effpose.cli", "detect", *common, "--threshold", "0.5",
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert detected.returncode == 0, detected.stderr
    detections = json.loads(out.read_text())
    assert detections and min(d["score"] for d in detections) >= 0.5
    assert {d["image_id"] for d in detections} <= {i["id"] for i in json.loads(annotations.read_text())["images"]}
