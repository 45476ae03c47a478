"""Detector training data: person boxes per image from COCO annotations and/or a teacher's detections, and the
dataset that turns them into augmented canvases with CenterNet targets.

Boxes of a COCO-format file: every non-crowd annotation of category 1 with a valid box (crowd regions are
simply not used). Teacher boxes: a COCO *results* list (``image_id``, ``category_id`` 1, ``bbox`` [x, y, w, h],
``score``) for the file's images, kept from ``teacher_threshold`` up. Images left without any box are dropped:
every image of these sets shows people, so an empty list means missed people, not a background image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from effpose.data.coco import read_coco_json, xywh_to_xyxy
from effpose.data.dataset import read_image
from effpose.detector_training.augment import (
    DetectionAugment,
    Placement,
    box_crop,
    compose,
    letterbox_placement,
    mosaic_tiles,
    paste_person,
    random_placement,
)
from effpose.detector_training.config import DetectionSource
from effpose.detector_training.targets import STRIDE, encode_targets
from effpose.detector_training.teacher import OnnxTeacher
from effpose.processing.boxes import box_coverage, box_iou


@dataclass(frozen=True, eq=False)
class ImageBoxes:
    """One training image and its person boxes, float32 (M, 4) x1, y1, x2, y2 in image pixels."""

    image_path: Path
    image_id: int
    boxes: np.ndarray
    source: str


def read_boxes_image(record: ImageBoxes) -> np.ndarray:
    """The BGR image of ``record`` from its file (the default image reader of :class:`DetectionDataset`)."""
    return read_image(record.image_path)


def _boxes_by_image(entries: Sequence[dict], where: str) -> dict[int, list[tuple[float, float, float, float]]]:
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for entry in entries:
        box = xywh_to_xyxy(entry.get("bbox"), where)
        if box is not None:
            boxes.setdefault(int(entry["image_id"]), []).append(box)
    return boxes


def gt_person_boxes(data: dict) -> dict[int, list[tuple[float, float, float, float]]]:
    """Non-crowd person (category 1) boxes of a COCO-format annotation dict, by image id."""
    persons = [a for a in data["annotations"] if a.get("category_id", 1) == 1 and not a.get("iscrowd", 0)]
    return _boxes_by_image(persons, "annotation")


def teacher_boxes(results_json: str | Path, threshold: float) -> dict[int, list[tuple[float, float, float, float]]]:
    """Person boxes of a COCO results file with score >= ``threshold``, by image id."""
    path = Path(results_json)
    results = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(results, list) or not all(isinstance(result, dict) for result in results):
        raise ValueError(f"teacher file {path} is not a COCO results list (a JSON list of objects)")
    kept = [r for r in results if r.get("category_id", 1) == 1 and float(r["score"]) >= threshold]
    return _boxes_by_image(kept, f"teacher file {path}")


def merge_boxes(gt: np.ndarray, teacher: np.ndarray, max_iou: float, max_inside: float = 0.7) -> np.ndarray:
    """``gt`` plus the ``teacher`` boxes of people the annotation left out (all (M, 4) xyxy): those whose IoU with
    every GT box is <= ``max_iou`` and of which no GT box covers more than ``max_inside`` (a teacher box mostly
    inside an annotated person is a body part or a split of that person, not another person)."""
    if len(gt) == 0 or len(teacher) == 0:
        return np.concatenate([gt, teacher]).reshape(-1, 4)
    overlap = box_iou(teacher, gt).max(axis=1)
    inside = box_coverage(teacher, gt).max(axis=1)
    return np.concatenate([gt, teacher[(overlap <= max_iou) & (inside <= max_inside)]])


def load_source(source: DetectionSource) -> list[ImageBoxes]:
    """One :class:`ImageBoxes` per image of ``source`` that has at least one box of the configured kind."""
    annotations, image_root = source.paths()
    data = read_coco_json(annotations)
    gt = gt_person_boxes(data) if source.boxes in ("gt", "merged") else {}
    teacher = teacher_boxes(source.teacher_path(), source.teacher_threshold) if source.teacher else {}
    image_ids = {image["id"] for image in data["images"]}
    if source.teacher and teacher and not image_ids & set(teacher):
        raise ValueError(f"source {source.name!r}: teacher file {source.teacher} has no image of {annotations}")
    records = []
    for image in data["images"]:
        own = np.asarray(gt.get(image["id"], []), dtype=np.float32).reshape(-1, 4)
        extra = np.asarray(teacher.get(image["id"], []), dtype=np.float32).reshape(-1, 4)
        boxes = merge_boxes(own, extra, source.merge_iou, source.merge_inside)  # one side empty unless merged
        if len(boxes):
            boxes.setflags(write=False)
            records.append(ImageBoxes(image_root / image["file_name"], int(image["id"]), boxes, source.name))
    return records


class DetectionDataset(Dataset):
    """Letterboxed canvases with CenterNet targets for detector training.

    An item is a dict: ``"image"`` float32 (3, S, S) RGB in [0, 1] (what ``effpose.detectors.onnx_detector.preprocess``
    gives at inference), and the float32 maps of :func:`~effpose.detector_training.targets.encode_targets`
    (``"heatmap"``, ``"size"``, ``"offset"``, ``"mask"``). With ``augment`` enabled each item draws new random
    placements (and, with ``mosaic_prob``, three more images of this dataset) from a numpy generator seeded from
    ``torch.initial_seed()``, so every DataLoader worker has its own stream; otherwise items are the plain letterbox.
    ``read`` gives a record's BGR image: from its file, or from a data pack
    (:class:`~effpose.data.pack.PackedImages`). ``regression_cells`` is passed to ``encode_targets``. With a
    ``teacher`` (:class:`~effpose.detector_training.teacher.OnnxTeacher`) an item also holds its soft targets for the
    same canvas (``"teacher_heatmap"``, ``"teacher_size"``, ``"teacher_offset"``, ``"teacher_mask"``).
    """

    def __init__(self, records: Sequence[ImageBoxes], input_size: int = 320,
                 augment: DetectionAugment | None = None,
                 read: Callable[[ImageBoxes], np.ndarray] = read_boxes_image,
                 regression_cells: str = "centre", teacher: OnnxTeacher | None = None) -> None:
        if input_size % 32:
            raise ValueError(f"input size {input_size} must be a multiple of 32")
        self.records = list(records)
        self.input_size = int(input_size)
        self.augment = augment if augment is not None else DetectionAugment.none()
        self.read = read
        self.regression_cells = regression_cells
        self.teacher = teacher
        self._rng: tuple[int, np.random.Generator] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, boxes = self.canvas(index, self._generator() if self.augment.enabled else None)
        targets = encode_targets(boxes, self.input_size, STRIDE, self.regression_cells)
        if self.teacher is not None:
            targets.update(self.teacher.targets(image))
        rgb = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)) / np.float32(255.0)
        return {"image": torch.from_numpy(rgb), **{name: torch.from_numpy(value) for name, value in targets.items()}}

    def _generator(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or self._rng[0] != seed:
            self._rng = (seed, np.random.default_rng(seed))
        return self._rng[1]

    def canvas(self, index: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` before target encoding: the float32 BGR canvas (S, S, 3) and its boxes (M, 4).

        Without ``rng`` it is the plain letterbox; with it, a random placement or (``mosaic_prob``) a mosaic of
        this image and three random others, with (``paste_prob``) persons of random items pasted on it, blended
        (``mixup_prob``) half and half with the canvas of a random other item, drawn the same way, whose boxes it
        also takes.
        """
        image, boxes = self._placed(index, rng)
        if rng is not None and self.augment.paste_prob > 0 and rng.random() < self.augment.paste_prob:
            image, boxes = self._pasted(image, boxes, rng)
        if rng is not None and self.augment.mixup_prob > 0 and rng.random() < self.augment.mixup_prob:
            other, other_boxes = self._placed(int(rng.integers(0, len(self.records))), rng)
            image, boxes = (image + other) * np.float32(0.5), np.concatenate([boxes, other_boxes])
        return image, boxes

    def _pasted(self, image: np.ndarray, boxes: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``image`` with 1 to ``paste_count`` persons pasted on it: each a random box of a random item."""
        for _ in range(int(rng.integers(1, self.augment.paste_count + 1))):
            record = self.records[int(rng.integers(0, len(self.records)))]
            crop = box_crop(self.read(record), record.boxes[int(rng.integers(0, len(record.boxes)))])
            if crop is not None:
                image, boxes = paste_person(image, boxes, crop, self.augment, rng)
        return image, boxes

    def _placed(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` placed on its own canvas: the letterbox, a random placement or a mosaic."""
        size = self.input_size
        mosaic = rng is not None and rng.random() < self.augment.mosaic_prob
        indices = [index, *rng.integers(0, len(self.records), 3)] if mosaic else [index]
        images = [self.read(self.records[i]) for i in indices]
        tiles = mosaic_tiles(size, rng) if mosaic else [(0, 0, size, size)]
        placements: list[Placement] = [
            letterbox_placement((image.shape[1], image.shape[0]), size) if rng is None
            else random_placement((image.shape[1], image.shape[0]), tile, self.augment, rng)
            for image, tile in zip(images, tiles)
        ]
        return compose(images, [self.records[i].boxes for i in indices], placements, size, self.augment)
