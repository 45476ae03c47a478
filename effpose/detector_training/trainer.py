"""Detector training (``effpose train-detector``): the shared training loop with the detector's model, data and loss.

Validation exports the current weights to ONNX and scores them with the service's detector adapter
(``effpose.detectors.OnnxDetector``, which applies NMS) and ``effpose.evaluation.detection`` (COCO person box
AP / AP50 / AR with pycocotools) on each validation source's GT person boxes: what is validated is what ships.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from effpose.data.dataset import MixedSampler
from effpose.detector_training.config import DetectorConfig
from effpose.detector_training.data import DetectionDataset, ImageBoxes, load_source, read_boxes_image
from effpose.detector_training.export import export_detector
from effpose.detector_training.loss import CenterNetLoss, distillation_loss, teacher_targets
from effpose.detector_training.model import CenterNetDetector, DetectorOutput, build_centernet, load_detector
from effpose.detector_training.pack import load_detector_pack
from effpose.detector_training.teacher import OnnxTeacher
from effpose.training.trainer import Environment, TrainingLoop, initialise, log, mixed_sampler, run_loop

VAL_METRICS: tuple[str, ...] = ("AP", "AP50", "AR")


def validate_detector(model: CenterNetDetector, config: DetectorConfig) -> dict[str, float]:
    """Box AP / AP50 / AR of the current weights on every validation source (GT boxes), through ONNX Runtime."""
    from effpose.detectors import OnnxDetector
    from effpose.evaluation.detection import evaluate_detector

    with tempfile.TemporaryDirectory(prefix="effpose-det-") as folder:
        path = export_detector(model.eval(), Path(folder) / "detector.onnx", config.input_size, weights="trained",
                               version="in-training")
        detector = OnnxDetector(path)
    metrics: dict[str, float] = {}
    for source in config.val:
        annotations, images = source.paths()
        report = evaluate_detector(detector, annotations, images)
        metrics.update({f"{source.name}/{name}": report[name] for name in VAL_METRICS})
    if config.val:
        metrics["mean_AP"] = float(np.mean([metrics[f"{s.name}/AP"] for s in config.val]))
    return metrics


def load_train_images(config: DetectorConfig) -> tuple[list[list[ImageBoxes]], Callable[[ImageBoxes], np.ndarray]]:
    """The images of every training source (one list per source) and their image reader: from the sources' files,
    or from the config's data pack."""
    if not config.pack:
        return [load_source(source) for source in config.train], read_boxes_image
    sources, images, meta = load_detector_pack(config.pack)
    missing = [source.name for source in config.train if source.name not in sources]
    if missing:
        raise ValueError(f"data pack {config.pack} has no source(s) {missing}; it holds {sorted(sources)}")
    if meta["max_side"] < config.input_size:
        log.warning("data pack %s holds images of at most %d px: training at %d upsamples them", config.pack,
                    meta["max_side"], config.input_size)
    return [sources[source.name] for source in config.train], images


class DetectorTrainer(TrainingLoop):
    """CenterNet training of the person detector; AdamW without decay on BN and biases."""

    config: DetectorConfig

    def __init__(self, config: DetectorConfig, env: Environment):
        self.criterion = CenterNetLoss(config.heatmap_weight, config.size_weight, config.offset_weight,
                                       config.giou_weight)
        super().__init__(config, env)
        self.teacher = self.load_teacher() if config.distill_checkpoint else None

    def load_teacher(self) -> CenterNetDetector:
        """The frozen detector of ``distill_checkpoint`` (a resume point's moving average, as an export takes it),
        in eval mode on the training device."""
        teacher, _ = load_detector(self.config.distill_checkpoint, moving_average=True)
        teacher.requires_grad_(False)
        log.info("distilling from %s (weight %g)", self.config.distill_checkpoint, self.config.distill_weight)
        memory = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return teacher.to(self.env.device, memory_format=memory)

    def build_model(self) -> CenterNetDetector:
        """The detector on the config's genotype, from the FNA ImageNet seed, a checkpoint or scratch."""
        model = build_centernet(self.config.arch, self.config.max_detections)
        initialise(model, self.config.init, self.config.init_checkpoint)
        return model

    def build_loader(self) -> tuple[DataLoader, MixedSampler]:
        """Every training source's images, mixed by their ratios."""
        sources, read = load_train_images(self.config)
        teacher = None
        if self.config.distill_detector:
            teacher = OnnxTeacher(self.config.distill_detector_path(), self.config.distill_min_score,
                                  self.config.regression_cells)
            log.info("distilling from %s's boxes (score >= %g, weight %g)", self.config.distill_detector,
                     self.config.distill_min_score, self.config.distill_weight)
        datasets = []
        for source, records in zip(self.config.train, sources):
            if not records:
                raise ValueError(f"source {source.name!r} has no image with a person box")
            log.info("source %s: %d images, %d boxes", source.name, len(records), sum(len(r.boxes) for r in records))
            datasets.append(DetectionDataset(records, self.config.input_size, self.config.augment, read,
                                             self.config.regression_cells, teacher))
        data = ConcatDataset(datasets)
        sampler = mixed_sampler(data, [s.ratio for s in self.config.train], self.config, self.env)
        return self.make_loader(data, sampler), sampler

    def compute_loss(self, output: DetectorOutput, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Focal heatmap loss + L1 on log size and offset (+ GIoU) (see :class:`CenterNetLoss`), + distillation
        from the checkpoint teacher's outputs or the ONNX teacher's soft targets in the batch."""
        targets = {name: batch[name].to(self.env.device, non_blocking=True)
                   for name in ("heatmap", "size", "offset", "mask")}
        losses = self.criterion(output, targets)
        if self.teacher is not None:
            with torch.no_grad(), torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                taught = teacher_targets(self.teacher(self.input_images(batch)))
        elif "teacher_heatmap" in batch:
            taught = {name: batch[f"teacher_{name}"].to(self.env.device, non_blocking=True)
                      for name in ("heatmap", "size", "offset", "mask")}
        else:
            return losses
        distill = distillation_loss(output, taught, self.config.distill_regression)
        return {**losses, "loss": losses["loss"] + self.config.distill_weight * distill, "distill": distill}

    def validate(self) -> dict[str, float]:
        """Box AP through the exported ONNX (see :func:`validate_detector`)."""
        return validate_detector(self.evaluated_model, self.config) if self.config.val else {}


def run_detector_training(config: DetectorConfig, resume: str | Path | None = None,
                          stop_after_s: float | None = None) -> list[dict[str, Any]]:
    """Entry point of ``effpose train-detector`` (also under torchrun)."""
    return run_loop(DetectorTrainer, config, resume, stop_after_s)
