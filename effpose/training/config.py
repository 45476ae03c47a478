"""One configuration object per experiment (JSON file, overridable from the command line)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Self

from effpose.contract import DEFAULT_INPUT_SIZE
from effpose.data.sources import DataSource


class JsonConfig:
    """``load`` from a JSON file and ``to_dict`` for a dataclass config with a ``from_dict`` classmethod."""

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a JSON config file."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class LoopConfig(JsonConfig):
    """The training loop's settings (:class:`effpose.training.trainer.TrainingLoop`), shared by pose training,
    detector training and the architecture search; each task's config adds its model and data and may change
    the defaults."""

    epochs: int = 140
    samples_per_epoch: int = 0  # 0: the summed size of the training sources
    batch_size: int = 32  # per process
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW (decoupled), on conv weights only; Adam's coupled L2 starved the heatmaps
    # constant: the open-ended campaign (with ema_decay); run_cosine: cosine decay over each run's time budget
    # (--stop-after), so that every run of a campaign ends annealed and restarts at lr when resumed
    schedule: Literal["step", "cosine", "constant", "run_cosine"] = "step"
    lr_steps: list[int] = field(default_factory=lambda: [90, 120])  # epochs where lr is multiplied by 0.1
    warmup_steps: int = 300
    ema_decay: float = 0.0  # > 0: validate, export and ship an exponential moving average of the weights
    drop_path: float = 0.0  # stochastic depth of the deepest residual block (rising linearly from 0); 0: off
    select_metric: str = "mean_AP"  # best checkpoint: mean of the val sets' AP, or "<val name>/AP"
    workers: int = 2
    amp: bool = True  # bfloat16 autocast, only used on CUDA
    channels_last: bool = True
    seed: int = 0
    max_steps_per_epoch: int = 0  # 0: no cap (smoke tests set a few)
    out_dir: str = "runs/efficientpose_a"

    def validate_loop(self) -> None:
        """Fail early on loop settings that cannot work (each task's ``validate`` calls this)."""
        if self.batch_size <= 0 or self.epochs <= 0 or self.lr <= 0:
            raise ValueError("batch_size, epochs and lr must be positive")
        if self.weight_decay < 0 or not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.drop_path < 1.0:
            raise ValueError("weight_decay must be >= 0, ema_decay and drop_path in [0, 1)")


@dataclass
class TrainConfig(LoopConfig):
    """Everything one training run depends on; saved next to its checkpoints."""

    arch: str = "A"  # A, B, C, mbv2 or a genotype JSON written by the search
    sic: bool = True
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (width, height)
    train: list[DataSource] = field(default_factory=list)
    pack: str = ""  # a data pack (`effpose data pack`) replaces the train sources' files (their names and ratios stay)
    val: list[DataSource] = field(default_factory=list)
    init: Literal["scratch", "lite0"] = "scratch"  # lite0: FNA remap of EfficientNet-Lite0 ImageNet weights
    init_checkpoint: str = ""  # start from these weights instead (fine-tuning, progressive resizing)
    sigma: float = 2.0
    loss: Literal["mse", "fg_mse"] = "mse"  # fg_mse: pixel weight 1 + fg_weight * target (see JointsMSELoss)
    fg_weight: float = 10.0
    augment: Literal["release", "light", "none"] = "release"  # AugmentConfig.preset; "none" for smoke tests
    pseudo_weight: float = 0.5  # loss weight of pseudo-labelled keypoints (0 drops them)
    precise_bn_batches: int = 0  # before validating, re-estimate BN statistics on this many un-augmented batches
    val_flip: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a JSON object, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        data = dict(data)
        for key in ("train", "val"):
            data[key] = [DataSource(**s) for s in data.get(key, [])]
        if "input_size" in data:
            data["input_size"] = tuple(data["input_size"])
        return cls(**data)

    def validate(self) -> None:
        """Fail early with a clear message on settings that cannot work."""
        if not self.train:
            raise ValueError("the config has no training data sources")
        if self.pack and not Path(self.pack).is_file():
            raise FileNotFoundError(f"data pack {self.pack} not found (write one with `effpose data pack`)")
        for source in self.val if self.pack else self.train + self.val:
            for path in source.paths():
                if not path.exists():
                    raise FileNotFoundError(f"data source {source.name!r}: {path} not found (set EFFPOSE_DATA?)")
        self.validate_loop()
        width, height = self.input_size
        if width % 32 or height % 32:
            raise ValueError(f"input size {self.input_size} must be multiples of 32")
