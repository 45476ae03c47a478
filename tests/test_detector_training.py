"""The person detector's torch side: target encoding and in-graph decoding, loss, augmentation geometry, box
sources, ONNX export parity with the service adapter, and a smoke `effpose train-detector` run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from effpose.detector_training.augment import (
    DetectionAugment,
    Placement,
    compose,
    letterbox_placement,
    paste_person,
    random_placement,
)
from effpose.detector_training.config import DetectionSource, DetectorConfig
from effpose.detector_training.data import (
    DetectionDataset,
    ImageBoxes,
    load_source,
    merge_boxes,
)
from effpose.detector_training.export import check_detector_parity, export_detector
from effpose.detector_training.loss import (
    CenterNetLoss,
    distillation_loss,
    focal_loss,
    giou_loss,
    teacher_targets,
)
from effpose.detector_training.model import (
    DetectorOutput,
    build_centernet,
    decode_detections,
    load_detector,
)
from effpose.detector_training.pack import load_detector_pack, write_detector_pack
from effpose.detector_training.targets import MIN_REGRESSION_WEIGHT, encode_targets
from effpose.detector_training.teacher import OnnxTeacher
from effpose.detectors import OnnxDetector
from effpose.detectors.onnx_detector import preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"


def perfect_output(targets: dict[str, np.ndarray]) -> DetectorOutput:
    """Head outputs that match ``targets`` exactly: logit +20 at box centres, the Gaussian's logit elsewhere."""
    heat = np.clip(targets["heatmap"], 1e-6, 1 - 1e-6)
    logits = np.where(targets["heatmap"] == 1, 20.0, np.log(heat / (1 - heat)))
    return DetectorOutput(*(torch.from_numpy(np.asarray(a, np.float32))[None]
                            for a in (logits, targets["size"], targets["offset"])))


def test_encoded_targets_decode_back_to_the_boxes() -> None:
    boxes = np.array([[10.5, 20.0, 70.25, 126.0], [100.0, 8.0, 124.0, 60.0], [30.0, 90.0, 46.0, 122.0]])
    targets = encode_targets(boxes, canvas=128)
    assert targets["mask"].sum() == 3 and targets["heatmap"].max() == 1.0
    detections = decode_detections(perfect_output(targets), k=5, input_size=128)[0].numpy()
    assert detections.shape == (5, 5)
    found = detections[detections[:, 4] > 0.99]
    assert len(found) == 3 and np.all(np.diff(detections[:, 4]) <= 0)  # sorted by score
    order = np.lexsort((found[:, 1], found[:, 0]))
    np.testing.assert_allclose(found[order, :4], boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))], atol=1e-3)


def test_gaussian_regression_cells_decode_their_box_around_each_centre() -> None:
    # the first and the last overlap: the cells between their centres go to the nearer one
    boxes = np.array([[10.5, 20.0, 70.25, 126.0], [100.0, 8.0, 124.0, 60.0], [30.0, 30.0, 80.0, 120.0]])
    centre, dense = encode_targets(boxes, canvas=128), encode_targets(boxes, canvas=128, regression_cells="gaussian")
    np.testing.assert_array_equal(dense["heatmap"], centre["heatmap"])
    weights = dense["mask"][0]
    assert np.sum(weights == 1.0) == 3 and np.sum(weights > 0) > 3 * 5  # the centres, and their neighbours
    assert weights[weights > 0].min() >= MIN_REGRESSION_WEIGHT
    np.testing.assert_array_equal(dense["size"][:, weights == 1.0], centre["size"][:, weights == 1.0])
    rows, cols = np.nonzero(weights)
    cx, cy = (cols + dense["offset"][0, rows, cols]) * 4, (rows + dense["offset"][1, rows, cols]) * 4
    half_w, half_h = np.exp(dense["size"][0, rows, cols]) * 2, np.exp(dense["size"][1, rows, cols]) * 2
    decoded = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    error = np.abs(decoded[:, None, :] - boxes[None]).max(axis=2)  # every cell decodes one of the boxes
    assert np.all(error.min(axis=1) < 1e-3)
    owner = error.argmin(axis=1)
    assert set(owner) == {0, 1, 2}
    gaussians = [encode_targets(box[None], canvas=128)["heatmap"][0] for box in boxes]
    assert all(gaussians[o][r, c] == max(g[r, c] for g in gaussians) for o, r, c in zip(owner, rows, cols))
    with pytest.raises(ValueError, match="regression_cells"):
        encode_targets(boxes, canvas=128, regression_cells="everywhere")


@pytest.mark.parametrize("cells", ["centre", "gaussian"])
def test_soft_targets_scale_each_box_by_its_score(cells: str) -> None:
    boxes = np.array([[10.0, 20.0, 70.0, 126.0], [90.0, 8.0, 124.0, 60.0]])
    hard = [encode_targets(box[None], canvas=128, regression_cells=cells) for box in boxes]
    soft = encode_targets(boxes, canvas=128, regression_cells=cells, scores=np.array([0.8, 0.3]))
    np.testing.assert_allclose(soft["heatmap"], np.maximum(0.8 * hard[0]["heatmap"], 0.3 * hard[1]["heatmap"]),
                               rtol=1e-6)
    for target, score in zip(hard, (0.8, 0.3)):
        cells_of_box = target["mask"] > 0
        np.testing.assert_allclose(soft["mask"][cells_of_box], score * target["mask"][cells_of_box], rtol=1e-6)
        np.testing.assert_array_equal(soft["size"][:, cells_of_box[0]], target["size"][:, cells_of_box[0]])
    assert not np.any(soft["heatmap"] == 1)  # no hard positives for the focal loss
    with pytest.raises(ValueError, match="scores"):
        encode_targets(boxes, canvas=128, scores=np.ones(3))


def test_decoded_boxes_are_clipped_to_the_input() -> None:
    targets = encode_targets(np.array([[40.0, 40.0, 56.0, 56.0]]), canvas=64)
    output = perfect_output(targets)
    size = output.size.clone()
    size[:, :, 12, 12] = np.log(200 / 4)  # a box far larger than the input
    detections = decode_detections(DetectorOutput(output.heatmap, size, output.offset), k=1, input_size=64)[0]
    assert detections[0, :4].tolist() == [0.0, 0.0, 64.0, 64.0]


def test_focal_loss_rewards_the_right_heatmap() -> None:
    target = torch.from_numpy(encode_targets(np.array([[8.0, 8.0, 40.0, 48.0]]), canvas=64)["heatmap"])[None]
    heat = target.clamp(1e-4, 1 - 1e-4)
    right = torch.where(target == 1, torch.tensor(12.0), torch.log(heat / (1 - heat)) - 8)
    assert focal_loss(right, target) < 1e-3
    assert focal_loss(torch.zeros_like(target), target) > 0.5
    assert focal_loss(-right, target) > focal_loss(torch.zeros_like(target), target)
    parts = CenterNetLoss(size_weight=2.0)(DetectorOutput(right, torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16)),
                                           {k: torch.from_numpy(v)[None] for k, v in
                                            encode_targets(np.array([[8.0, 8.0, 40.0, 48.0]]), 64).items()})
    assert parts["loss"] == pytest.approx(float(parts["heatmap"] + 2 * parts["size"] + parts["offset"]))



def test_giou_loss_scores_the_decoded_boxes_of_the_regression_cells() -> None:
    boxes = np.array([[10.5, 20.0, 70.25, 126.0], [100.0, 8.0, 124.0, 60.0]])
    targets = {k: torch.from_numpy(v)[None] for k, v in
               encode_targets(boxes, canvas=128, regression_cells="gaussian").items()}
    exact = DetectorOutput(targets["heatmap"], targets["size"].clone(), targets["offset"].clone())
    assert giou_loss(exact, targets) == pytest.approx(0.0, abs=1e-6)
    doubled = DetectorOutput(exact.heatmap, exact.size + np.log(2.0), exact.offset)  # same centres, twice the sides
    assert giou_loss(doubled, targets) == pytest.approx(0.75, abs=1e-5)  # IoU 1/4, the hull is the larger box
    moved = exact.offset.clone()
    moved[:, 0] += 40.0  # every box moved past its own width: IoU 0, a positive GIoU penalty beyond 1
    assert giou_loss(DetectorOutput(exact.heatmap, exact.size, moved), targets) > 1.0
    wild = exact.size.clone().requires_grad_()
    with torch.no_grad():
        wild[targets["mask"].expand_as(wild) == 0] = 1e4  # untrained cells outside the regression cells
    loss = giou_loss(DetectorOutput(exact.heatmap, wild, exact.offset), targets)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(wild.grad).all()
    parts = CenterNetLoss(giou_weight=2.0)(doubled, targets)
    assert parts["loss"] == pytest.approx(float(parts["heatmap"] + parts["size"] + parts["offset"] + 2 * 0.75))
    assert "giou" not in CenterNetLoss()(doubled, targets)


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    torch.manual_seed(0)
    teacher = DetectorOutput(torch.randn(2, 1, 16, 16) * 3, torch.randn(2, 2, 16, 16), torch.rand(2, 2, 16, 16))
    assert distillation_loss(teacher, teacher_targets(teacher)) == pytest.approx(0.0, abs=1e-4)
    student = DetectorOutput(*(torch.zeros_like(t).requires_grad_() for t in teacher))
    loss = distillation_loss(student, teacher_targets(teacher))
    assert loss > 0.1
    loss.backward()
    for output, target in zip(student, teacher):  # one small step along -grad moves every output towards the teacher
        stepped = output.detach() - 1e-2 * output.grad
        moved = (stepped - target).abs().sum() < (output.detach() - target).abs().sum()
        assert moved, "the gradient should point towards the teacher"
    heatmap_only = DetectorOutput(*(torch.zeros_like(t).requires_grad_() for t in teacher))
    distillation_loss(heatmap_only, teacher_targets(teacher), regression=False).backward()
    assert heatmap_only.heatmap.grad.abs().sum() > 0
    assert heatmap_only.size.grad is None and heatmap_only.offset.grad is None

def test_plain_canvas_is_the_inference_letterbox(tmp_path: Path) -> None:
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    box = np.array([[30.0, 10.0, 90.0, 80.0]], np.float32)
    item = DetectionDataset([ImageBoxes(tmp_path / "a.png", 1, box, "test")], input_size=96)[0]
    expected, placement = preprocess(image, (96, 96), "effpose")
    difference = np.abs(item["image"].numpy() - expected[0])
    assert np.median(difference) < 1 / 255 and difference.max() < 0.1  # warpAffine vs resize: same geometry
    scale = np.array([placement.scale_x, placement.scale_y] * 2)
    canvas_box = box[0] * scale + np.array([placement.pad_x, placement.pad_y] * 2)
    cell = np.floor((canvas_box[:2] + canvas_box[2:]) / 2 / 4).astype(int)
    assert item["mask"][0, cell[1], cell[0]] == 1
    np.testing.assert_allclose(np.exp(item["size"][:, cell[1], cell[0]].numpy()) * 4,
                               canvas_box[2:] - canvas_box[:2], rtol=1e-4)
    assert item["mask"].sum() == 1
    dense = DetectionDataset([ImageBoxes(tmp_path / "a.png", 1, box, "test")], input_size=96,
                             regression_cells="gaussian")[0]
    assert dense["mask"][0, cell[1], cell[0]] == 1 and dense["mask"].sum() > 1


def test_onnx_teacher_labels_the_people_of_a_real_canvas(data_dir: Path) -> None:
    """YOLOX-nano as the teacher: on the plain canvas of a COCO val photo its soft heatmap peaks near every tall
    annotated person's centre cell, below 1; the teacher pickles (for data-loader workers) and reopens its session."""
    import pickle

    source = DetectionSource(annotations="coco/annotations/person_keypoints_val.json", images="coco/images",
                             name="val")
    records = [r for r in load_source(source) if len(r.boxes) >= 2][:1]
    teacher = OnnxTeacher(data_dir / "models/yolox_nano/yolox_nano.onnx", min_score=0.1)
    dataset = DetectionDataset(records, 288, teacher=teacher)
    item, (_, boxes) = dataset[0], dataset.canvas(0)
    heat = item["teacher_heatmap"][0].numpy()
    assert 0.3 < heat.max() < 1.0 and item["teacher_mask"].sum() > 0
    tall = boxes[boxes[:, 3] - boxes[:, 1] >= 64]
    assert len(tall) >= 1
    for box in tall:
        col, row = ((box[:2] + box[2:]) / 2 / 4).astype(int)
        assert heat[max(row - 2, 0):row + 3, max(col - 2, 0):col + 3].max() > 0.3, box
    clone = pickle.loads(pickle.dumps(teacher))
    np.testing.assert_allclose(clone.targets(dataset.canvas(0)[0])["teacher_heatmap"], item["teacher_heatmap"].numpy())
    with pytest.raises(ValueError, match="min_score"):
        OnnxTeacher(data_dir / "models/yolox_nano/yolox_nano.onnx", min_score=0.0)


@pytest.mark.parametrize("seed", range(6))
def test_augmented_boxes_follow_the_pixels(seed: int) -> None:
    """A bright rectangle on a dark image: after random scale, shift, flip and mosaic tiling its canvas box is
    where the bright pixels landed."""
    image = np.full((120, 160, 3), 10, np.uint8)
    image[30:90, 40:100] = 250
    box = np.array([[40.0, 30.0, 100.0, 90.0]])
    augment = DetectionAugment(scale_range=(0.6, 1.4), flip_prob=0.5, brightness=0.0, contrast=0.0, saturation=0.0,
                               min_visible=0.0)
    rng = np.random.default_rng(seed)
    tile = (16, 8, 112, 100)
    placement = random_placement((160, 120), tile, augment, rng)
    canvas, boxes = compose([image], [box], [placement], 128, augment)
    bright = np.argwhere(canvas[..., 0] > 130)
    if len(boxes) == 0:
        assert len(bright) < 4  # the rectangle fell (almost) outside the tile
        return
    (y1, x1), (y2, x2) = bright.min(0), bright.max(0) + 1
    np.testing.assert_allclose(boxes[0], [x1, y1, x2, y2], atol=1.0)
    assert tile[0] <= boxes[0, 0] and boxes[0, 2] <= tile[2] and tile[1] <= boxes[0, 1] and boxes[0, 3] <= tile[3]
    outside = np.ones(canvas.shape[:2], bool)
    outside[tile[1]:tile[3], tile[0]:tile[2]] = False
    assert np.all(canvas[outside] == 114)  # nothing is drawn outside the tile


def test_flip_mirrors_boxes() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    augment = DetectionAugment.none()
    plain = letterbox_placement((64, 64), 64)
    flipped = Placement(plain.scale, plain.offset, plain.tile, flip=True)
    _, boxes = compose([image], [np.array([[4.0, 8.0, 20.0, 40.0]])], [flipped], 64, augment)
    np.testing.assert_allclose(boxes, [[44.0, 8.0, 60.0, 40.0]])


def test_mixup_blends_two_canvases_half_and_half_and_keeps_both_box_sets() -> None:
    """Images the size of the canvas at scale 1 land unchanged; with mixup the canvas is the mean of the item's and
    a random item's canvas, its boxes both sets, and both persons are targets; mixup 0 leaves the item alone."""
    images = {1: np.full((64, 64, 3), 40, np.uint8), 2: np.full((64, 64, 3), 200, np.uint8)}
    records = [ImageBoxes(Path("a.jpg"), 1, np.array([[4.0, 4.0, 20.0, 40.0]], np.float32), "t"),
               ImageBoxes(Path("b.jpg"), 2, np.array([[36.0, 10.0, 60.0, 60.0]], np.float32), "t")]
    still = {"scale_range": (1.0, 1.0), "flip_prob": 0.0, "mosaic_prob": 0.0, "brightness": 0.0, "contrast": 0.0,
             "saturation": 0.0}
    dataset = DetectionDataset(records, 64, DetectionAugment(**still, mixup_prob=1.0),
                               read=lambda record: images[record.image_id])
    partners = set()
    for seed in range(8):
        canvas, boxes = dataset.canvas(0, np.random.default_rng(seed))
        partner = 2 if len(boxes) == 2 and boxes[1, 0] == 36.0 else 1
        partners.add(partner)
        np.testing.assert_allclose(canvas, (40.0 + images[partner]) / 2)
        np.testing.assert_allclose(boxes, np.concatenate([records[0].boxes, records[partner - 1].boxes]))
    assert partners == {1, 2}
    torch.manual_seed(0)
    items = [dataset[0] for _ in range(8)]
    assert max(float(item["mask"].sum()) for item in items) == 2.0  # a blend with image 2: two centres
    plain = DetectionDataset(records, 64, DetectionAugment(**still, mixup_prob=0.0), read=dataset.read)
    canvas, boxes = plain.canvas(0, np.random.default_rng(0))
    np.testing.assert_allclose(canvas, 40.0)
    np.testing.assert_allclose(boxes, records[0].boxes)
    with_canvas, placed_only = np.random.default_rng(3), np.random.default_rng(3)
    plain.canvas(0, with_canvas)
    plain._placed(0, placed_only)
    assert with_canvas.random() == placed_only.random()  # mixup 0 draws nothing: the recipe's streams are unchanged
    with pytest.raises(ValueError, match="mixup_prob"):
        DetectionAugment(mixup_prob=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_a_pasted_person_lands_inside_its_box_and_hides_the_boxes_it_covers(seed: int) -> None:
    """A bright 10x20 crop pasted 40 px tall (twice its size) on a dark canvas: the bright pixels are inside the
    appended box, its middle is the crop, the canvas outside is untouched, and a box under it goes exactly when
    less than min_visible of it is left."""
    canvas = np.full((64, 64, 3), 40.0, np.float32)
    boxes = np.array([[8.0, 8.0, 24.0, 24.0], [30.0, 30.0, 62.0, 62.0]], np.float32)
    augment = DetectionAugment(paste_height=(40.0, 40.0), flip_prob=0.5, brightness=0.0, contrast=0.0,
                               saturation=0.0, min_visible=0.25)
    crop = np.full((20, 10, 3), 250, np.uint8)
    canvas, placed = paste_person(canvas, boxes, crop, augment, np.random.default_rng(seed))
    x1, y1, x2, y2 = placed[-1].astype(int)
    assert (x2 - x1, y2 - y1) == (20, 40)
    changed = np.argwhere(canvas[..., 0] != 40.0)
    assert changed.min(0).tolist() >= [y1, x1] and (changed.max(0) + 1).tolist() <= [y2, x2]
    np.testing.assert_allclose(canvas[y1 + 4:y2 - 4, x1 + 4:x2 - 4], 250.0)
    for box in boxes:
        overlap = np.clip(np.minimum(box[2:], [x2, y2]) - np.maximum(box[:2], [x1, y1]), 0, None).prod()
        left = 1.0 - overlap / np.prod(box[2:] - box[:2])
        assert any(np.array_equal(box, kept) for kept in placed[:-1]) == (left >= 0.25)


def test_paste_adds_persons_of_other_items_and_draws_nothing_when_off() -> None:
    """With paste_prob 1 a canvas gets 1 to paste_count more persons, each a target; with 0 the item and the
    random stream are as without the option."""
    images = {1: np.full((64, 64, 3), 40, np.uint8), 2: np.full((64, 64, 3), 200, np.uint8)}
    records = [ImageBoxes(Path("a.jpg"), 1, np.array([[4.0, 4.0, 12.0, 20.0]], np.float32), "t"),
               ImageBoxes(Path("b.jpg"), 2, np.array([[36.0, 10.0, 60.0, 60.0]], np.float32), "t")]
    still = {"scale_range": (1.0, 1.0), "flip_prob": 0.0, "mosaic_prob": 0.0, "brightness": 0.0, "contrast": 0.0,
             "saturation": 0.0, "min_box_size": 2.0}
    dataset = DetectionDataset(records, 64, DetectionAugment(**still, paste_prob=1.0, paste_count=2,
                                                             paste_height=(16.0, 32.0)),
                               read=lambda record: images[record.image_id])
    counts = set()
    for seed in range(12):
        _, boxes = dataset.canvas(0, np.random.default_rng(seed))
        pasted = np.array([box for box in boxes if not np.array_equal(box, records[0].boxes[0])]).reshape(-1, 4)
        counts.add(len(pasted))
        assert np.all(pasted[:, 3] - pasted[:, 1] <= 32.0)
    assert counts == {1, 2}
    torch.manual_seed(0)
    assert max(float(dataset[0]["mask"].sum()) for _ in range(8)) >= 2.0
    plain = DetectionDataset(records, 64, DetectionAugment(**still), read=dataset.read)
    with_canvas, placed_only = np.random.default_rng(3), np.random.default_rng(3)
    _, boxes = plain.canvas(0, with_canvas)
    plain._placed(0, placed_only)
    np.testing.assert_allclose(boxes, records[0].boxes)
    assert with_canvas.random() == placed_only.random()
    for bad in ({"paste_prob": 1.5}, {"paste_count": 0}, {"paste_height": (40.0, 20.0)}):
        with pytest.raises(ValueError, match="paste"):
            DetectionAugment(**bad)
    config = DetectorConfig.from_dict({"augment": {"paste_prob": 0.5, "paste_height": [20, 90]}})
    assert config.augment.paste_height == (20, 90) and config.augment.paste_prob == 0.5


def test_merge_keeps_only_teacher_boxes_the_annotation_missed() -> None:
    gt = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    teacher = np.array([[0.5, 0.0, 10.5, 10.0], [50.0, 50.0, 60.0, 70.0]], np.float32)
    np.testing.assert_allclose(merge_boxes(gt, teacher, 0.5), [[0, 0, 10, 10], [50, 50, 60, 70]])
    np.testing.assert_allclose(merge_boxes(np.zeros((0, 4), np.float32), teacher, 0.5), teacher)
    head = np.array([[2.0, 0.0, 8.0, 4.0]], np.float32)  # IoU 0.24 with the person, but 100% inside it
    np.testing.assert_allclose(merge_boxes(gt, head, 0.5), gt)
    np.testing.assert_allclose(merge_boxes(gt, head, 0.5, max_inside=1.0), [[0, 0, 10, 10], [2, 0, 8, 4]])


@pytest.fixture()
def tiny_detection_data(tmp_path: Path, data_dir: Path) -> dict[str, Path]:
    """Eight COCO train images with their person annotations, and a teacher file that adds one box to one."""
    full = json.loads((data_dir / "coco" / "annotations" / "person_keypoints_train.json").read_text())
    images = full["images"][:8]
    ids = {image["id"] for image in images}
    subset = {**full, "images": images, "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
    (tmp_path / "tiny.json").write_text(json.dumps(subset))
    teacher = [{"image_id": images[0]["id"], "category_id": 1, "bbox": [1, 1, 20, 40], "score": 0.9},
               {"image_id": images[0]["id"], "category_id": 1, "bbox": [30, 1, 20, 40], "score": 0.2}]
    (tmp_path / "teacher.json").write_text(json.dumps(teacher))
    return {"annotations": tmp_path / "tiny.json", "images": data_dir / "coco" / "images",
            "teacher": tmp_path / "teacher.json"}


def test_box_sources_gt_teacher_merged(tiny_detection_data: dict[str, Path]) -> None:
    paths = {"annotations": str(tiny_detection_data["annotations"]), "images": str(tiny_detection_data["images"])}
    gt = load_source(DetectionSource(name="gt", **paths))
    teacher = load_source(DetectionSource(name="t", boxes="teacher", teacher=str(tiny_detection_data["teacher"]),
                                          **paths))
    merged = load_source(DetectionSource(name="m", boxes="merged", teacher=str(tiny_detection_data["teacher"]),
                                         teacher_threshold=0.5, **paths))
    assert len(teacher) == 1 and len(teacher[0].boxes) == 1  # the 0.2 box is under the default threshold 0.5
    assert sum(len(r.boxes) for r in merged) == sum(len(r.boxes) for r in gt) + 1
    with pytest.raises(ValueError, match="needs a"):
        DetectionSource(name="bad", boxes="teacher", **paths).check()


def test_box_size_report_compares_training_canvases_with_val(tiny_detection_data: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """scripts/detector_box_sizes.py on one image that is both the training and the val set: the plain letterbox
    gives val's heights, a fixed half scale halves them, and the table shows both."""
    full = json.loads(tiny_detection_data["annotations"].read_text())
    one = {**full, "images": full["images"][:1],
           "annotations": [a for a in full["annotations"] if a["image_id"] == full["images"][0]["id"]]}
    (tmp_path / "one.json").write_text(json.dumps(one))
    source = {"name": "one", "annotations": str(tmp_path / "one.json"), "images": str(tiny_detection_data["images"])}
    still = {"flip_prob": 0.0, "mosaic_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    config = {"input_size": 288, "train": [source], "val": [source], "augment": {**still, "scale_range": [1, 1]}}
    (tmp_path / "det.json").write_text(json.dumps(config))
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import detector_box_sizes as report
    finally:
        sys.path.pop(0)
    plain = DetectorConfig.from_dict(config)
    val, images = report.val_heights(plain)
    assert images == 1 and len(val) == len(one["annotations"])
    np.testing.assert_allclose(np.sort(report.train_heights(plain, 3, seed=0)), np.sort(np.tile(val, 3)), atol=0.02)
    half = DetectorConfig.from_dict({**config, "augment": {**still, "scale_range": [0.5, 0.5]}})
    np.testing.assert_allclose(np.sort(report.train_heights(half, 2, seed=0)), np.sort(np.tile(val, 2)) / 2,
                               atol=0.02)
    assert sum(report.shares(val)) == pytest.approx(1.0, abs=0.002)
    printed = subprocess.run([sys.executable, "scripts/detector_box_sizes.py", "--config", str(tmp_path / "det.json"),
                              "--canvases", "4"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    rows = [line.split(" | ")[1:-1] for line in printed.stdout.splitlines() if line.startswith(("| val", "| train"))]
    assert len(rows) == 2 and rows[0] == rows[1]  # the plain letterbox of the val image itself


def test_detector_pack_gives_what_the_image_files_give(tiny_detection_data: dict[str, Path], tmp_path: Path) -> None:
    """A packed image, shrunk to the input's side, letterboxes to the canvas and boxes of its original file."""
    paths = {"annotations": str(tiny_detection_data["annotations"]), "images": str(tiny_detection_data["images"])}
    records = load_source(DetectionSource(name="coco_train", **paths))
    meta = write_detector_pack({"coco_train": records}, tmp_path / "det.npz", max_side=128, quality=95)
    sources, read, loaded = load_detector_pack(tmp_path / "det.npz")
    assert loaded == meta and meta["images"] == {"coco_train": len(records)}
    assert meta["boxes"] == {"coco_train": sum(len(record.boxes) for record in records)}
    packed = sources["coco_train"]
    assert [r.image_id for r in packed] == [r.image_id for r in records]
    original, from_pack = DetectionDataset(records, 128), DetectionDataset(packed, 128, read=read)
    for index in range(len(records)):
        (image, boxes), (packed_image, packed_boxes) = original.canvas(index), from_pack.canvas(index)
        assert max(read(packed[index]).shape[:2]) == 128
        np.testing.assert_allclose(packed_boxes, boxes, atol=1e-3)
        assert np.abs(cv2.blur(packed_image, (9, 9)) - cv2.blur(image, (9, 9))).mean() < 4.0  # resampling, WebP
    with pytest.raises(FileNotFoundError, match="pack-detector"):
        load_detector_pack(tmp_path / "missing.npz")


@pytest.mark.slow
def test_pack_detector_command(tiny_detection_data: dict[str, Path], tmp_path: Path) -> None:
    """`effpose data pack-detector` packs a config's sources with the boxes it merges, and keeps to --max-mib."""
    source = {"name": "coco_train", "annotations": str(tiny_detection_data["annotations"]),
              "images": str(tiny_detection_data["images"]), "boxes": "merged",
              "teacher": str(tiny_detection_data["teacher"]), "teacher_threshold": 0.5}
    config = tmp_path / "det.json"
    config.write_text(json.dumps({"input_size": 64, "train": [source]}))
    out = tmp_path / "det.npz"
    packed = subprocess.run([EFFPOSE, "data", "pack-detector", "--config", str(config), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    report = json.loads(packed.stdout)
    merged = load_source(DetectionSource(**source))
    assert report["max_side"] == 64 and report["boxes"] == {"coco_train": sum(len(r.boxes) for r in merged)}
    sources, read, _ = load_detector_pack(out)
    assert max(read(sources["coco_train"][0]).shape[:2]) == 64
    refused = subprocess.run([EFFPOSE, "data", "pack-detector", "--config", str(config), "--out", str(out),
                              "--max-mib", "0.001"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "over --max-mib" in refused.stderr


def test_config_rejects_unknown_keys_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_dict({"input_sise": 320})
    with pytest.raises(ValueError, match="scale_range"):
        DetectorConfig.from_dict({"augment": {"scale_range": [2.0, 1.0]}})
    config = DetectorConfig.from_dict({"input_size": 300})
    config.train = [DetectionSource(annotations=__file__, images=".", name="x")]
    with pytest.raises(ValueError, match="multiple of 32"):
        config.validate()
    config.input_size, config.regression_cells = 320, "everywhere"
    with pytest.raises(ValueError, match="regression_cells"):
        config.validate()
    config.regression_cells, config.giou_weight = "gaussian", -1.0
    with pytest.raises(ValueError, match="loss weights"):
        config.validate()
    config.giou_weight, config.drop_path = 1.0, 1.0
    with pytest.raises(ValueError, match="drop_path"):
        config.validate()


@pytest.mark.slow
def test_export_parity_and_the_service_adapter(tmp_path: Path, randomized) -> None:
    torch.manual_seed(0)
    model = randomized(build_centernet("A", max_detections=20), input_size=(128, 128))  # input-dependent peaks
    path = export_detector(model, tmp_path / "det.onnx", input_size=128, weights="random")
    assert check_detector_parity(model, path, input_size=128) <= 1e-3
    detector = OnnxDetector(path)
    assert detector.layout == "effpose" and tuple(detector.input_size) == (128, 128)
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 255, (200, 300, 3), dtype=np.uint8) for _ in range(2))
    detections = detector.detect(first, 0.0, 10)
    assert 0 < len(detections) <= 10
    assert all(0 <= d.box[0] <= d.box[2] <= 300 and 0 <= d.box[1] <= d.box[3] <= 200 for d in detections)
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    assert detector.detect(second, 0.0, 10) != detections


@pytest.mark.slow
def test_smoke_detector_training_lowers_the_loss_exports_and_evaluates(
    tiny_detection_data: dict[str, Path], tmp_path: Path
) -> None:
    source = {"name": "tiny", "annotations": str(tiny_detection_data["annotations"]),
              "images": str(tiny_detection_data["images"])}
    config = {"arch": "A", "input_size": 128, "init": "scratch", "train": [source], "val": [source],
              "epochs": 5, "samples_per_epoch": 16, "batch_size": 8, "lr": 0.003, "warmup_steps": 1,
              "augment": {"scale_range": [1.0, 1.0], "flip_prob": 0.0, "mosaic_prob": 0.0, "brightness": 0.0,
                          "contrast": 0.0, "saturation": 0.0},
              "workers": 0, "out_dir": str(tmp_path / "run")}
    (tmp_path / "det.json").write_text(json.dumps(config))
    trained = subprocess.run([EFFPOSE, "train-detector", "--config", str(tmp_path / "det.json")],
                             check=False, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(5))
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
    assert all(0.0 <= h["tiny/AP"] <= 1.0 for h in history)

    exported = subprocess.run([EFFPOSE, "export-detector", "--checkpoint", str(tmp_path / "run" / "best.pt"),
                               "--out", str(tmp_path / "det.onnx")],
                              check=False, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads(exported.stdout)
    assert report["input_size"] == [128, 128] and report["parity_max_abs_diff"] <= 1e-3
    evaluated = subprocess.run([EFFPOSE, "eval-detector", "--model", str(tmp_path / "det.onnx"), "--annotations",
                                source["annotations"], "--images", source["images"], "--json"],
                               check=False, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert {"AP", "AP50", "AR"} <= set(json.loads(evaluated.stdout))



@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"regression_cells": "gaussian", "giou_weight": 1.5,
                                          "distill_regression": False, "drop_path": 0.2},
                                     {"distill_checkpoint": "", "workers": 1,
                                      "distill_detector": "models/yolox_nano/yolox_nano.onnx"}])
def test_a_pruned_detector_trains_against_its_full_teacher(
    tiny_detection_data: dict[str, Path], tmp_path: Path, options: dict
) -> None:
    """A depth-pruned detector trains against its full network's outputs, or against YOLOX-nano's boxes on each
    canvas (computed in a data-loader worker); the logged loss is the weighted sum of its parts."""
    from effpose.model import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_centernet("A"), tmp_path / "teacher.pt")
    (tmp_path / "slim.json").write_text(json.dumps(build_centernet("A").genotype.skip_layers({(1, 1), (2, 2)}, "slim")
                                                   .to_dict()))
    source = {"name": "tiny", "annotations": str(tiny_detection_data["annotations"]),
              "images": str(tiny_detection_data["images"])}
    config = {"arch": str(tmp_path / "slim.json"), "input_size": 128, "init_checkpoint": str(tmp_path / "teacher.pt"),
              "distill_checkpoint": str(tmp_path / "teacher.pt"), "distill_weight": 2.0, "train": [source],
              "epochs": 2, "samples_per_epoch": 8, "batch_size": 4, "workers": 0, "out_dir": str(tmp_path / "run"),
              **options}
    (tmp_path / "det.json").write_text(json.dumps(config))
    trained = subprocess.run([EFFPOSE, "train-detector", "--config", str(tmp_path / "det.json")],
                             check=False, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "distilling from" in trained.stderr
    assert ("stochastic depth" in trained.stderr) == ("drop_path" in options)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in history:
        parts = record["loss_heatmap"] + record["loss_size"] + record["loss_offset"] + 2.0 * record["loss_distill"]
        parts += options.get("giou_weight", 0.0) * record.get("loss_giou", 0.0)
        assert record["loss_distill"] > 0 and record["loss"] == pytest.approx(parts, rel=1e-4)
        assert ("loss_giou" in record) == ("giou_weight" in options)

@pytest.mark.slow
def test_a_detector_recovered_from_its_onnx_computes_what_the_onnx_computes(
    tmp_path: Path, randomized, data_dir: Path
) -> None:
    torch.manual_seed(0)
    model = randomized(build_centernet("A", max_detections=20), input_size=(128, 128))
    onnx_path = export_detector(model, tmp_path / "det.onnx", input_size=128, weights="random")
    recovered = subprocess.run([sys.executable, "scripts/detector_from_onnx.py", "--onnx", str(onnx_path),
                                "--out", str(tmp_path / "seed.pt"), "--count", "4"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    seed, extra = load_detector(tmp_path / "seed.pt")
    assert extra["recovered_from"] == str(onnx_path)
    assert check_detector_parity(seed, onnx_path, input_size=128) <= 1e-3  # on inputs the script never saw
    norms = [m for m in seed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(float(m.running_var.min()) > 0 for m in norms)
    assert sum(not torch.allclose(m.weight, torch.ones_like(m.weight)) for m in norms) > len(norms) // 2


def test_committed_detector_resume_point_and_teacher_fit_the_campaign_recipe(data_dir: Path) -> None:
    """configs/campaign_detector.json resumes checkpoints/person_detector/last.pt: its weights and moving average
    load into the recipe's (pruned) genotype, and the distillation teacher it names (shared data) labels a canvas."""
    config = DetectorConfig.load(REPO_ROOT / "configs/campaign_detector.json")
    state = torch.load(REPO_ROOT / "checkpoints/person_detector/last.pt", map_location="cpu", weights_only=False)
    model = build_centernet(str(REPO_ROOT / config.arch), config.max_detections)
    model.load_state_dict({name: tensor.float() for name, tensor in state["state_dict"].items()})
    averaged = AveragedModel(model, use_buffers=True)
    averaged.load_state_dict({name: tensor.float() for name, tensor in state["ema"].items()})  # as resuming does
    assert state["train_config"]["input_size"] == config.input_size
    # what a release of a resume point ships (scripts/release_detector.py --checkpoint last.pt): the moving average
    shipped, _ = load_detector(REPO_ROOT / "checkpoints/person_detector/last.pt", moving_average=True)
    expected = averaged.module.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in shipped.state_dict().items())
    raw, _ = load_detector(REPO_ROOT / "checkpoints/person_detector/last.pt")
    assert not all(torch.equal(value, expected[name]) for name, value in raw.state_dict().items())
    assert not config.distill_checkpoint and config.distill_detector_path().is_relative_to(data_dir)
    teacher = OnnxTeacher(config.distill_detector_path(), config.distill_min_score)
    assert teacher.targets(np.zeros((config.input_size, config.input_size, 3), np.float32))["teacher_mask"].sum() == 0


@pytest.mark.slow
def test_detector_pack_trains_through_the_gpu_script_on_a_cpu(
    tiny_detection_data: dict[str, Path], tmp_path: Path, data_dir: Path
) -> None:
    """scripts/train_gpu.sh detector, unchanged but for a tiny batch and budget: resumes the committed resume point
    (distilled from YOLOX-nano, named by an absolute path) from a pack alone and writes the next resume point."""
    teacher = data_dir / "models/yolox_nano/yolox_nano.onnx"
    paths = {"annotations": str(tiny_detection_data["annotations"]), "images": str(tiny_detection_data["images"])}
    records = load_source(DetectionSource(name="x", **paths))
    write_detector_pack({"coco_train": records[:4], "lspet_train": records[4:]}, tmp_path / "det.npz", max_side=288)
    out = tmp_path / "gpu_run"
    result = subprocess.run(["bash", "scripts/train_gpu.sh", "detector", str(tmp_path / "det.npz"), str(out),
                             "--stop-after", "5s", "--cfg-options", "batch_size=2", "samples_per_epoch=4",
                             "workers=0", f"distill_detector={teacher}"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600,
                            env={**os.environ, "EFFPOSE_DATA": str(tmp_path / "no_data")})  # the pack only
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"distilling from {teacher}'s boxes" in result.stderr
    committed = torch.load(REPO_ROOT / "checkpoints/person_detector/last.pt", weights_only=False)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["epoch"] > committed["epoch"] and state["train_config"]["pack"] == str(tmp_path / "det.npz")
    assert state["history"][:len(committed["history"])] == committed["history"]
    new = state["history"][len(committed["history"]):]
    assert new and new[0]["crops_seen"] == committed["history"][-1]["crops_seen"] + new[0]["crops"]
    load_detector(out / "last.pt", moving_average=True)  # what scripts/release_detector.py --checkpoint ships


@pytest.mark.slow
def test_detector_campaign_stops_resumes_and_regenerates_its_progress_table(
    tiny_detection_data: dict[str, Path], tmp_path: Path
) -> None:
    source = {"name": "coco_val", "annotations": str(tiny_detection_data["annotations"]),
              "images": str(tiny_detection_data["images"])}
    config = {"arch": "A", "input_size": 128, "init": "scratch", "train": [source], "val": [source],
              "epochs": 1000, "samples_per_epoch": 4000, "batch_size": 4, "schedule": "constant", "ema_decay": 0.9,
              "warmup_steps": 1, "workers": 0}
    (tmp_path / "det.json").write_text(json.dumps(config))
    first, second = tmp_path / "detector_r0", tmp_path / "detector_r1"
    for run, start in ((first, []), (second, ["--resume", str(first / "last.pt")])):
        trained = subprocess.run([EFFPOSE, "train-detector", "--config", str(tmp_path / "det.json"), *start,
                                  "--stop-after", "3s", "--out-dir", str(run)],
                                 capture_output=True, text=True, timeout=300)
        assert trained.returncode == 0, trained.stderr[-3000:]
    state = torch.load(second / "last.pt", weights_only=False)
    history = state["history"]
    assert "ema" in state and [h["run"] for h in history] == ["detector_r0", "detector_r1"]
    assert history[1]["crops_seen"] == history[0]["crops"] + history[1]["crops"] and not history[1]["complete"]
    assert all(0.0 <= h["coco_val/AP"] <= 1.0 for h in history)

    resume_dir, results = tmp_path / "checkpoints", tmp_path / "results.md"
    results.write_text("<!-- campaign-progress:start -->\npose\n<!-- campaign-progress:end -->\n"
                       "<!-- detector-campaign-progress:start -->\nold\n<!-- detector-campaign-progress:end -->\n")
    finished = subprocess.run([sys.executable, "scripts/campaign_finish.py", "--kind", "detector", "--run",
                               str(second), "--resume-dir", str(resume_dir), "--results", str(results)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (resume_dir / "last.pt").read_bytes() == (second / "last.pt").read_bytes()
    table = results.read_text()
    assert "pose" in table and "old" not in table and "box AP / AP50 / AR" in table
    rows = [line for line in table.splitlines() if line.startswith("| detector_r")]
    assert [row.split(" | ")[2] for row in rows] == ["128x128", "128x128"]
    assert f"{history[1]['crops_seen']:,}" in rows[1] and f"{history[1]['coco_val/AP']:.4f}" in rows[1]


def test_a_soup_holds_the_mean_of_its_checkpoints_moving_averages(tmp_path: Path) -> None:
    """scripts/detector_soup.py: the mean of each checkpoint's weights (its moving average where it holds one, not
    its raw weights), counters left as they are; one checkpoint or two architectures are refused."""
    from effpose.model import save_checkpoint

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import detector_soup
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    first, second, raw = (build_centernet("A") for _ in range(3))
    save_checkpoint(first, tmp_path / "a.pt", train_config={"input_size": 128})
    average = {"n_averaged": torch.tensor(3), **{f"module.{k}": v for k, v in second.state_dict().items()}}
    save_checkpoint(raw, tmp_path / "b.pt", ema=average)  # a resume point: raw weights beside their average
    model, input_size = detector_soup.soup([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert input_size == 128
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (first.state_dict()[name] + second.state_dict()[name]) / 2)
    with pytest.raises(ValueError, match="two"):
        detector_soup.soup([tmp_path / "a.pt"])
    save_checkpoint(build_centernet("mbv2"), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="different"):
        detector_soup.soup([tmp_path / "a.pt", tmp_path / "c.pt"])
