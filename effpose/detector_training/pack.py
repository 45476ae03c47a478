"""Packed detector training data: every training image, shrunk and WebP-encoded, with its person boxes, in one file.

The detector's counterpart of :mod:`effpose.data.pack`, for a machine that receives only the checkout and one data
file (a lent GPU): ``effpose data pack-detector`` writes it from a detector config's training sources, their boxes
already chosen and merged as :func:`~effpose.detector_training.data.load_source` does (so neither the shared data
nor the teacher's pseudo-box files are needed there), and ``effpose train-detector --cfg-options pack=FILE`` reads it.
Each image is shrunk (area interpolation, never enlarged) so that its longer side is at most ``max_side``: the
letterbox never shows an image larger than the training input, so only placements scaled above 1 (the scale
augmentation's upper half) lose detail. Boxes are scaled with their image (edge coordinates: ``x' = s x`` per axis).

The file is an uncompressed ``.npz`` (no pickle): the encoded images and their offsets, per image its source, id and
file name, all boxes concatenated with per-image offsets, and a JSON ``meta`` entry (format, max side, quality,
images and boxes per source).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from effpose.data.pack import EncodedImages, PackedImages, encode_webp, load_arrays, save_arrays
from effpose.detector_training.data import ImageBoxes, read_boxes_image

DETECTOR_PACK_FORMAT = 1
WRITER = "effpose data pack-detector"


def shrink(image: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` resized so that its longer side is at most ``max_side`` (unchanged when it already is), and the
    per-axis scale (new / old size) that maps its edge coordinates."""
    height, width = image.shape[:2]
    ratio = max_side / max(height, width)
    if ratio >= 1.0:
        return image, (1.0, 1.0)
    new_width, new_height = max(1, round(width * ratio)), max(1, round(height * ratio))
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized, (new_width / width, new_height / height)


def write_detector_pack(sources: Mapping[str, Sequence[ImageBoxes]], out: str | Path, max_side: int = 288,
                        quality: int = 70,
                        read: Callable[[ImageBoxes], np.ndarray] = read_boxes_image) -> dict[str, Any]:
    """Shrink and encode every image of ``sources`` (name -> records) with its boxes into the pack ``out``; returns
    the pack's ``meta``. ``read`` gives a record's BGR image."""
    if max_side < 32:
        raise ValueError(f"max_side must be at least 32, got {max_side}")
    names = list(sources)
    blobs: list[bytes] = []
    boxes: list[np.ndarray] = []
    columns: dict[str, list] = {"source": [], "image_id": [], "file_name": []}
    for source_index, name in enumerate(names):
        for record in sources[name]:
            image, (scale_x, scale_y) = shrink(read(record), max_side)
            blobs.append(encode_webp(image, quality, f"image {record.image_id} of source {name}"))
            boxes.append(np.asarray(record.boxes, dtype=np.float32) * np.float32([scale_x, scale_y] * 2))
            for key, value in (("source", source_index), ("image_id", record.image_id),
                               ("file_name", record.image_path.name)):
                columns[key].append(value)
    meta = {"format": DETECTOR_PACK_FORMAT, "max_side": max_side, "quality": quality, "encoding": "webp",
            "images": {name: len(sources[name]) for name in names},
            "boxes": {name: int(sum(len(record.boxes) for record in sources[name])) for name in names}}
    save_arrays(out, {
        **EncodedImages.arrays(blobs),
        "source_names": np.array(names), "source": np.array(columns["source"], dtype=np.int16),
        "image_id": np.array(columns["image_id"], dtype=np.int64), "file_name": np.array(columns["file_name"]),
        "boxes": np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32),
        "box_offsets": np.cumsum([0, *(len(b) for b in boxes)]).astype(np.int64),
        "meta": np.array(json.dumps(meta)),
    })
    return meta


def load_detector_pack(path: str | Path) -> tuple[dict[str, list[ImageBoxes]], PackedImages, dict[str, Any]]:
    """Read a detector pack: the records of each source (boxes in the shrunk images' pixels), the image reader and
    the pack's ``meta``."""
    arrays, meta = load_arrays(path, DETECTOR_PACK_FORMAT, WRITER)
    names = [str(name) for name in arrays["source_names"]]
    sources: dict[str, list[ImageBoxes]] = {name: [] for name in names}
    keys = []
    offsets = arrays["box_offsets"]
    for i in range(len(arrays["offsets"]) - 1):
        name = names[int(arrays["source"][i])]
        boxes = arrays["boxes"][offsets[i]:offsets[i + 1]].copy()
        boxes.setflags(write=False)
        record = ImageBoxes(Path(str(arrays["file_name"][i])), int(arrays["image_id"][i]), boxes, name)
        sources[name].append(record)
        keys.append((name, record.image_id))
    images = EncodedImages(arrays["images"], arrays["offsets"])
    return sources, PackedImages(images, keys, attrgetter("source", "image_id")), meta
