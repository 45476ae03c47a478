"""Evaluation: COCO keypoint AP against hand-computed OKS, PCK, the runner end to end and ``effpose eval``."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from effpose.cli import build_parser
from effpose.evaluation import coco_keypoint_ap, evaluate, load_estimator, pck
from effpose.keypoints import KEYPOINT_NAMES, OKS_SIGMAS
from effpose.runtime import PoseEstimator

COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# A standing person facing the camera, keypoints relative to the box (0..1); left = the person's left.
TEMPLATE = np.array([
    [0.50, 0.08], [0.55, 0.06], [0.45, 0.06], [0.60, 0.08], [0.40, 0.08], [0.70, 0.22], [0.30, 0.22],
    [0.78, 0.38], [0.22, 0.38], [0.80, 0.52], [0.20, 0.52], [0.62, 0.55], [0.38, 0.55], [0.62, 0.75],
    [0.38, 0.75], [0.62, 0.95], [0.38, 0.95],
])


def make_person(ann_id: int, image_id: int, box: tuple[float, float, float, float], unlabelled: tuple[int, ...] = (),
                occluded: tuple[int, ...] = (), pseudo: tuple[int, ...] = ()) -> dict:
    x, y, w, h = box
    keypoints = []
    for index, (u, v) in enumerate(TEMPLATE):
        flag = 0 if index in unlabelled else 1 if index in occluded else 2
        keypoints += [x + u * w, y + v * h, flag] if flag else [0.0, 0.0, 0]
    person = {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": list(box),
              "area": w * h, "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3])}
    if pseudo:
        person["pseudo"] = [int(i in pseudo) for i in range(17)]
    return person


def make_gt(persons: list[dict]) -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (1, 2)]
    return {"images": images, "annotations": persons,
            "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES), "skeleton": []}]}


def prediction(person: dict, shift: tuple[float, float] = (0.0, 0.0), joints: tuple[int, ...] | None = None) -> dict:
    """A result at the person's GT keypoints, ``joints`` (default all) moved by ``shift``."""
    points = np.array(person["keypoints"], float).reshape(17, 3)
    moved = range(17) if joints is None else joints
    points[list(moved), :2] += shift
    points[:, 2] = 1.0
    return {"image_id": person["image_id"], "category_id": 1, "keypoints": points.ravel().tolist(), "score": 0.9}


# Two images, three persons: A (large) and B (medium: 9000 px^2 < 96^2) in image 1, C (large) in image 2.
PERSON_A = make_person(1, 1, (50.0, 40.0, 120.0, 300.0), occluded=(9, 10))
PERSON_B = make_person(2, 1, (400.0, 200.0, 60.0, 150.0), unlabelled=(15, 16))
PERSON_C = make_person(3, 2, (200.0, 100.0, 80.0, 200.0), unlabelled=(3, 4), occluded=(13,))


def test_perfect_predictions_score_one() -> None:
    gt = make_gt([PERSON_A, PERSON_B, PERSON_C])
    metrics = coco_keypoint_ap(gt, [prediction(p) for p in (PERSON_A, PERSON_B, PERSON_C)])
    for name in ("AP", "AP50", "AP75", "APM", "APL", "AR", "ARM", "ARL"):
        assert metrics[name] == pytest.approx(1.0), name


def test_shifted_keypoints_match_hand_computed_oks() -> None:
    gt = make_gt([PERSON_C])
    shift = (6.0, 8.0)  # every keypoint 10 px away
    labelled = np.array(PERSON_C["keypoints"][2::3]) > 0
    k = 2 * OKS_SIGMAS
    oks = np.exp(-100.0 / (2 * PERSON_C["area"] * k**2))[labelled].mean()
    assert np.abs(COCO_THRESHOLDS - oks).min() > 0.01  # not on a threshold
    expected = float((COCO_THRESHOLDS < oks).mean())
    assert 0.0 < expected < 1.0
    metrics = coco_keypoint_ap(gt, [prediction(PERSON_C, shift)])
    assert metrics["AP"] == pytest.approx(expected)
    assert metrics["AR"] == pytest.approx(expected)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(float(oks >= 0.75))


def test_missing_person_lowers_recall() -> None:
    gt = make_gt([PERSON_A, PERSON_B, PERSON_C])
    metrics = coco_keypoint_ap(gt, [prediction(PERSON_A), prediction(PERSON_C)])
    assert metrics["AR"] == pytest.approx(2 / 3)
    assert metrics["ARL"] == pytest.approx(1.0) and metrics["ARM"] == pytest.approx(0.0)
    assert metrics["AP"] < 0.7


def test_empty_results_and_foreign_images() -> None:
    gt = make_gt([PERSON_A, PERSON_C])
    metrics = coco_keypoint_ap(gt, [])
    assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0
    assert math.isnan(metrics["APM"])  # no medium GT person: undefined, not 0
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_keypoint_ap(gt, [{**prediction(PERSON_A), "image_id": 99}])


def test_drop_pseudo_removes_pseudo_points() -> None:
    face = (0, 1, 2, 3, 4)
    person = make_person(1, 1, (50.0, 40.0, 120.0, 300.0), pseudo=face)
    gt = make_gt([person])
    original = copy.deepcopy(gt)
    wrong_face = [prediction(person, (40.0, 0.0), joints=face)]
    assert coco_keypoint_ap(gt, wrong_face)["AP"] == pytest.approx(1.0)
    assert coco_keypoint_ap(gt, wrong_face, drop_pseudo=False)["AP"] < 0.9
    assert gt == original
    # All points pseudo: the person has no GT keypoint left and is ignored (no false negative).
    all_pseudo = make_gt([make_person(1, 1, (50.0, 40.0, 120.0, 300.0), pseudo=tuple(range(17))), PERSON_C])
    assert coco_keypoint_ap(all_pseudo, [prediction(PERSON_C)])["AR"] == pytest.approx(1.0)


def pck_person(torso_pair: tuple[int, int] | None, offsets: dict[int, tuple[float, float]],
               labelled: tuple[int, ...] = (5, 6, 7, 8, 11, 12)) -> tuple[np.ndarray, np.ndarray]:
    """GT (17, 3) with the given joints labelled (others v=0) and a prediction moved by ``offsets``."""
    gt = np.zeros((17, 3))
    for joint in labelled:
        gt[joint] = [100.0 + 3 * joint, 100.0 + 2 * joint, 2]
    if torso_pair is not None:  # torso diameter 50: a (30, 40) step between the pair
        gt[torso_pair[1], :2] = gt[torso_pair[0], :2] + (30.0, 40.0)
    pred = gt[:, :2].copy()
    for joint, offset in offsets.items():
        pred[joint] += offset
    return pred, gt


def test_pck_counts_within_fraction_of_torso() -> None:
    # Torso 50 px, threshold 0.2 -> 10 px: 10 px (6, 8) is correct, 10.5 px is not.
    pred, gt = pck_person((5, 12), {7: (6.0, 8.0), 8: (10.5, 0.0), 6: (0.0, 9.0)})
    result = pck(pred[None], gt[None])
    assert result.pck == pytest.approx(5 / 6)
    assert result.per_joint[7] == 1.0 and result.per_joint[8] == 0.0
    assert result.num_persons == 1 and result.num_excluded == 0
    assert pck(pred[None], gt[None], threshold=0.1).pck == pytest.approx(3 / 6)


def test_pck_fallback_torso_and_exclusion() -> None:
    # No left shoulder: torso from right_shoulder (6) -> left_hip (11) = 50 px, so a 9 px error is correct.
    fallback_pred, fallback_gt = pck_person((6, 11), {7: (9.0, 0.0), 8: (11.0, 0.0)}, labelled=(6, 7, 8, 11, 12))
    # Neither pair labelled: excluded, however wrong its prediction.
    lone_pred, lone_gt = pck_person(None, {7: (500.0, 0.0)}, labelled=(5, 6, 7))
    result = pck(np.stack([fallback_pred, lone_pred]), np.stack([fallback_gt, lone_gt]))
    assert result.num_persons == 1 and result.num_excluded == 1
    assert result.pck == pytest.approx(4 / 5)
    assert result.per_joint[7] == 1.0 and result.per_joint[8] == 0.0
    assert result.counted[5] == 0  # the excluded person's joints are not counted


def test_pck_never_labelled_joints_are_nan_and_mask_excludes() -> None:
    pred, gt = pck_person((5, 12), {})
    gt[0] = [120.0, 60.0, 2]
    pred[0] = [300.0, 60.0]  # far off
    result = pck(pred[None], gt[None])
    assert np.isnan(result.per_joint[[1, 2, 3, 4, 9, 10, 13, 14, 15, 16]]).all()
    assert result.per_joint[0] == 0.0 and result.pck == pytest.approx(6 / 7)
    mask = np.ones((1, 17), bool)
    mask[0, 0] = False  # a pseudo-labelled nose: not scored
    masked = pck(pred[None], gt[None], mask=mask)
    assert masked.pck == 1.0 and np.isnan(masked.per_joint[0])


@pytest.fixture(scope="module")
def small_val(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The first 5 images of the shared COCO val annotations (and their persons) as a separate file."""
    full = json.loads((data_dir / "coco" / "annotations" / "person_keypoints_val.json").read_text())
    images = full["images"][:5]
    ids = {image["id"] for image in images}
    small = {**full, "images": images, "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
    path = tmp_path_factory.mktemp("eval") / "val5.json"
    path.write_text(json.dumps(small))
    return path, data_dir / "coco" / "images", small


@pytest.fixture(scope="module")
def gt_box_report(small_val, random_onnx_a):
    annotations, images, _ = small_val
    return evaluate(PoseEstimator(random_onnx_a), annotations, images, boxes="gt", batch_size=32)


def in_unit_range(value: float) -> bool:
    return 0.0 <= value <= 1.0


def test_runner_with_gt_boxes(small_val, gt_box_report) -> None:
    _, _, small = small_val
    report = gt_box_report
    metrics = report.metrics
    for name in ("AP", "AP50", "AP75", "AR", "PCK@0.2"):
        assert in_unit_range(metrics[name]), name
    for name in ("APM", "APL"):
        assert math.isnan(metrics[name]) or in_unit_range(metrics[name]), name
    per_joint = metrics["per_joint_PCK@0.2"]
    assert list(per_joint) == list(KEYPOINT_NAMES)
    assert all(math.isnan(v) or in_unit_range(v) for v in per_joint.values())
    persons = small["annotations"]
    assert len(report.results) == len(persons) == report.num_gt_persons
    assert [r["image_id"] for r in report.results] == [a["image_id"] for a in persons]
    assert [a["id"] for a in report.gt_persons] == [a["id"] for a in persons]  # result i came from person i
    for result in report.results:
        assert result["category_id"] == 1 and len(result["keypoints"]) == 51
        assert isinstance(result["score"], float)
    assert report.pck_result.num_persons + report.pck_result.num_excluded == len(persons)
    summary = report.to_json()
    assert json.loads(json.dumps(summary, allow_nan=False))["AP"] == metrics["AP"]
    assert "PCK@0.2" in report.to_table() and "left_hip" in report.to_table()


def test_runner_with_detections_equals_gt_boxes(small_val, gt_box_report, random_onnx_a, tmp_path) -> None:
    annotations, images, small = small_val
    detections = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
                  for a in small["annotations"]]
    first = small["annotations"][0]
    detections += [  # both filtered out: another category, and a score under the threshold
        {"image_id": first["image_id"], "bbox": [0, 0, 50, 50], "score": 1.0, "category_id": 2},
        {"image_id": first["image_id"], "bbox": [0, 0, 50, 50], "score": 0.1, "category_id": 1},
    ]
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(detections))
    # A small batch pools crops across image boundaries; results must not depend on it.
    report = evaluate(PoseEstimator(random_onnx_a), annotations, images, boxes=path, batch_size=4,
                      box_score_threshold=0.5)
    assert report.metrics["AP"] == pytest.approx(gt_box_report.metrics["AP"], abs=1e-9)
    assert report.metrics["AR"] == pytest.approx(gt_box_report.metrics["AR"], abs=1e-9)
    assert report.metrics["PCK@0.2"] is None and report.metrics["per_joint_PCK@0.2"] is None
    assert report.gt_persons is None
    got = np.array([r["keypoints"] for r in report.results])
    expected = np.array([r["keypoints"] for r in gt_box_report.results])
    np.testing.assert_allclose(got, expected, atol=1e-2)


@pytest.mark.slow
def test_runner_pck_drops_pseudo_points(small_val, gt_box_report, random_onnx_a, tmp_path) -> None:
    _, images, small = small_val
    flagged = copy.deepcopy(small)
    for annotation in flagged["annotations"]:
        annotation["pseudo"] = [1] + [0] * 16  # every nose is a pseudo-label
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(flagged))
    estimator = PoseEstimator(random_onnx_a)
    counted = gt_box_report.pck_result.counted
    assert counted[0] > 0
    dropped = evaluate(estimator, path, images).pck_result.counted
    assert dropped[0] == 0 and (dropped[1:] == counted[1:]).all()
    kept = evaluate(estimator, path, images, drop_pseudo=False).pck_result.counted
    assert (kept == counted).all()


def test_load_estimator_onnx_without_torch(random_onnx_a) -> None:
    code = ("import sys; from effpose.evaluation import load_estimator; "
            f"e = load_estimator({str(random_onnx_a)!r}); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_load_estimator_exports_a_checkpoint(random_model_a, random_onnx_a, tmp_path) -> None:
    from effpose.model import save_checkpoint

    save_checkpoint(random_model_a, tmp_path / "a.pt")
    estimator = load_estimator(tmp_path / "a.pt")
    assert estimator.info.weights == "trained"
    crops = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
    np.testing.assert_allclose(estimator.run(crops), PoseEstimator(random_onnx_a).run(crops), atol=1e-4)
    save_checkpoint(random_model_a, tmp_path / "square.pt", train_config={"input_size": [256, 256]})
    assert load_estimator(tmp_path / "square.pt").info.input_size == (256, 256)
    # a resume point: what is evaluated is its moving average, as training validated it and export ships it
    import torch

    raw = {name: torch.zeros_like(value) for name, value in random_model_a.state_dict().items()}
    average = {"n_averaged": torch.tensor(5), **{f"module.{k}": v for k, v in random_model_a.state_dict().items()}}
    torch.save({"config": random_model_a.config(), "state_dict": raw, "ema": average}, tmp_path / "last.pt")
    np.testing.assert_allclose(load_estimator(tmp_path / "last.pt").run(crops), PoseEstimator(random_onnx_a).run(crops),
                               atol=1e-4)
    with pytest.raises(ValueError, match="checkpoint"):
        load_estimator(Path(__file__))


def run_eval(argv: list[str]) -> int:
    args = build_parser().parse_args(["eval", *argv])
    return args.func(args)


def test_eval_command_json(small_val, random_onnx_a, tmp_path, capsys) -> None:
    annotations, images, small = small_val
    results_out = tmp_path / "results.json"
    code = run_eval(["--model", str(random_onnx_a), "--annotations", str(annotations), "--images", str(images),
                     "--flip", "--decode", "dark", "--threads", "1", "--results-out", str(results_out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "random-init" in captured.err
    output = json.loads(captured.out)
    for name in ("AP", "AP50", "AP75", "AR", "PCK@0.2"):
        assert in_unit_range(output[name]), name
    assert output["model"]["weights"] == "random-init"
    assert output["options"]["flip"] is True and output["options"]["decode"] == "dark"
    assert output["num_gt_persons"] == len(small["annotations"]) and output["num_images"] == 5
    assert len(json.loads(results_out.read_text())) == len(small["annotations"])


def test_eval_command_missing_files(tmp_path, capsys) -> None:
    code = run_eval(["--model", str(tmp_path / "none.onnx"), "--annotations", str(tmp_path / "none.json"),
                     "--images", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "model not found" in err and "annotation file not found" in err
