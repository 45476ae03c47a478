"""Packed training data: every training person as a pre-cut crop with context, in one small file.

A machine that receives only the checkout and one data file (a lent GPU) trains from a pack written here by
``effpose data pack``. Each person is stored as a square WebP image around its padded box, wide enough
(``context`` x the padded box's diagonal) that the scale, rotation and half-body augmentation of
:class:`~effpose.data.dataset.TopDownDataset` still find image content, at the resolution of the training input
(never above the original's), with its box and keypoints moved into the crop's pixels. The same dataset class
reads it: :func:`load_pack` gives the records of every source and a :class:`PackedImages` image reader.

The file is an uncompressed ``.npz`` (numpy, no pickle): the encoded images concatenated, their offsets, the
per-person arrays and a JSON ``meta`` entry (format version, input size, context, quality, counts). The helpers
for such files (:func:`encode_webp`, :class:`EncodedImages`, :func:`save_arrays`, :func:`load_arrays`) also serve
the detector's packs (:mod:`effpose.detector_training.pack`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from effpose.data.coco import PersonRecord
from effpose.data.dataset import read_record_image
from effpose.keypoints import NUM_KEYPOINTS
from effpose.processing.affine import box_to_center_size

PACK_FORMAT = 1


def encode_webp(image: np.ndarray, quality: int, what: str) -> bytes:
    """``image`` (BGR) as WebP bytes; ValueError naming ``what`` when OpenCV cannot encode it."""
    ok, encoded = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode {what}")
    return encoded.tobytes()


class EncodedImages:
    """The images of a pack: encoded images concatenated (uint8) and their offsets (int64, one more than images)."""

    def __init__(self, images: np.ndarray, offsets: np.ndarray) -> None:
        self.images, self.offsets = images, offsets

    @classmethod
    def arrays(cls, blobs: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The ``images`` and ``offsets`` arrays a pack stores for ``blobs``."""
        offsets = np.cumsum([0, *(len(blob) for blob in blobs)]).astype(np.int64)
        return {"images": np.frombuffer(b"".join(blobs), dtype=np.uint8), "offsets": offsets}

    def decode(self, position: int, what: str) -> np.ndarray:
        """The BGR image at ``position``; ValueError naming ``what`` when its bytes do not decode."""
        image = cv2.imdecode(self.images[self.offsets[position]:self.offsets[position + 1]], cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"pack entry {position} ({what}) is corrupt")
        return image


def save_arrays(out: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a pack's arrays to ``out`` as an uncompressed ``.npz`` (creating its folder)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:  # a file object: np.savez would add ".npz" to a name without it
        np.savez(handle, **arrays)


def load_arrays(path: str | Path, pack_format: int, writer: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A pack's arrays and its ``meta``, after checking that the file exists and has ``pack_format``
    (``writer``: the command that writes such packs, for the error message)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data pack not found: {path} (write one with `{writer}`)")
    with np.load(path, allow_pickle=False) as pack:
        arrays = {key: pack[key] for key in pack.files}
    meta = json.loads(str(arrays["meta"]))
    if meta.get("format") != pack_format:
        raise ValueError(f"{path}: pack format {meta.get('format')!r}, `{writer}` reads format {pack_format}")
    return arrays, meta


@dataclass(frozen=True)
class PackedCrop:
    """One person cut out for a pack: the encoded image and the image -> crop map ``x' = scale * x + offset``."""

    data: bytes
    scale: float
    offset: tuple[float, float]

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) original-image pixels -> crop pixels (pixel centres at integer coordinates in both)."""
        return points * self.scale + np.asarray(self.offset)


def cut_person(image: np.ndarray, record: PersonRecord, input_size: tuple[int, int], context: float,
               quality: int, padding: float = 1.25) -> PackedCrop:
    """The square context crop of ``record`` in ``image`` (BGR), resized down to the input's resolution.

    The square's side is ``context`` times the diagonal of the padded box (black beyond the image, as a training
    crop would be); it is shrunk (area interpolation) so that the padded box spans about ``input_size``.
    """
    width, height = input_size
    center, size = box_to_center_size(record.box_xyxy, width / height, padding)
    side = max(int(np.ceil(context * np.hypot(*size))), 1)
    x0, y0 = (int(np.round(c - side / 2)) for c in center)
    crop = cv2.warpAffine(image, np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), (side, side),
                          flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = max(min(side, int(np.round(context * np.hypot(width, height)))), 1)
    scale = out / side
    if out < side:  # cv2.resize maps pixel centres as x' = s (x + 0.5) - 0.5
        crop = cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA)
    data = encode_webp(crop, quality, f"the crop of annotation {record.annotation_id}")
    shift = 0.5 * scale - 0.5
    return PackedCrop(data, scale, (shift - scale * x0, shift - scale * y0))


def write_pack(sources: Mapping[str, Sequence[PersonRecord]], out: str | Path, input_size: tuple[int, int],
               context: float = 1.35, quality: int = 80,
               read: Callable[[PersonRecord], np.ndarray] = read_record_image) -> dict[str, object]:
    """Cut every person of ``sources`` (name -> records) and write the pack to ``out``; returns its ``meta``.

    ``read`` gives a record's BGR image; consecutive persons of one image read it once.
    """
    names = list(sources)
    blobs: list[bytes] = []
    columns: dict[str, list] = {key: [] for key in ("source", "file_name", "image_id", "annotation_id", "box", "keypoints",
                                                    "pseudo", "area")}
    cached: tuple[Path | None, np.ndarray | None] = (None, None)
    for source_index, name in enumerate(names):
        for record in sources[name]:
            if cached[0] != record.image_path:
                cached = (record.image_path, read(record))
            crop = cut_person(cached[1], record, input_size, context, quality)
            keypoints = np.array(record.keypoints, dtype=np.float32)
            labelled = keypoints[:, 2] > 0
            keypoints[labelled, :2] = crop.map_points(keypoints[labelled, :2])
            box = crop.map_points(np.asarray(record.box_xyxy, dtype=np.float64).reshape(2, 2)).reshape(4)
            blobs.append(crop.data)
            for key, value in (("source", source_index), ("file_name", str(record.image_path.name)),
                               ("image_id", record.image_id), ("annotation_id", record.annotation_id), ("box", box),
                               ("keypoints", keypoints), ("pseudo", record.pseudo),
                               ("area", record.area * crop.scale**2)):
                columns[key].append(value)
    meta = {"format": PACK_FORMAT, "input_size": list(input_size), "context": context, "quality": quality,
            "encoding": "webp", "persons": {name: len(sources[name]) for name in names}}
    arrays = {
        **EncodedImages.arrays(blobs),
        "source_names": np.array(names), "source": np.array(columns["source"], dtype=np.int16),
        "file_name": np.array(columns["file_name"]), "image_id": np.array(columns["image_id"], dtype=np.int64),
        "annotation_id": np.array(columns["annotation_id"], dtype=np.int64),
        "box": np.array(columns["box"], dtype=np.float32).reshape(-1, 4),
        "keypoints": np.array(columns["keypoints"], dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 3),
        "pseudo": np.array(columns["pseudo"], dtype=bool).reshape(-1, NUM_KEYPOINTS),
        "area": np.array(columns["area"], dtype=np.float32), "meta": np.array(json.dumps(meta)),
    }
    save_arrays(out, arrays)
    return meta


class PackedImages:
    """Image reader of a pack (for :class:`~effpose.data.dataset.TopDownDataset` or the detector's dataset): a
    record -> its BGR image, found by ``key(record)``, e.g. ``attrgetter("source", "annotation_id")``, among the
    ``keys`` of the pack's entries in order."""

    def __init__(self, images: EncodedImages, keys: Sequence[tuple[str, int]],
                 key: Callable[[Any], tuple[str, int]]) -> None:
        self.images, self.key = images, key
        self.index = {entry: position for position, entry in enumerate(keys)}

    def __call__(self, record: Any) -> np.ndarray:
        source, number = self.key(record)
        return self.images.decode(self.index[(source, number)], f"{source}, entry id {number}")


def load_pack(path: str | Path) -> tuple[dict[str, list[PersonRecord]], PackedImages, dict[str, object]]:
    """Read a pack: the records of each source (in crop pixels), the image reader and the pack's ``meta``."""
    arrays, meta = load_arrays(path, PACK_FORMAT, "effpose data pack")
    names = [str(name) for name in arrays["source_names"]]
    sources: dict[str, list[PersonRecord]] = {name: [] for name in names}
    keys = []
    for i in range(len(arrays["offsets"]) - 1):
        name = names[int(arrays["source"][i])]
        record = PersonRecord(
            image_path=Path(str(arrays["file_name"][i])), image_id=int(arrays["image_id"][i]),
            annotation_id=int(arrays["annotation_id"][i]), box_xyxy=tuple(float(v) for v in arrays["box"][i]),
            keypoints=arrays["keypoints"][i], pseudo=arrays["pseudo"][i], area=float(arrays["area"][i]), source=name)
        sources[name].append(record)
        keys.append((name, record.annotation_id))
    images = EncodedImages(arrays["images"], arrays["offsets"])
    return sources, PackedImages(images, keys, attrgetter("source", "annotation_id")), meta
