"""Tests for effpose.data: COCO-format records, top-down samples and targets, augmentation, mixed sampling."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from effpose.data import PersonRecord, load_person_records
from effpose.data.dataset import AugmentConfig, MixedSampler, TopDownDataset, gaussian_heatmaps
from effpose.detector_training.augment import DetectionAugment
from effpose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from effpose.processing import (
    INPUT_MEAN,
    INPUT_STD,
    crop_person,
    crop_to_tensor,
    decode_heatmaps,
    heatmap_to_image,
    transform_points,
)

STRIDE = 4
INPUT_W, INPUT_H = 192, 256
LEFT_EYE, RIGHT_EYE = KEYPOINT_NAMES.index("left_eye"), KEYPOINT_NAMES.index("right_eye")
LEFT_WRIST, RIGHT_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
LEFT_ANKLE = KEYPOINT_NAMES.index("left_ankle")
# One coloured blob per marked joint; tensor channels are RGB (0 = red, 1 = green, 2 = blue).
MARKED = {LEFT_WRIST: 0, RIGHT_WRIST: 1, LEFT_ANKLE: 2}
IMAGE_W, IMAGE_H = 320, 240
BOX_XYWH = (100.0, 60.0, 60.0, 80.0)  # aspect 0.75 = the input's, so the crop scale is 192 / 75 = 2.56


def synthetic_keypoints() -> np.ndarray:
    """17 labelled (v=2) sub-pixel joints spread inside the box, at least 6 px from its border."""
    rng = np.random.default_rng(7)
    x, y, w, h = BOX_XYWH
    points = rng.uniform((x + 6, y + 6), (x + w - 6, y + h - 6), (NUM_KEYPOINTS, 2))
    points[LEFT_WRIST], points[RIGHT_WRIST], points[LEFT_ANKLE] = (112.3, 75.6), (147.8, 93.2), (121.4, 127.9)
    return np.column_stack([points, np.full(NUM_KEYPOINTS, 2.0)])


def draw_blobs(keypoints: np.ndarray) -> np.ndarray:
    """Black BGR image with a Gaussian blob (sigma 1.5 px) per marked joint in that joint's own colour."""
    ys, xs = np.mgrid[0:IMAGE_H, 0:IMAGE_W].astype(np.float64)
    image = np.zeros((IMAGE_H, IMAGE_W, 3), np.float64)
    for joint, rgb_channel in MARKED.items():
        x, y = keypoints[joint, :2]
        image[..., 2 - rgb_channel] += 255.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_coco(folder: Path, keypoints: np.ndarray, pseudo: list[int] | None = None, image: np.ndarray | None = None,
               extra_annotations: tuple[dict, ...] = ()) -> Path:
    """A one-image COCO person-keypoint file (plus its PNG) in ``folder``; returns the JSON path."""
    (folder / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "images" / "synthetic.png"), draw_blobs(keypoints) if image is None else image)
    annotation = {
        "id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0, "bbox": list(BOX_XYWH),
        "keypoints": keypoints.reshape(-1).tolist(), "num_keypoints": int((keypoints[:, 2] > 0).sum()),
        "area": BOX_XYWH[2] * BOX_XYWH[3],
    }
    if pseudo is not None:
        annotation["pseudo"] = pseudo
    data = {
        "images": [{"id": 5, "file_name": "synthetic.png", "width": IMAGE_W, "height": IMAGE_H}],
        "annotations": [annotation, *extra_annotations],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = folder / "synthetic.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def synthetic(tmp_path: Path) -> tuple[list[PersonRecord], np.ndarray]:
    keypoints = synthetic_keypoints()
    records = load_person_records(write_coco(tmp_path, keypoints), tmp_path / "images", source="synthetic")
    return records, keypoints


def peaks(item: dict) -> np.ndarray:
    """DARK-decoded target peaks of one item, (17, 2) in input pixels."""
    coords, _ = decode_heatmaps(item["target"][None].numpy(), method="dark")
    return coords[0] * STRIDE


def blob_centre(item: dict, rgb_channel: int) -> np.ndarray:
    """Intensity centroid (x, y) in input pixels of one colour channel of the item's normalised image."""
    background = -INPUT_MEAN[rgb_channel] / INPUT_STD[rgb_channel]
    mass = np.clip(item["image"][rgb_channel].numpy() - background, 0.0, None)
    ys, xs = np.mgrid[0:INPUT_H, 0:INPUT_W]
    return np.array([(mass * xs).sum(), (mass * ys).sum()]) / mass.sum()


# --- loading -------------------------------------------------------------------------------------


def test_real_coco_and_lspet_val_counts_and_pseudo_flags(data_dir: Path) -> None:
    coco_json = data_dir / "coco/annotations/person_keypoints_val.json"
    coco = load_person_records(coco_json, data_dir / "coco/images", "coco")
    lspet = load_person_records(data_dir / "lspet/annotations/lspet_val.json", data_dir / "lspet/images", "lspet")
    assert len(coco) == 325 and len(lspet) == 500
    assert sum(int((r.keypoints[:, 2] > 0).sum()) for r in coco) == 3283
    assert sum(int((r.keypoints[:, 2] > 0).sum()) for r in lspet) == 5902
    assert not any(r.pseudo.any() for r in coco)
    pseudo = np.stack([r.pseudo for r in lspet])
    assert pseudo.sum() == 593 and pseudo[:, :5].sum() == 593 and pseudo.any(axis=1).sum() == 225
    assert np.all(np.stack([r.keypoints[:, 2] for r in lspet])[pseudo] == 2)
    first = lspet[0]
    assert first.source == "lspet" and first.image_path.is_file() and first.image_id == first.annotation_id == 8501
    assert first.keypoints.dtype == np.float32 and first.keypoints.shape == (17, 3)
    x1, y1, x2, y2 = first.box_xyxy
    assert (x2 - x1, y2 - y1) == pytest.approx((92.19, 129.86))


def test_real_lspet_sample_targets_map_back_to_the_labels(data_dir: Path) -> None:
    records = load_person_records(data_dir / "lspet/annotations/lspet_val.json", data_dir / "lspet/images", "lspet")
    dataset = TopDownDataset(records[:3], pseudo_weight=0.5)
    for index in range(3):
        item = dataset[index]
        weight = item["target_weight"].numpy()
        labelled = records[index].keypoints[:, 2] > 0
        assert np.all((weight > 0) == labelled)  # val crops are the padded box: every labelled joint is inside
        assert np.all(weight[records[index].pseudo] == 0.5)
        coords, _ = decode_heatmaps(item["target"][None].numpy(), method="dark")
        back = heatmap_to_image(coords, item["matrix"][None].numpy(), STRIDE)[0]
        np.testing.assert_allclose(back[labelled], records[index].keypoints[labelled, :2], atol=0.1)


def test_loader_skips_crowd_empty_and_degenerate_persons(tmp_path: Path) -> None:
    keypoints = synthetic_keypoints()
    base = {"image_id": 5, "category_id": 1, "bbox": list(BOX_XYWH), "keypoints": keypoints.reshape(-1).tolist()}
    unlabelled = np.zeros_like(keypoints).reshape(-1).tolist()
    extras = (
        {**base, "id": 2, "iscrowd": 1},
        {**base, "id": 3, "keypoints": unlabelled},
        {**base, "id": 4, "bbox": [10.0, 10.0, 0.0, 30.0]},
        {**base, "id": 5, "bbox": [10.0, 10.0, 20.0, float("nan")]},
    )
    path = write_coco(tmp_path, keypoints, extra_annotations=extras)
    records = load_person_records(path, tmp_path / "images")
    assert [r.annotation_id for r in records] == [1]
    assert records[0].source == "synthetic" and not records[0].pseudo.any()
    assert records[0].box_xyxy == (100.0, 60.0, 160.0, 140.0) and records[0].area == 60.0 * 80.0


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    path = write_coco(tmp_path, synthetic_keypoints())
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_person_records(tmp_path / "missing.json", tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="no_images"):
        load_person_records(path, tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_person_records(broken, tmp_path / "images")
    broken.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="broken.json.*'images'"):
        load_person_records(broken, tmp_path / "images")
    short = json.loads(path.read_text())
    short["annotations"][0]["keypoints"] = [1.0, 2.0, 2]
    broken.write_text(json.dumps(short))
    with pytest.raises(ValueError, match="annotation 1.*17 x"):
        load_person_records(broken, tmp_path / "images")


def test_unreadable_images_raise_errors_naming_the_file(synthetic, tmp_path: Path) -> None:
    records, _ = synthetic
    missing = TopDownDataset([replace(records[0], image_path=tmp_path / "gone.jpg")])
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        missing[0]
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")
    garbage = TopDownDataset([replace(records[0], image_path=tmp_path / "garbage.jpg")])
    with pytest.raises(ValueError, match="garbage.jpg"):
        garbage[0]


# --- targets and geometry without augmentation ------------------------------------------------------


def test_gaussian_heatmaps_peak_at_the_exact_sub_pixel_point() -> None:
    maps = gaussian_heatmaps(np.array([[10.0, 20.0], [10.3, 20.7]]), (48, 64), sigma=2.0)
    assert maps.shape == (2, 64, 48) and maps.dtype == np.float32
    assert maps[0, 20, 10] == 1.0 and maps[0].max() == 1.0
    assert maps[1, 21, 10] == pytest.approx(np.exp(-(0.3**2 + 0.3**2) / 8.0), rel=1e-6)
    assert maps[1, 30, 40] == pytest.approx(np.exp(-(29.7**2 + 9.3**2) / 8.0), abs=1e-12)


def test_validation_item_matches_the_inference_crop_and_targets_map_back(synthetic) -> None:
    records, keypoints = synthetic
    dataset = TopDownDataset(records, (INPUT_W, INPUT_H), sigma=2.0)
    item = dataset[0]
    assert item["image"].shape == (3, INPUT_H, INPUT_W) and item["image"].dtype == torch.float32
    assert item["target"].shape == (17, INPUT_H // 4, INPUT_W // 4) and item["target"].dtype == torch.float32
    assert item["index"] == 0
    np.testing.assert_array_equal(item["target_weight"].numpy(), np.ones(17, np.float32))

    # Same pixels (BGR read, BGR -> RGB, ImageNet normalisation) and geometry as the inference path.
    image = cv2.imread(str(records[0].image_path), cv2.IMREAD_COLOR)
    crop, matrix = crop_person(image, records[0].box_xyxy, (INPUT_W, INPUT_H), padding=1.25)
    np.testing.assert_array_equal(item["image"].numpy(), crop_to_tensor([crop])[0])
    np.testing.assert_allclose(item["matrix"].numpy(), matrix, atol=1e-12)

    coords, _ = decode_heatmaps(item["target"][None].numpy(), method="dark")
    back = heatmap_to_image(coords, matrix[None], STRIDE)[0]
    np.testing.assert_allclose(back, keypoints[:, :2], atol=0.1)
    for joint, channel in MARKED.items():
        np.testing.assert_allclose(blob_centre(item, channel), peaks(item)[joint], atol=0.5)


def test_target_weight_unlabelled_outside_and_pseudo(tmp_path: Path) -> None:
    keypoints = synthetic_keypoints()
    keypoints[0] = (130.0, 100.0, 0.0)  # unlabelled, although its coordinates lie inside the box
    keypoints[15] = (60.0, 100.0, 2.0)  # labelled, left of the padded box (x 92.5 .. 167.5)
    keypoints[16] = (150.0, 235.0, 2.0)  # labelled, below the padded box (y 50 .. 150)
    pseudo = [0] * 17
    pseudo[LEFT_EYE] = pseudo[RIGHT_EYE] = 1
    records = load_person_records(write_coco(tmp_path, keypoints, pseudo), tmp_path / "images")
    for pseudo_weight in (0.5, 0.25):
        item = TopDownDataset(records, pseudo_weight=pseudo_weight)[0]
        expected = np.ones(17, np.float32)
        expected[[0, 15, 16]] = 0.0
        expected[[LEFT_EYE, RIGHT_EYE]] = pseudo_weight
        np.testing.assert_array_equal(item["target_weight"].numpy(), expected)
        assert item["target"][[0, 15, 16]].abs().sum() == 0
        assert item["target"][LEFT_EYE].max() > 0.5

    # Zooming in (a crop a third of the size) pushes the outer joints out of the crop.
    dataset = TopDownDataset(records)
    params = dataset.crop_params(0)
    item = dataset.load(0, replace(params, size=tuple(s / 3 for s in params.size)))
    # Heatmap pixels cover input x in [-2, W - 2) (pixel centres at stride * hx), likewise y.
    in_crop = np.all((transformed := transform_points(keypoints[:, :2], item["matrix"].numpy())) >= -2, axis=1)
    in_crop &= np.all(transformed < [INPUT_W - 2, INPUT_H - 2], axis=1)
    weighted = item["target_weight"].numpy() > 0
    assert 3 < in_crop.sum() < 15
    np.testing.assert_array_equal(weighted, in_crop & (keypoints[:, 2] > 0))
    assert item["target"][~weighted].abs().sum() == 0


# --- augmentation --------------------------------------------------------------------------------


def only(**amounts: float) -> AugmentConfig:
    """No augmentation except the named amounts."""
    return replace(AugmentConfig.none(), **amounts)


def test_flip_swaps_left_and_right_onto_the_mirrored_crop(tmp_path: Path) -> None:
    keypoints = synthetic_keypoints()
    pseudo = [0] * 17
    pseudo[LEFT_EYE] = 1
    records = load_person_records(write_coco(tmp_path, keypoints, pseudo), tmp_path / "images")
    plain = TopDownDataset(records)[0]
    flipped = TopDownDataset(records, train=True, augment=only(flip_prob=1.0))[0]

    # The crop is the plain crop mirrored (x -> W - 1 - x), up to warpAffine's sub-pixel rounding.
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[..., ::-1], atol=0.05)
    red, green = blob_centre(flipped, MARKED[LEFT_WRIST]), blob_centre(flipped, MARKED[RIGHT_WRIST])
    np.testing.assert_allclose(peaks(flipped)[LEFT_WRIST], green, atol=0.5)  # annotated right wrist
    np.testing.assert_allclose(peaks(flipped)[RIGHT_WRIST], red, atol=0.5)  # annotated left wrist
    mirrored = peaks(plain)[RIGHT_WRIST] * [-1, 1] + [INPUT_W - 1, 0]
    np.testing.assert_allclose(peaks(flipped)[LEFT_WRIST], mirrored, atol=0.1)
    assert flipped["target_weight"][RIGHT_EYE] == 0.5 and flipped["target_weight"][LEFT_EYE] == 1.0


def test_rotated_and_scaled_targets_follow_the_image(synthetic) -> None:
    records, keypoints = synthetic
    dataset = TopDownDataset(records)
    base = dataset.crop_params(0)
    params = replace(base, rotation_deg=90.0, size=tuple(s * 1.3 for s in base.size))
    item = dataset.load(0, params)
    for joint, channel in MARKED.items():
        np.testing.assert_allclose(blob_centre(item, channel), peaks(item)[joint], atol=0.5)
    # 90 degrees: the box's vertical axis now runs horizontally, so joints spread wider than tall.
    spread = np.ptp(peaks(item), axis=0)
    assert spread[0] > spread[1]
    coords, _ = decode_heatmaps(item["target"][None].numpy(), method="dark")
    back = heatmap_to_image(coords, item["matrix"][None].numpy(), STRIDE)[0]
    np.testing.assert_allclose(back, keypoints[:, :2], atol=0.1)


def test_random_parameters_follow_the_recipe(tmp_path: Path) -> None:
    keypoints = synthetic_keypoints()
    keypoints[8:, 2] = 0  # 8 labelled joints: too few for the half-body transform
    records = load_person_records(write_coco(tmp_path, keypoints), tmp_path / "images")
    dataset = TopDownDataset(records, train=True)
    base = dataset.crop_params(0)
    rng = np.random.default_rng(0)
    draws = [dataset.crop_params(0, rng) for _ in range(3000)]
    scale = np.array([p.size for p in draws]) / base.size
    rotation = np.array([p.rotation_deg for p in draws])
    assert np.all([p.center == base.center for p in draws])
    np.testing.assert_allclose(scale[:, 0], scale[:, 1])
    # 1 + N(0, 0.35) clipped (not truncated) to [0.65, 1.35]: 31.7 % sit on the bounds, std 0.718 * 0.35.
    assert scale.min() >= 0.65 and scale.max() <= 1.35 and scale.std() == pytest.approx(0.251, abs=0.01)
    assert np.mean(np.isclose(np.abs(scale[:, 0] - 1), 0.35)) == pytest.approx(0.317, abs=0.03)
    assert np.abs(rotation).max() <= 90.0 and np.abs(rotation).max() > 60.0
    assert np.mean(rotation == 0.0) == pytest.approx(0.4, abs=0.04)
    assert np.mean([p.flip for p in draws]) == pytest.approx(0.5, abs=0.04)
    colour = np.array([(p.brightness, p.contrast, p.saturation) for p in draws])
    assert colour.min() >= 0.8 and colour.max() <= 1.2 and colour.std() > 0.1
    assert TopDownDataset(records).crop_params(0, None) == base


def test_half_body_crops_around_upper_or_lower_joints(synthetic) -> None:
    records, _ = synthetic
    dataset = TopDownDataset(records, train=True, augment=only(half_body_prob=1.0))
    rng = np.random.default_rng(1)
    joints = records[0].keypoints[:, :2].astype(np.float64)
    upper, lower = joints[:11], joints[11:]
    seen = set()
    for _ in range(40):
        params = dataset.crop_params(0, rng)
        part = upper if np.allclose(params.center, upper.mean(axis=0)) else lower
        np.testing.assert_allclose(params.center, part.mean(axis=0))
        w, h = np.ptp(part, axis=0)
        w, h = max(w, 0.75 * h), max(h, w / 0.75)
        np.testing.assert_allclose(params.size, (1.5 * w, 1.5 * h))
        seen.add(part is upper)
    assert seen == {True, False}


def test_colour_jitter_changes_pixels_not_geometry(synthetic) -> None:
    records, _ = synthetic
    dataset = TopDownDataset(records, train=True, augment=only(brightness=0.2, contrast=0.2, saturation=0.2))
    item, plain = dataset[0], TopDownDataset(records)[0]
    assert not torch.equal(item["image"], plain["image"])
    assert torch.equal(item["target"], plain["target"]) and torch.equal(item["matrix"], plain["matrix"])


def test_validation_dataset_refuses_augmentation(synthetic) -> None:
    records, _ = synthetic
    with pytest.raises(ValueError, match="train=False"):
        TopDownDataset(records, augment=AugmentConfig())
    with pytest.raises(ValueError, match="stride"):
        TopDownDataset(records, input_size=(190, 256))


# --- mixing sources and loading in workers ---------------------------------------------------------


class Sized(torch.utils.data.Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def test_mixed_sampler_draws_sources_in_ratio() -> None:
    concat = ConcatDataset([Sized(5), Sized(50)])
    sampler = MixedSampler(concat, ratios=[0.3, 0.7], num_samples=1000, seed=3)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 1000 and first != second
    for indices in (first, second):
        small = np.array(indices) < 5
        assert small.sum() == 300
        np.testing.assert_array_equal(np.bincount(np.array(indices)[small], minlength=5), 60)
        np.testing.assert_array_equal(np.bincount(np.array(indices)[~small] - 5, minlength=50), 14)
        # Interleaved, not blocked: every 100-sample window holds roughly 30 % of the small source.
        windows = small.reshape(10, 100).mean(axis=1)
        assert windows.min() > 0.15 and windows.max() < 0.45
    sampler.set_epoch(1)
    assert list(sampler) == second
    assert list(MixedSampler(concat, [0.3, 0.7], 1000, seed=3)) == first
    odd = MixedSampler(concat, [1.0, 1.0], num_samples=7)
    assert sorted(np.bincount(np.array(list(odd)) >= 5, minlength=2)) == [3, 4]
    with pytest.raises(ValueError, match="one ratio per dataset"):
        MixedSampler(concat, [1.0], 10)


def test_mixed_loader_with_two_workers(synthetic) -> None:
    records, _ = synthetic
    small = TopDownDataset(records, (48, 64), train=True)
    large = TopDownDataset(records * 4, (48, 64), train=True)
    concat = ConcatDataset([small, large])
    sampler = MixedSampler(concat, [0.5, 0.5], num_samples=8, seed=0)
    assert pickle.loads(pickle.dumps(small)).records[0].image_path == records[0].image_path
    loader = DataLoader(concat, batch_size=2, sampler=sampler, num_workers=2)
    batches = list(loader)
    assert len(batches) == 4
    assert batches[0]["image"].shape == (2, 3, 64, 48) and batches[0]["target"].shape == (2, 17, 16, 12)
    assert all(torch.isfinite(b["image"]).all() for b in batches)
    # Each worker seeds its own augmentation stream: the workers' first items differ.
    same = DataLoader(small, batch_size=1, sampler=[0, 0], num_workers=2)
    first, second = list(same)
    assert not torch.equal(first["image"], second["image"])


@pytest.mark.parametrize("make, message", [
    (lambda: AugmentConfig(flip_prob=1.5), r"flip_prob must lie in \[0, 1\]"),
    (lambda: AugmentConfig(brightness=1.0), r"brightness must lie in \[0, 1\)"),
    (lambda: DetectionAugment(min_visible=-0.1), r"min_visible must lie in \[0, 1\]"),
    (lambda: DetectionAugment(saturation=1.0), r"saturation must lie in \[0, 1\)"),
])
def test_augmentation_configs_reject_amounts_outside_their_range(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()
    AugmentConfig(flip_prob=1.0, brightness=0.0)  # the closed / half-open ends themselves are fine
    DetectionAugment(min_visible=1.0, saturation=0.0)
