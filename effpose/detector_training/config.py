"""The detector's training configuration (JSON file, overridable from the command line).

Path convention: a source's ``annotations`` and ``images`` are shared data, relative to the data root
(``$EFFPOSE_DATA``, default ../shared/data), like the pose configs; a ``teacher`` results file is the output of
one of our own runs, relative to the working directory (e.g. ``runs/pseudo/coco_train_yolox.json`` from the
repository root). Absolute paths are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from effpose.data.sources import DataSource, data_root
from effpose.detector_training.augment import DetectionAugment
from effpose.detector_training.targets import REGRESSION_CELLS
from effpose.training.config import LoopConfig

BOX_KINDS: tuple[str, ...] = ("gt", "teacher", "merged")


@dataclass
class DetectionSource(DataSource):
    """Images listed in a COCO-format file, with person boxes of one kind.

    ``boxes``: ``"gt"`` every non-crowd person annotation of the file; ``"teacher"`` the detections of a teacher
    (``teacher``: COCO results JSON, category 1) with score >= ``teacher_threshold``; ``"merged"`` the GT boxes
    plus every teacher box whose IoU with all of them is <= ``merge_iou`` and that lies at most ``merge_inside``
    inside any of them (people the annotation left out, not parts of annotated ones).
    """

    boxes: Literal["gt", "teacher", "merged"] = "gt"
    teacher: str = ""
    teacher_threshold: float = 0.5
    merge_iou: float = 0.5
    merge_inside: float = 0.7

    def teacher_path(self) -> Path:
        """The teacher results file (relative paths are relative to the working directory)."""
        return Path(self.teacher)

    def check(self, files: bool = True) -> None:
        """Fail early on a wrong box kind, a teacher file the kind does not use or (``files``) a missing file."""
        if self.boxes not in BOX_KINDS:
            raise ValueError(f"source {self.name!r}: boxes must be one of {BOX_KINDS}, got {self.boxes!r}")
        if (self.boxes == "gt") == bool(self.teacher):
            raise ValueError(f"source {self.name!r}: boxes={self.boxes!r} "
                             f"{'takes no' if self.boxes == 'gt' else 'needs a'} teacher results file")
        if not all(0.0 <= value <= 1.0 for value in (self.teacher_threshold, self.merge_iou, self.merge_inside)):
            raise ValueError(f"source {self.name!r}: teacher_threshold, merge_iou and merge_inside must lie in [0, 1]")
        if not files:
            return
        paths = [*self.paths(), *([self.teacher_path()] if self.teacher else [])]
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"data source {self.name!r}: {path} not found")


@dataclass
class DetectorConfig(LoopConfig):
    """Everything one detector training run depends on; saved next to its checkpoints.

    ``input_size`` is the square input side S. ``val`` sources are scored with their GT person boxes
    (COCO box AP through the exported ONNX). The loop settings are :class:`LoopConfig`'s.
    """

    arch: str = "A"  # genotype of the trunk: A, B, C, mbv2 or a genotype JSON
    input_size: int = 320
    max_detections: int = 100
    train: list[DetectionSource] = field(default_factory=list)
    pack: str = ""  # a detector data pack (`effpose data pack-detector`) replaces the train sources' files and boxes
    val: list[DataSource] = field(default_factory=list)
    init: Literal["scratch", "lite0"] = "lite0"
    init_checkpoint: str = ""
    heatmap_weight: float = 1.0
    size_weight: float = 1.0
    offset_weight: float = 1.0
    giou_weight: float = 0.0  # GIoU of the decoded boxes at the regression cells (TTFNet's box loss); 0: off
    # cells whose size and offset are learnt: each box's centre cell (CenterNet) or its centre Gaussian (TTFNet)
    regression_cells: Literal["centre", "gaussian"] = "centre"
    distill_checkpoint: str = ""  # a trained detector whose outputs the model also learns (dense distillation)
    # or a detector in ONNX (shared data, e.g. models/yolox_nano/yolox_nano.onnx) whose boxes on each training
    # canvas, from distill_min_score up, the model learns as soft targets (effpose.detector_training.teacher)
    distill_detector: str = ""
    distill_min_score: float = 0.1
    distill_weight: float = 1.0
    distill_regression: bool = True  # also distil size and offset (False: the centre heatmap only)
    augment: DetectionAugment = field(default_factory=DetectionAugment)
    # the loop's defaults for the detector (the others are the pose model's; see LoopConfig)
    epochs: int = 30
    batch_size: int = 16  # per process
    lr: float = 2e-3
    weight_decay: float = 1e-2  # AdamW (decoupled), on conv weights only
    schedule: Literal["step", "cosine", "constant", "run_cosine"] = "cosine"
    lr_steps: list[int] = field(default_factory=list)
    warmup_steps: int = 200
    workers: int = 1
    out_dir: str = "runs/person_detector"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from a JSON object, rejecting unknown keys (also inside ``augment`` and the sources)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
        data = dict(data)
        data["train"] = [DetectionSource(**source) for source in data.get("train", [])]
        data["val"] = [DataSource(**source) for source in data.get("val", [])]
        augment = {key: tuple(value) if isinstance(value, list) else value  # JSON pairs: scale_range, paste_height
                   for key, value in data.get("augment", {}).items()}
        data["augment"] = DetectionAugment(**augment)
        return cls(**data)

    def distill_detector_path(self) -> Path:
        """The ONNX distillation teacher (shared data: relative paths are relative to the data root)."""
        return data_root() / self.distill_detector

    def validate(self) -> None:
        """Fail early with a clear message on settings that cannot work."""
        if not self.train:
            raise ValueError("the config has no training data sources")
        if self.pack and not Path(self.pack).is_file():
            raise FileNotFoundError(f"data pack {self.pack} not found (write one with `effpose data pack-detector`)")
        for source in self.train:
            source.check(files=not self.pack)
        for source in self.val:
            for path in source.paths():
                if not path.exists():
                    raise FileNotFoundError(f"validation source {source.name!r}: {path} not found (set EFFPOSE_DATA?)")
        self.validate_loop()
        if self.input_size <= 0 or self.input_size % 32:
            raise ValueError(f"input size {self.input_size} must be a positive multiple of 32")
        if self.distill_checkpoint and not Path(self.distill_checkpoint).is_file():
            raise FileNotFoundError(f"distill_checkpoint {self.distill_checkpoint} not found")
        if self.distill_checkpoint and self.distill_detector:
            raise ValueError("distill from one teacher: set distill_checkpoint or distill_detector, not both")
        if self.regression_cells not in REGRESSION_CELLS:
            raise ValueError(f"regression_cells must be one of {REGRESSION_CELLS}, got {self.regression_cells!r}")
        if min(self.heatmap_weight, self.size_weight, self.offset_weight, self.giou_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if (self.input_size // 4) ** 2 < self.max_detections:
            raise ValueError(f"input size {self.input_size} has fewer stride-4 cells than max_detections")
