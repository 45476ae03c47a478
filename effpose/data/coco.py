"""Person records from COCO-format person-keypoint annotation files (COCO, LSPet in COCO layout).

One :class:`PersonRecord` per annotated person: where the image is, the person box as
(x1, y1, x2, y2), the 17 keypoints as (x, y, v) rows in image pixels and, for LSPet, which
keypoints are pseudo-labels (annotation field ``pseudo``, 17 flags).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effpose.keypoints import NUM_KEYPOINTS


@dataclass(frozen=True, eq=False)
class PersonRecord:
    """One annotated person.

    ``keypoints`` is float32 (17, 3): x, y in image pixels (pixel centres at integer coordinates)
    and v in column 2 (0 = not labelled, 1 = labelled but hidden, 2 = visible). ``pseudo`` is
    bool (17,): True where the keypoint is a pseudo-label rather than ground truth (both arrays are
    read-only when loaded by :func:`load_person_records`). ``source``
    names the dataset the record came from (e.g. ``"coco"``, ``"lspet"``).
    """

    image_path: Path
    image_id: int
    annotation_id: int
    box_xyxy: tuple[float, float, float, float]
    keypoints: np.ndarray
    pseudo: np.ndarray
    area: float
    source: str


def read_coco_json(annotation_json: str | Path) -> dict[str, Any]:
    """Read a COCO-layout annotation file; FileNotFoundError / ValueError name the file."""
    annotation_json = Path(annotation_json)
    if not annotation_json.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotation_json}")
    try:
        data = json.loads(annotation_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"annotation file {annotation_json} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"annotation file {annotation_json} needs 'images' and 'annotations' lists (COCO layout)")
    return data


def _keypoints(annotation: Mapping[str, Any], where: str) -> np.ndarray:
    keypoints = np.asarray(annotation.get("keypoints", []), dtype=np.float32)
    if keypoints.shape != (NUM_KEYPOINTS * 3,):
        raise ValueError(f"{where}: 'keypoints' must hold {NUM_KEYPOINTS} x [x, y, v], got {keypoints.size} numbers")
    keypoints = keypoints.reshape(NUM_KEYPOINTS, 3)
    keypoints.setflags(write=False)
    return keypoints


def _pseudo(annotation: Mapping[str, Any], where: str) -> np.ndarray:
    flags = np.asarray(annotation.get("pseudo", [0] * NUM_KEYPOINTS))
    if flags.shape != (NUM_KEYPOINTS,):
        raise ValueError(f"{where}: 'pseudo' must hold {NUM_KEYPOINTS} flags, got shape {flags.shape}")
    flags = flags.astype(bool)
    flags.setflags(write=False)
    return flags


def xywh_to_xyxy(bbox: Any, where: str = "bbox") -> tuple[float, float, float, float] | None:
    """A COCO [x, y, w, h] box as (x1, y1, x2, y2), or None when it is empty or not finite (croppers reject those)."""
    box = np.asarray(bbox if bbox is not None else [], dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = box
    if not np.all(np.isfinite(box)) or w <= 0 or h <= 0:
        return None
    return (float(x), float(y), float(x + w), float(y + h))


def is_scored_person(annotation: Mapping[str, Any]) -> bool:
    """A person COCOeval scores: not crowd, at least one labelled keypoint (v > 0)."""
    return not annotation.get("iscrowd", 0) and any(v > 0 for v in annotation.get("keypoints", [])[2::3])


def load_person_records(
    annotation_json: str | Path, image_root: str | Path, source: str | None = None
) -> list[PersonRecord]:
    """Read a COCO person-keypoint JSON file into one :class:`PersonRecord` per usable person.

    ``image_root`` is the folder the images' ``file_name`` entries are relative to. Skipped:
    crowd annotations, persons without any labelled keypoint (v > 0) and boxes with a
    non-positive or non-finite width or height. ``source`` defaults to the JSON file's stem.
    Raises FileNotFoundError for a missing file or folder and ValueError for a file that is not
    valid JSON in the COCO layout (the message names the file and, where useful, the annotation).
    Image files themselves are only opened when a sample is loaded.
    """
    annotation_json, image_root = Path(annotation_json), Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_root}")
    data = read_coco_json(annotation_json)
    source = annotation_json.stem if source is None else source
    try:
        file_names = {image["id"]: image["file_name"] for image in data["images"]}
    except (KeyError, TypeError) as error:
        raise ValueError(f"annotation file {annotation_json}: every image needs 'id' and 'file_name'") from error
    records = []
    for annotation in data["annotations"]:
        where = f"{annotation_json}, annotation {annotation.get('id')!r}"
        if not is_scored_person(annotation):
            continue
        keypoints = _keypoints(annotation, where)
        box = xywh_to_xyxy(annotation.get("bbox"), where)
        if box is None:
            continue
        if annotation.get("image_id") not in file_names:
            raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} is not in 'images'")
        records.append(
            PersonRecord(
                image_path=image_root / file_names[annotation["image_id"]],
                image_id=int(annotation["image_id"]),
                annotation_id=int(annotation["id"]),
                box_xyxy=box,
                keypoints=keypoints,
                pseudo=_pseudo(annotation, where),
                area=float(annotation.get("area", (box[2] - box[0]) * (box[3] - box[1]))),
                source=source,
            )
        )
    return records
