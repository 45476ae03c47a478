"""Top-down training / validation samples: affine person crops, Gaussian heatmap targets, augmentation.

Geometry follows the inference path exactly (``effpose.processing.affine``): the person box is
grown to the input aspect ratio and padded (``box_to_center_size``), cropped with one
``cv2.warpAffine`` of the BGR image and normalised by ``crop_to_tensor``. Heatmap pixel (hx, hy)
stands for input pixel (stride * hx, stride * hy), pixel centres at integer coordinates.
Augmentation is HRNet's recipe (half body, scale, rotation, horizontal flip) plus a small colour
jitter; a flip is composed into the crop matrix, so joints and pixels share one geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from effpose.data.coco import PersonRecord
from effpose.keypoints import NUM_KEYPOINTS, flip_order
from effpose.processing.affine import box_to_center_size, crop_to_tensor, get_affine_transform, transform_points

#: Keypoints HRNet's half-body transform counts as upper body (nose .. right wrist); the rest are lower body.
UPPER_BODY: tuple[int, ...] = tuple(range(11))
#: BT.601 luma weights in BGR order (the crops are BGR until ``crop_to_tensor``).
_LUMA_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


_FLIP_ORDER = np.asarray(flip_order())


def check_fractions(settings: object, names: Sequence[str], below_one: bool = False) -> None:
    """Raise ValueError unless every named attribute of ``settings`` lies in [0, 1] (in [0, 1) with ``below_one``)."""
    for name in names:
        value = getattr(settings, name)
        if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must lie in [0, {'1)' if below_one else '1]'}, got {value}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation amounts; the defaults are the release recipe (HRNet's COCO settings).

    ``scale_factor``: the crop size is multiplied by clip(1 + N(0, scale_factor), 1 -/+ scale_factor).
    ``rotation_deg``: with probability ``rotation_prob`` the crop is rotated by
    clip(N(0, rotation_deg), -/+ 2 * rotation_deg) degrees (HRNet's clipping).
    ``flip_prob``: probability of a horizontal flip (left/right joints swapped).
    ``half_body_prob``: probability of cropping only the upper or lower body when more than
    ``half_body_min_joints`` joints are labelled; the new box is the selected joints' extent grown
    to the input aspect ratio and by ``half_body_padding``, centred on their mean (as in HRNet).
    ``brightness`` / ``contrast`` / ``saturation``: each factor is drawn uniformly from 1 -/+ value.
    """

    scale_factor: float = 0.35
    rotation_deg: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        check_fractions(self, ("rotation_prob", "flip_prob", "half_body_prob"))
        check_fractions(self, ("scale_factor", "brightness", "contrast", "saturation"), below_one=True)
        if self.rotation_deg < 0 or self.half_body_padding <= 0:
            raise ValueError("rotation_deg must be >= 0 and half_body_padding > 0")

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """``"release"`` (the defaults), ``"light"`` (smaller geometric and colour changes, no half body: for a
        model that still under-fits) or ``"none"``."""
        presets = {"release": cls, "none": cls.none,
                   "light": lambda: cls(scale_factor=0.25, rotation_deg=20.0, rotation_prob=0.4, half_body_prob=0.0,
                                        brightness=0.1, contrast=0.1, saturation=0.1)}
        if name not in presets:
            raise ValueError(f"augmentation preset must be one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (validation): the crop is the padded person box, as at inference."""
        return cls(
            scale_factor=0.0, rotation_deg=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0,
            brightness=0.0, contrast=0.0, saturation=0.0,
        )


@dataclass(frozen=True)
class CropParams:
    """How one sample is cut out: box centre and (w, h) size in image pixels, rotation in degrees
    (as in ``get_affine_transform``), horizontal flip, and colour factors (1.0 = unchanged)."""

    center: tuple[float, float]
    size: tuple[float, float]
    rotation_deg: float = 0.0
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3) with cv2, as inference does; clear errors name the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        raise ValueError(f"could not decode image: {path}")
    return image


def read_record_image(record: PersonRecord) -> np.ndarray:
    """The BGR image of ``record`` from its file (the default image reader of :class:`TopDownDataset`)."""
    return read_image(record.image_path)


def gaussian_heatmaps(points: np.ndarray, heatmap_size: tuple[int, int], sigma: float) -> np.ndarray:
    """Unnormalised Gaussians exp(-d^2 / (2 sigma^2)) on the pixel grid, one per (J, 2) point.

    Points are sub-pixel (x, y) heatmap coordinates; each Gaussian is centred exactly there
    (peak value 1 at the point itself). ``heatmap_size`` is (width, height); returns float32 (J, h, w).
    """
    width, height = heatmap_size
    points = np.asarray(points, dtype=np.float32)
    scale = np.float32(-0.5 / sigma**2)
    gx = np.exp(scale * (np.arange(width, dtype=np.float32)[None, :] - points[:, 0:1]) ** 2)
    gy = np.exp(scale * (np.arange(height, dtype=np.float32)[None, :] - points[:, 1:2]) ** 2)
    return gy[:, :, None] * gx[:, None, :]


def jitter_colour(crop: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, then contrast (about the mean grey), then saturation (about each pixel's grey).

    ``crop`` is BGR (H, W, 3); returns float32 BGR values clipped to [0, 255].
    """
    image = crop.astype(np.float32) * np.float32(brightness)
    mean_grey = float((image @ _LUMA_BGR).mean())
    image = mean_grey + np.float32(contrast) * (image - mean_grey)
    grey = (image @ _LUMA_BGR)[..., None]
    image = grey + np.float32(saturation) * (image - grey)
    return np.clip(image, 0.0, 255.0, out=image)


def _pair(values: np.ndarray) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def _clipped_normal(rng: np.random.Generator, std: float, limit: float) -> float:
    return float(np.clip(rng.standard_normal() * std, -limit, limit))


class TopDownDataset(Dataset):
    """Person crops with Gaussian heatmap targets for top-down pose training and validation.

    An item is a dict: ``"image"`` float32 (3, H, W) normalised exactly like ``crop_to_tensor``
    (RGB, ImageNet statistics); ``"target"`` float32 (17, H / stride, W / stride) Gaussians of
    ``sigma`` heatmap pixels centred on the sub-pixel joint locations (all zero where the weight is
    0); ``"target_weight"`` float32 (17,): 1 for a labelled joint inside the heatmap,
    ``pseudo_weight`` for a pseudo-labelled one, 0 for unlabelled joints and joints outside the
    heatmap (beyond its pixels' extent); ``"matrix"`` float64 (2, 3) image -> input matrix of this
    crop (flip included); ``"index"`` the item index. ``input_size`` is (width, height). ``read`` gives a
    record's BGR image (default: its file; :class:`~effpose.data.pack.PackedImages` for a data pack).

    With ``train=True`` every item draws new ``augment`` parameters (default: the release recipe)
    from a numpy generator seeded lazily from ``torch.initial_seed()``, so each DataLoader worker
    (and each epoch of non-persistent workers) gets its own stream without a ``worker_init_fn``.
    With ``train=False`` items are deterministic and ``augment`` must be None or ``AugmentConfig.none()``.
    """

    def __init__(
        self,
        records: Sequence[PersonRecord],
        input_size: tuple[int, int] = (192, 256),
        sigma: float = 2.0,
        *,
        train: bool = False,
        augment: AugmentConfig | None = None,
        pseudo_weight: float = 0.5,
        padding: float = 1.25,
        stride: int = 4,
        read: Callable[[PersonRecord], np.ndarray] = read_record_image,
    ) -> None:
        width, height = int(input_size[0]), int(input_size[1])
        if stride < 1 or width % stride or height % stride:
            raise ValueError(f"input_size {input_size} must be a multiple of the heatmap stride {stride}")
        if not train and augment not in (None, AugmentConfig.none()):
            raise ValueError("a train=False dataset does not augment; pass augment=None or AugmentConfig.none()")
        if sigma <= 0 or padding <= 0 or not 0.0 <= pseudo_weight <= 1.0:
            raise ValueError("sigma and padding must be > 0 and pseudo_weight must lie in [0, 1]")
        self.records = list(records)
        self.input_size = (width, height)
        self.heatmap_size = (width // stride, height // stride)
        self.stride = stride
        self.sigma = float(sigma)
        self.train = train
        self.augment = augment if augment is not None else (AugmentConfig() if train else AugmentConfig.none())
        self.pseudo_weight = float(pseudo_weight)
        self.padding = float(padding)
        self.read = read
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rng = self._generator() if self.train else None
        return self.load(index, self.crop_params(index, rng))

    def _generator(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or self._rng_seed != seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def crop_params(self, index: int, rng: np.random.Generator | None = None) -> CropParams:
        """The crop of record ``index``: its padded box, augmented with ``self.augment`` when ``rng`` is given."""
        record = self.records[index]
        aspect = self.input_size[0] / self.input_size[1]
        center, size = box_to_center_size(record.box_xyxy, aspect, self.padding)
        if rng is None:
            return CropParams(center=_pair(center), size=_pair(size))
        aug = self.augment
        labelled = record.keypoints[:, 2] > 0
        if labelled.sum() > aug.half_body_min_joints and rng.random() < aug.half_body_prob:
            center, size = self._half_body(record.keypoints[:, :2], labelled, rng, (center, size))
        size = size * (1.0 + _clipped_normal(rng, aug.scale_factor, aug.scale_factor))
        rotation = 0.0
        if rng.random() < aug.rotation_prob:
            rotation = _clipped_normal(rng, aug.rotation_deg, 2 * aug.rotation_deg)
        return CropParams(
            center=_pair(center),
            size=_pair(size),
            rotation_deg=rotation,
            flip=bool(rng.random() < aug.flip_prob),
            brightness=float(rng.uniform(1 - aug.brightness, 1 + aug.brightness)),
            contrast=float(rng.uniform(1 - aug.contrast, 1 + aug.contrast)),
            saturation=float(rng.uniform(1 - aug.saturation, 1 + aug.saturation)),
        )

    def _half_body(
        self,
        joints: np.ndarray,
        labelled: np.ndarray,
        rng: np.random.Generator,
        fallback: tuple[np.ndarray, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """HRNet's half_body_transform: centre and size around the labelled upper or lower body joints."""
        upper = np.isin(np.arange(NUM_KEYPOINTS), UPPER_BODY)
        joints = joints.astype(np.float64)
        upper_joints, lower_joints = joints[labelled & upper], joints[labelled & ~upper]
        if rng.random() < 0.5 and len(upper_joints) > 2:
            selected = upper_joints
        else:
            selected = lower_joints if len(lower_joints) > 2 else upper_joints
        if len(selected) < 2:
            return fallback
        (x1, y1), (x2, y2) = selected.min(axis=0), selected.max(axis=0)
        box = (x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0))
        _, size = box_to_center_size(box, self.input_size[0] / self.input_size[1], self.augment.half_body_padding)
        return selected.mean(axis=0), size

    def crop_matrix(self, params: CropParams) -> np.ndarray:
        """The 2x3 image -> input matrix of ``params``; a flip is composed in as x -> width - 1 - x."""
        matrix = get_affine_transform(params.center, params.size, self.input_size, params.rotation_deg)
        if params.flip:
            mirror = np.array([[-1.0, 0.0, self.input_size[0] - 1.0], [0.0, 1.0, 0.0]])
            matrix = mirror @ np.vstack([matrix, [0.0, 0.0, 1.0]])
        return matrix

    def load(self, index: int, params: CropParams) -> dict[str, torch.Tensor | int]:
        """Build item ``index`` with the given crop parameters (``__getitem__`` draws them)."""
        record = self.records[index]
        matrix = self.crop_matrix(params)
        crop = cv2.warpAffine(
            self.read(record), matrix, self.input_size,
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
            crop = jitter_colour(crop, params.brightness, params.contrast, params.saturation)
        joints = transform_points(record.keypoints[:, :2], matrix) / self.stride
        labelled, pseudo = record.keypoints[:, 2] > 0, record.pseudo
        if params.flip:
            joints, labelled, pseudo = joints[_FLIP_ORDER], labelled[_FLIP_ORDER], pseudo[_FLIP_ORDER]
        weight = self._target_weight(joints, labelled, pseudo)
        target = gaussian_heatmaps(joints, self.heatmap_size, self.sigma)
        target[weight == 0] = 0.0
        return {
            "image": torch.from_numpy(crop_to_tensor(crop[None])[0]),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "matrix": torch.from_numpy(matrix),
            "index": index,
        }

    def _target_weight(self, joints: np.ndarray, labelled: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
        inside = np.all((joints >= -0.5) & (joints < np.asarray(self.heatmap_size) - 0.5), axis=1)
        weight = np.where(pseudo, self.pseudo_weight, 1.0).astype(np.float32)
        return np.where(labelled & inside, weight, np.float32(0.0))


class MixedSampler(Sampler[int]):
    """Indices into a ``ConcatDataset`` drawn from its parts in fixed ratios, e.g. coco:lspet = 0.3:0.7.

    Each pass (each ``iter()``, i.e. each DataLoader epoch) yields ``num_samples`` indices. Part k
    gets its share ``ratios[k] / sum(ratios)`` of them, rounded by largest remainder so the counts
    are exact; inside a part the indices come from successive random permutations (a small part is
    repeated evenly, a large one subsampled without repeats); all draws are then shuffled together.
    Pass e uses ``np.random.default_rng((seed, e))``; the epoch counter advances by one per pass,
    and ``set_epoch`` sets it (e.g. when resuming). Use it as ``DataLoader(concat, sampler=...)``.
    """

    def __init__(self, dataset: ConcatDataset, ratios: Sequence[float], num_samples: int, seed: int = 0) -> None:
        sizes = np.diff([0, *dataset.cumulative_sizes])
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != sizes.shape:
            raise ValueError(f"need one ratio per dataset ({len(sizes)}), got {ratios.size}")
        if np.any(ratios < 0) or not ratios.sum() > 0 or np.any((ratios > 0) & (sizes == 0)):
            raise ValueError(f"ratios must be >= 0 with a positive sum, and only for non-empty datasets: {ratios}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.offsets = np.asarray([0, *dataset.cumulative_sizes[:-1]], dtype=np.int64)
        self.sizes = sizes.astype(np.int64)
        self.counts = _largest_remainder(ratios / ratios.sum() * num_samples)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the one of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        parts = [
            offset + _permutation_cycle(rng, size, count)
            for offset, size, count in zip(self.offsets, self.sizes, self.counts)
        ]
        indices = np.concatenate(parts)
        return iter(rng.permutation(indices).tolist())


def _largest_remainder(shares: np.ndarray) -> np.ndarray:
    """Round non-negative shares to integers that keep their (integer) sum, largest remainders first."""
    counts = np.floor(shares).astype(np.int64)
    missing = int(round(shares.sum())) - int(counts.sum())
    counts[np.argsort(-(shares - counts), kind="stable")[:missing]] += 1
    return counts


def _permutation_cycle(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """``count`` indices in [0, size) from back-to-back random permutations."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    repeats = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(repeats)])[:count]
