"""The training loop: single process or DistributedDataParallel under ``torchrun``, checkpoints, resume.

:class:`TrainingLoop` is the task-independent part (process setup, optimiser, lr schedule, epochs,
checkpoints, metrics); :class:`Trainer` is the pose task on top of it, and ``effpose.detection.trainer``
the person detector. Rank 0 validates after every epoch by exporting the weights to ONNX and evaluating them
with the same ONNX Runtime path the service uses, keeps ``last.pt`` (for ``--resume``) and ``best.pt`` (by the
configured validation metric), and appends one JSON line per epoch to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from effpose.data import PersonRecord, load_person_records
from effpose.data.dataset import AugmentConfig, MixedSampler, TopDownDataset
from effpose.evaluation import evaluate
from effpose.evaluation.runner import estimator_for_model
from effpose.model import EfficientPose, GenotypeTrunk, build_model, save_checkpoint
from effpose.model.seed import remap_lite0
from effpose.training.config import TrainConfig
from effpose.training.loss import JointsMSELoss

log = logging.getLogger("effpose.train")


class RunSettings(Protocol):
    """What the shared loop reads from a run's config (:class:`TrainConfig`, the detector's config)."""

    epochs: int
    samples_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    lr_steps: list[int]
    warmup_steps: int
    select_metric: str
    workers: int
    amp: bool
    channels_last: bool
    seed: int
    max_steps_per_epoch: int
    out_dir: str

    def validate(self) -> None:
        """Raise on settings that cannot work."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved as config.json and in checkpoints)."""


@dataclass
class Environment:
    """Process placement: rank, world size and device (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 validates, logs and writes checkpoints."""
        return self.rank == 0


def setup_environment() -> Environment:
    """Join the process group when launched by torchrun; pick CUDA when available."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Environment(rank, world_size, device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initialise(model: nn.Module, init: str, init_checkpoint: str = "") -> None:
    """Start ``model`` from a checkpoint's weights, the EfficientNet-Lite0 FNA remap (``init="lite0"``) or as built."""
    if init_checkpoint:
        state = torch.load(init_checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
        log.info("initialised from %s", init_checkpoint)
    elif init == "lite0":
        report = remap_lite0(model)
        log.info("FNA remap of EfficientNet-Lite0: %d tensors, %.0f%% of values", report.tensors_copied,
                 100 * report.fraction)


def build_network(config: TrainConfig) -> EfficientPose:
    """The network of the config, from scratch or with the EfficientNet-Lite0 FNA remap."""
    model = build_model(config.arch, sic=config.sic)
    initialise(model, config.init, config.init_checkpoint)
    return model


def load_train_records(config: TrainConfig) -> list[list[PersonRecord]]:
    """The persons of every training source, one list per source."""
    return [load_person_records(*source.paths(), source=source.name) for source in config.train]


def build_train_data(config: TrainConfig, env: Environment, augment: bool = True,
                     records: list[list[PersonRecord]] | None = None) -> tuple[ConcatDataset, MixedSampler]:
    """All training sources, and a sampler mixing them by their ratios (:func:`mixed_sampler`).

    ``records`` (one list per source, e.g. a part of :func:`load_train_records`) replaces the sources' persons.
    """
    datasets = [TopDownDataset(persons, input_size=config.input_size, sigma=config.sigma, train=True,
                               augment=AugmentConfig() if augment else AugmentConfig.none(),
                               pseudo_weight=config.pseudo_weight)
                for persons in (load_train_records(config) if records is None else records)]
    data = ConcatDataset(datasets)
    return data, mixed_sampler(data, [s.ratio for s in config.train], config, env)


def mixed_sampler(data: ConcatDataset, ratios: list[float], config: RunSettings, env: Environment) -> MixedSampler:
    """Draws ``config.samples_per_epoch`` (default: all) indices per epoch from ``data``'s parts in ``ratios``.

    Under DDP every rank draws its own share of the epoch's samples with its own seed.
    """
    per_rank = (config.samples_per_epoch or len(data)) // env.world_size
    return MixedSampler(data, ratios, per_rank, seed=config.seed + 1000 * env.rank)


def learning_rate(config: RunSettings, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then step decay (x0.1 at each of ``lr_steps``) or cosine decay to 1% of the base."""
    global_step = epoch * steps_per_epoch + step
    warmup = min(1.0, (global_step + 1) / max(config.warmup_steps, 1))
    if config.schedule == "cosine":
        progress = global_step / max(config.epochs * steps_per_epoch, 1)
        return config.lr * warmup * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    return config.lr * warmup * 0.1 ** sum(epoch >= milestone for milestone in config.lr_steps)


@torch.no_grad()
def precise_bn(model: EfficientPose, loader: DataLoader, batches: int, device: torch.device) -> None:
    """Re-estimate every BatchNorm's statistics as a plain average over un-augmented training batches.

    Training-time running averages follow augmented crops (rotated, rescaled, black borders); the service feeds
    plain crops, so statistics taken on those match what the shipped model sees (precise BN, as in pycls).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        model(batch["image"].to(device))
    for norm, momentum in zip(norms, saved):
        norm.momentum = momentum


@torch.no_grad()
def validate(model: EfficientPose, config: TrainConfig) -> dict[str, float]:
    """Export the current weights to ONNX and evaluate them on every validation source (GT boxes)."""
    metrics: dict[str, float] = {}
    estimator = estimator_for_model(model, config.input_size, weights="in-training", flip=config.val_flip)
    for source in config.val:
        annotations, images = source.paths()
        report = evaluate(estimator, annotations, images, boxes="gt")
        metrics[f"{source.name}/AP"] = report.metrics["AP"]
        metrics[f"{source.name}/PCK@0.2"] = report.metrics["PCK@0.2"]
    if config.val:
        metrics["mean_AP"] = float(np.mean([metrics[f"{s.name}/AP"] for s in config.val]))
    return metrics


class TrainingLoop:
    """Owns the model, optimiser, data and checkpoints of one run; the task fills in the hooks.

    Subclasses implement :meth:`build_model`, :meth:`build_loader`, :meth:`compute_loss` and :meth:`validate`
    (and may replace :meth:`build_optimizer` and extend :meth:`checkpoint_state` / :meth:`restore`). Batches are
    dicts with an ``"image"`` tensor, the network input.
    """

    #: DDP must look for parameters a step did not use (networks whose forward skips some of their layers)
    find_unused_parameters: bool = False

    def __init__(self, config: RunSettings, env: Environment):
        config.validate()
        self.config, self.env = config, env
        self.out_dir = Path(config.out_dir)
        seed_everything(config.seed + env.rank)
        self.model = self.build_model().to(env.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                    find_unused_parameters=self.find_unused_parameters)
            if env.world_size > 1 else self.model
        )
        self.optimizer = self.build_optimizer()
        self.use_amp = config.amp and env.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loader, self.sampler = self.build_loader()
        self.start_epoch, self.best, self.history = 0, -math.inf, []

    def build_model(self) -> GenotypeTrunk:
        """The network, initialised (called once, before it moves to the device)."""
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Adam with L2 weight decay on every parameter (the pose recipe)."""
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def build_loader(self) -> tuple[DataLoader, MixedSampler]:
        """The training loader and its sampler (``set_epoch`` is called before every epoch)."""
        raise NotImplementedError

    def make_loader(self, data: ConcatDataset, sampler: MixedSampler) -> DataLoader:
        """The training DataLoader of ``data`` drawn by ``sampler``: full batches, persistent workers."""
        return DataLoader(data, batch_size=self.config.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.config.workers, persistent_workers=self.config.workers > 0,
                          pin_memory=self.env.device.type == "cuda")

    def compute_loss(self, output: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss of one batch: ``"loss"`` (optimised) and, optionally, its parts (logged as ``loss_<part>``)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current weights (rank 0 only, after every epoch)."""
        raise NotImplementedError

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything needed to resume after ``epoch`` (written as ``last.pt``)."""
        return {"state_dict": self.model.state_dict(), "config": self.model.config(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "best": self.best, "history": self.history, "train_config": self.config.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`checkpoint_state`: weights, optimiser, scaler and progress."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` written by this trainer."""
        self.restore(torch.load(path, map_location="cpu", weights_only=False))
        log.info("resumed from %s at epoch %d (best %.4f)", path, self.start_epoch, self.best)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the epoch's samples; returns mean loss (and parts), last lr and throughput."""
        self.network.train()
        self.sampler.set_epoch(epoch)
        steps = len(self.loader)
        if self.config.max_steps_per_epoch:
            steps = min(steps, self.config.max_steps_per_epoch)
        losses: dict[str, list[float]] = {}
        samples, started = 0, time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not self.env.is_main, dynamic_ncols=True)
        for step, batch in enumerate(self.loader):
            if step >= steps:
                break
            lr = learning_rate(self.config, epoch, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            for name, value in self.train_step(batch).items():
                losses.setdefault(name, []).append(value)
            samples += len(batch["image"]) * self.env.world_size
            bar.set_postfix(loss=f"{losses['loss'][-1]:.6f}", lr=f"{lr:.2e}")
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - started
        parts = {f"loss_{name}": float(np.mean(values)) for name, values in losses.items() if name != "loss"}
        return {"loss": float(np.mean(losses["loss"])), **parts, "losses": losses["loss"], "lr": lr,
                "samples_per_s": samples / elapsed, "train_seconds": elapsed}

    def input_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's images on the device, in the configured memory format."""
        memory = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return batch["image"].to(self.env.device, non_blocking=True).contiguous(memory_format=memory)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Forward, loss, backward, optimiser step; returns the loss and its parts."""
        images = self.input_images(batch)
        with torch.autocast(self.env.device.type, dtype=torch.float16, enabled=self.use_amp):
            output = self.network(images)
        losses = self.compute_loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {name: float(value.detach()) for name, value in losses.items()}

    def save(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        """Write last.pt (everything needed to resume) and, when improved, best.pt (weights + metrics)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint_state(epoch), self.out_dir / "last.tmp")
        os.replace(self.out_dir / "last.tmp", self.out_dir / "last.pt")
        if improved:
            save_checkpoint(self.model, self.out_dir / "best.pt", epoch=epoch, metrics=record,
                            train_config=self.config.to_dict())

    def fit(self) -> list[dict[str, Any]]:
        """Train all remaining epochs; returns the per-epoch history."""
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        for epoch in range(self.start_epoch, self.config.epochs):
            stats = self.train_epoch(epoch)
            losses = stats.pop("losses")
            if self.env.is_main:
                started = time.perf_counter()
                metrics = self.validate()
                record = {"epoch": epoch, **stats, **metrics, "val_seconds": time.perf_counter() - started,
                          "first_loss": losses[0], "last_loss": losses[-1], "time": time.time()}
                score = metrics.get(self.config.select_metric, -stats["loss"])
                improved = score > self.best
                self.best = max(self.best, score)
                self.history.append(record)
                self.save(epoch, record, improved)
                with (self.out_dir / "metrics.jsonl").open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                log.info("epoch %d: %s", epoch, {k: round(v, 5) if isinstance(v, float) else v
                                                 for k, v in record.items()})
            if self.env.world_size > 1:
                dist.barrier()
        return self.history


class Trainer(TrainingLoop):
    """Top-down pose training: weighted heatmap MSE, optional precise BN, ONNX validation (AP, PCK)."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, env: Environment):
        self.criterion = JointsMSELoss()
        super().__init__(config, env)
        self.plain_loader: DataLoader | None = None
        if config.precise_bn_batches:
            plain, plain_sampler = build_train_data(config, env, augment=False)
            self.plain_loader = DataLoader(plain, batch_size=config.batch_size, sampler=plain_sampler,
                                           num_workers=min(config.workers, 1))

    def build_model(self) -> EfficientPose:
        """The config's network (see :func:`build_network`)."""
        return build_network(self.config)

    def build_loader(self) -> tuple[DataLoader, MixedSampler]:
        """All training sources mixed by their ratios."""
        data, sampler = build_train_data(self.config, self.env, augment=self.config.augment)
        return self.make_loader(data, sampler), sampler

    def compute_loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted heatmap MSE."""
        target = batch["target"].to(self.env.device, non_blocking=True)
        weight = batch["target_weight"].to(self.env.device, non_blocking=True)
        return {"loss": self.criterion(output.float(), target, weight)}

    def validate(self) -> dict[str, float]:
        """Precise BN when configured, then AP and PCK on every validation source."""
        if self.plain_loader is not None:
            precise_bn(self.model, self.plain_loader, self.config.precise_bn_batches, self.env.device)
        return validate(self.model, self.config) if self.config.val else {}


def run_loop(trainer_class: type[TrainingLoop], config: RunSettings,
             resume: str | Path | None = None) -> list[dict[str, Any]]:
    """Set up the process (torchrun-aware), train ``trainer_class`` on ``config``, tear down."""
    env = setup_environment()
    try:
        trainer = trainer_class(config, env)
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_training(config: TrainConfig, resume: str | Path | None = None) -> list[dict[str, Any]]:
    """Entry point of ``effpose train``."""
    return run_loop(Trainer, config, resume)
