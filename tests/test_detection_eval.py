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
from effpose.evaluation.detection import (
    calibrate_threshold,
    coco_box_ap,
    detect_images,
    operating_points,
    persons_found,
)

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


@pytest.mark.slow
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


def test_operating_points_and_calibrated_threshold() -> None:
    gt = ground_truth()  # three persons in two images
    hits = [{**r, "score": s} for r, s in zip(results_for(), (0.9, 0.8, 0.3))]
    false_alarms = [{"image_id": 1, "category_id": 1, "bbox": [90, 90, 20, 20], "score": 0.5},
                    {"image_id": 2, "category_id": 1, "bbox": [0, 90, 20, 20], "score": 0.2}]
    points = operating_points(gt, hits + false_alarms)
    assert [p.threshold for p in points] == [0.9, 0.8, 0.5, 0.3, 0.2]
    assert [round(p.precision, 3) for p in points] == [1.0, 1.0, 0.667, 0.75, 0.6]
    assert [round(p.recall, 3) for p in points] == [0.333, 0.667, 0.667, 1.0, 1.0]
    assert calibrate_threshold(gt, hits + false_alarms).threshold == 0.3  # F1 6/7: all three found, one alarm
    duplicate = {**results_for()[0], "score": 0.95}  # a second box on a matched person is a false alarm
    assert operating_points(gt, [duplicate, *hits])[1].precision == 0.5
    with pytest.raises(ValueError, match="found nothing"):
        calibrate_threshold(gt, [])


def test_persons_found_at_a_threshold() -> None:
    gt = ground_truth()  # image 1: one person, image 2: two
    hits = [{**r, "score": s} for r, s in zip(results_for(), (0.9, 0.8, 0.3))]
    duplicate = {**hits[1], "score": 0.85}  # a second box on the same person finds nobody new
    missed = {**results_for(shift=30.0)[2], "score": 0.7}  # overlaps its person below IoU 0.5
    detections = [*hits, duplicate, missed]
    def found(threshold: float) -> dict[int, list[bool]]:
        return {image: flags.tolist() for image, flags in persons_found(gt, detections, threshold).items()}

    assert found(0.5) == {1: [True], 2: [True, False]}
    assert found(0.2) == {1: [True], 2: [True, True]}
    assert found(0.95) == {1: [False], 2: [False, False]}


def test_calibrated_threshold_lives_in_the_model(tmp_path: Path) -> None:
    """`write_score_threshold` stores it in the ONNX metadata (and the card), where the detector reads it."""
    import shutil

    from effpose.assets import DEFAULT_PERSON_DETECTOR
    from effpose.detectors import OnnxDetector
    from effpose.detectors.onnx_detector import UNCALIBRATED_THRESHOLD, write_score_threshold

    model = tmp_path / "det.onnx"
    shutil.copyfile(DEFAULT_PERSON_DETECTOR, model)
    (tmp_path / "det.json").write_text(json.dumps({"name": "det"}))
    write_score_threshold(model, 0.123, {"chosen_by": "test"})
    assert OnnxDetector(model).default_threshold == pytest.approx(0.123)
    assert json.loads((tmp_path / "det.json").read_text())["score_threshold"]["value"] == 0.123
    shipped = OnnxDetector(DEFAULT_PERSON_DETECTOR)
    assert 0.0 < shipped.default_threshold < UNCALIBRATED_THRESHOLD  # calibrated, and lower than the old default


def test_shipped_default_finds_people_in_a_group_photo(data_dir: Path) -> None:
    """The service's default detector stage, at its default threshold, on a COCO val photo of 12 people."""
    from effpose.assets import DEFAULT_PERSON_DETECTOR
    from effpose.detectors import OnnxDetector, box_iou

    gt = json.loads((data_dir / "coco" / "annotations" / "person_keypoints_val.json").read_text())
    boxes = np.array([[x, y, x + w, y + h] for a in gt["annotations"] if a["image_id"] == 1000
                      for x, y, w, h in [a["bbox"]]])
    assert len(boxes) == 12
    image = cv2.imread(str(data_dir / "coco" / "images" / "000000001000.jpg"))
    detector = OnnxDetector(DEFAULT_PERSON_DETECTOR)
    detections = detector.detect(image, detector.default_threshold, 100)
    found = sum(bool((box_iou(np.array(d.box), boxes)[0] >= 0.5).any()) for d in detections)
    assert found >= 6, f"{found} of 12 people found at the default threshold {detector.default_threshold}"


def test_box_fit_report_measures_each_persons_closest_box() -> None:
    """scripts/detector_box_fit.py: a box twice as wide as its person, shifted by half its width, is the person's
    closest detection; the exact boxes of the other two count at every match IoU, the wide one only at low IoUs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import detector_box_fit as fit
    finally:
        sys.path.pop(0)
    gt = ground_truth()
    gt["images"][1]["width"] = 256  # image 2 is 256 x 128: its letterbox scale follows the longer side
    detections = results_for()
    x, y, w, h = detections[0]["bbox"]  # image 1's person: 40 x 80
    detections[0] = {**detections[0], "bbox": [x, y, 2 * w, h]}  # IoU 0.5 with it, centre w / 2 to the right
    rows = fit.best_matches(fit.person_boxes(gt), detections)
    np.testing.assert_allclose(sorted(rows[:, 0]), [0.5, 1.0, 1.0])
    wide = rows[rows[:, 0] < 1][0]
    np.testing.assert_allclose(wide[1:], [np.log(2.0), 0.0, 0.5, 0.0], atol=1e-9)
    assert fit.best_matches(fit.person_boxes(gt), []).shape == (0, 5)
    small = fit.small_flags(gt, fit.person_boxes(gt), canvas=256)  # heights on it: 160 / 35 and 80
    assert {image: flags.tolist() for image, flags in small.items()} == {1: [False], 2: [True, False]}
    detections[0]["bbox"][2] = 2.5 * w  # IoU 0.4: found at 0.4 and below, not at 0.5
    row = fit.report("wide", gt, detections, canvas=256)
    assert row.startswith("| wide | 0.67 / 1.00 / 0.50 | 1.00 / 1.00 / 1.00 |"), row


def test_bootstrap_accumulates_the_ap_of_any_multiset_of_images() -> None:
    """scripts/detector_ab_bootstrap.py: all images once give pycocotools' AP; an image drawn twice gives that
    image's own AP (with distinct scores, a duplicated set has the same precision at every recall); a detector
    never loses to a worse one on any draw and ties with itself on every draw."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import detector_ab_bootstrap as bootstrap
    finally:
        sys.path.pop(0)
    gt, shifted = ground_truth(), results_for(shift=8.0)
    shifted[0]["score"], shifted[2]["score"] = 0.5, 0.7  # a ranking across images matters; no ties
    matches = bootstrap.ImageMatches(gt, shifted)
    assert matches.num_images == 2
    assert matches.ap() == pytest.approx(coco_box_ap(gt, shifted)["AP"])
    annotations = [a for a in gt["annotations"] if a["image_id"] == 2]
    only_image_2 = {**gt, "images": gt["images"][1:], "annotations": annotations}
    expected = coco_box_ap(only_image_2, [r for r in shifted if r["image_id"] == 2])["AP"]
    assert matches.ap(np.array([1, 1])) == pytest.approx(expected)
    assert matches.ap(np.array([1, 1])) != pytest.approx(matches.ap())
    perfect = bootstrap.ImageMatches(gt, results_for())
    draws = bootstrap.paired_bootstrap(perfect, matches, resamples=20, seed=1)
    assert draws.shape == (20, 2) and np.allclose(draws[:, 0], 1.0) and (draws[:, 1] < 1.0).all()
    same = bootstrap.paired_bootstrap(matches, matches, resamples=20, seed=1)
    np.testing.assert_array_equal(same[:, 0], same[:, 1])
    assert "| +0.0000 | [+0.0000, +0.0000] | 0% |" in bootstrap.summary("a", "a", 0.5, 0.5, same)
    with pytest.raises(ValueError, match="no detections"):
        bootstrap.ImageMatches(gt, [])
