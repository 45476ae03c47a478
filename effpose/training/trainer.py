"""The training loop: single process or DistributedDataParallel under ``torchrun``, checkpoints, resume.

:class:`TrainingLoop` is the task-independent part (process setup, optimiser, lr schedule, epochs,
checkpoints, metrics); :class:`Trainer` is the pose task on top of it, and ``effpose.detector_training.trainer``
the person detector. Rank 0 validates after every epoch by exporting the weights to ONNX and evaluating them
with the same ONNX Runtime path the service uses, keeps ``last.pt`` (for ``--resume``) and ``best.pt`` (by the
configured validation metric), and appends one JSON line per epoch to ``metrics.jsonl``.

Training is a campaign of resumable runs: ``fit(stop_at=...)`` ends a run cleanly at a time budget (or on
SIGTERM) after the current step: the partial epoch is validated, checkpointed and logged like a whole one, and the
next run resumes from ``last.pt``. ``last.pt`` is compact enough to commit (:func:`compact_state`), and its
history holds every epoch's crops, wall and CPU time and validation since the campaign began.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from effpose.data import PersonRecord, load_person_records
from effpose.data.dataset import AugmentConfig, MixedSampler, TopDownDataset, read_record_image
from effpose.data.pack import load_pack
from effpose.evaluation import evaluate
from effpose.evaluation.runner import estimator_for_model
from effpose.export import export_onnx
from effpose.model import EfficientPose, GenotypeTrunk, build_model, save_checkpoint, set_drop_path
from effpose.model.seed import remap_lite0
from effpose.training.config import LoopConfig, TrainConfig
from effpose.training.loss import JointsMSELoss

log = logging.getLogger("effpose.train")


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
    """Start ``model`` from a checkpoint's weights, the EfficientNet-Lite0 FNA remap (``init="lite0"``) or as built.

    A checkpoint's SIC weights are left out when ``model`` has no SIC (the no-SIC ablation of a trained model), and
    so are the weights of backbone layers that ``model``'s genotype skips (a depth-pruned copy of a trained model).
    Backbone layers that the checkpoint lacks entirely start as the identity (a deeper copy of a trained model, see
    :meth:`GenotypeTrunk.start_as_identity`); any other missing weight is an error.
    """
    if init_checkpoint:
        weights = torch.load(init_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        own = model.state_dict()
        trunk = isinstance(model, GenotypeTrunk)
        left_out = ("sic.", *model.layer_prefixes(skipped=True)) if trunk else ("sic.",)
        dropped = [name for name in weights if name.startswith(left_out) and name not in own]
        grown = [prefix for prefix in model.layer_prefixes(skipped=False)
                 if not any(name.startswith(prefix) for name in weights)] if trunk else []
        result = model.load_state_dict({name: value for name, value in weights.items() if name not in dropped},
                                       strict=not grown)
        if grown:
            if result.unexpected_keys or any(not name.startswith(tuple(grown)) for name in result.missing_keys):
                raise RuntimeError(f"checkpoint {init_checkpoint} does not fit: unexpected {result.unexpected_keys}, "
                                   f"missing {[n for n in result.missing_keys if not n.startswith(tuple(grown))]}")
            model.start_as_identity(grown)
        layers = sorted({prefix.rstrip(".") for prefix in left_out for name in dropped if name.startswith(prefix)})
        log.info("initialised from %s%s%s", init_checkpoint, f" without the weights of {layers}" if dropped else "",
                 f", new layers {[prefix.rstrip('.') for prefix in grown]} starting as identity" if grown else "")
    elif init == "lite0":
        report = remap_lite0(model)
        log.info("FNA remap of EfficientNet-Lite0: %d tensors, %.0f%% of values", report.tensors_copied,
                 100 * report.fraction)


def build_network(config: TrainConfig) -> EfficientPose:
    """The network of the config, from scratch or with the EfficientNet-Lite0 FNA remap."""
    model = build_model(config.arch, sic=config.sic)
    initialise(model, config.init, config.init_checkpoint)
    return model


#: The persons of every training source (one list per source) and the reader of their images.
TrainPersons = tuple[list[list[PersonRecord]], Callable[[PersonRecord], np.ndarray]]


def load_train_records(config: TrainConfig) -> TrainPersons:
    """The persons of every training source, one list per source, from the sources' files or the config's pack."""
    if not config.pack:
        return [load_person_records(*source.paths(), source=source.name) for source in config.train], read_record_image
    sources, images, meta = load_pack(config.pack)
    missing = [source.name for source in config.train if source.name not in sources]
    if missing:
        raise ValueError(f"data pack {config.pack} has no source(s) {missing}; it holds {sorted(sources)}")
    if any(packed < wanted for packed, wanted in zip(meta["input_size"], config.input_size)):
        log.warning("data pack %s was cut for %s inputs: training at %s upsamples its crops", config.pack,
                    meta["input_size"], config.input_size)
    return [sources[source.name] for source in config.train], images


def build_train_data(config: TrainConfig, env: Environment, augment: str = "release",
                     persons: TrainPersons | None = None) -> tuple[ConcatDataset, MixedSampler]:
    """All training sources, and a sampler mixing them by their ratios (:func:`mixed_sampler`).

    ``augment`` names an :meth:`AugmentConfig.preset`. ``persons`` (e.g. a part of :func:`load_train_records`)
    replaces the sources' persons.
    """
    records, read = load_train_records(config) if persons is None else persons
    datasets = [TopDownDataset(part, input_size=config.input_size, sigma=config.sigma, train=True,
                               augment=AugmentConfig.preset(augment), pseudo_weight=config.pseudo_weight, read=read)
                for part in records]
    data = ConcatDataset(datasets)
    return data, mixed_sampler(data, [s.ratio for s in config.train], config, env)


def mixed_sampler(data: ConcatDataset, ratios: list[float], config: LoopConfig, env: Environment) -> MixedSampler:
    """Draws ``config.samples_per_epoch`` (default: all) indices per epoch from ``data``'s parts in ``ratios``.

    Under DDP every rank draws its own share of the epoch's samples with its own seed.
    """
    per_rank = (config.samples_per_epoch or len(data)) // env.world_size
    return MixedSampler(data, ratios, per_rank, seed=config.seed + 1000 * env.rank)


def learning_rate(config: LoopConfig, epoch: int, step: int, steps_per_epoch: int, run_progress: float = 0.0) -> float:
    """Linear warm-up, then constant, step decay (x0.1 at each of ``lr_steps``) or cosine decay to 1% of the base:
    over all epochs (``cosine``) or over this run's time budget (``run_cosine``; ``run_progress`` is the share of
    the budget spent, 0 for a run without one)."""
    global_step = epoch * steps_per_epoch + step
    warmup = min(1.0, (global_step + 1) / max(config.warmup_steps, 1))
    if config.schedule == "constant":
        return config.lr * warmup
    if config.schedule in ("cosine", "run_cosine"):
        progress = (global_step / max(config.epochs * steps_per_epoch, 1) if config.schedule == "cosine"
                    else min(max(run_progress, 0.0), 1.0))
        return config.lr * warmup * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    return config.lr * warmup * 0.1 ** sum(epoch >= milestone for milestone in config.lr_steps)


def decay_groups(parameters: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups for AdamW: convolution weights decay, BN parameters and biases do not."""
    decay = [p for p in parameters if p.ndim > 1]
    no_decay = [p for p in parameters if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compact_state(state: dict[str, Any], parameter_names: set[str]) -> dict[str, Any]:
    """A state dict with its parameters in float16 (buffers such as BN statistics stay float32).

    Rounding a resume point's weights to float16 once per run moves them far less than one optimiser step; it
    halves the file that is committed after every campaign run.
    """
    return {name: value.half() if name in parameter_names else value for name, value in state.items()}


def compact_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict with its floating-point tensors (Adam's moments) in bfloat16.

    bfloat16 keeps float32's range, which the second moment needs; ``Optimizer.load_state_dict`` casts them back
    to the parameters' dtype.
    """
    def shrink(value: Any) -> Any:
        is_moment = isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0
        return value.bfloat16() if is_moment else value

    return {**state, "state": {index: {key: shrink(value) for key, value in entry.items()}
                               for index, entry in state["state"].items()}}


def cpu_seconds() -> float:
    """CPU time of this process and of its data-loader workers so far (user + system, all threads)."""
    total = time.process_time()
    for child in multiprocessing_children():
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, IndexError, ValueError):
            continue  # gone, or not Linux
    return total


def multiprocessing_children() -> list[int]:
    """Process ids of the live data-loader workers of this process."""
    import multiprocessing

    return [child.pid for child in multiprocessing.active_children() if child.pid is not None]


@torch.no_grad()
def precise_bn(model: EfficientPose, loader: DataLoader, batches: int, device: torch.device) -> None:
    """Re-estimate every BatchNorm's statistics as a plain average over un-augmented training batches.

    Training-time running averages follow augmented crops (rotated, rescaled, black borders); the service feeds
    plain crops, so statistics taken on those match what the shipped model sees (precise BN, as in pycls).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    model.eval()  # only the norms collect statistics: stochastic depth stays off, as at inference
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
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

    def __init__(self, config: LoopConfig, env: Environment):
        config.validate()
        self.config, self.env = config, env
        self.out_dir = Path(config.out_dir)
        self.run_started = time.monotonic()  # reset by fit(): the start of this run's time budget
        seed_everything(config.seed + env.rank)
        self.model = self.build_model().to(env.device)
        if config.drop_path:
            blocks = set_drop_path(self.model, config.drop_path)
            log.info("stochastic depth: %d residual blocks, drop rate rising to %.2f", blocks, config.drop_path)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                    find_unused_parameters=self.find_unused_parameters)
            if env.world_size > 1 else self.model
        )
        self.optimizer = self.build_optimizer()
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
                    if config.ema_decay else None)
        self.use_amp = config.amp and env.device.type == "cuda"  # bfloat16 autocast: no loss scaling needed
        self.loader, self.sampler = self.build_loader()
        self.start_epoch, self.best, self.history = 0, -math.inf, []
        self.stop_requested = False

    @property
    def evaluated_model(self) -> GenotypeTrunk:
        """What is validated, exported and kept as ``best.pt``: the weights' moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def build_model(self) -> GenotypeTrunk:
        """The network, initialised (called once, before it moves to the device)."""
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, decoupled weight decay on convolution weights only (see :func:`decay_groups`)."""
        return torch.optim.AdamW(decay_groups(list(self.model.parameters()), self.config.weight_decay),
                                 lr=self.config.lr)

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
        """Everything needed to resume after ``epoch`` (written as ``last.pt``), compact (:func:`compact_state`)."""
        names = {name for name, _ in self.model.named_parameters()}
        state = {"state_dict": compact_state(self.model.state_dict(), names), "config": self.model.config(),
                 "optimizer": compact_optimizer_state(self.optimizer.state_dict()),
                 "epoch": epoch, "best": self.best, "history": self.history,
                 "train_config": self.config.to_dict()}
        if self.ema is not None:
            ema = self.ema.state_dict()
            state["ema"] = compact_state(ema, {f"module.{name}" for name in names})
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`checkpoint_state`: weights, moving average, optimiser and progress.

        A resume point without a moving average (written with ``ema_decay`` 0) starts the average at its weights.
        """
        self.model.load_state_dict(state["state_dict"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.module.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` written by this trainer."""
        self.restore(torch.load(path, map_location="cpu", weights_only=False))
        log.info("resumed from %s at epoch %d (best %.4f)", path, self.start_epoch, self.best)

    def run_progress(self, stop_at: float | None) -> float:
        """The share of this run's time budget spent (0 without a budget), for the ``run_cosine`` schedule."""
        if stop_at is None:
            return 0.0
        return (time.monotonic() - self.run_started) / max(stop_at - self.run_started, 1e-9)

    def stop_due(self, stop_at: float | None) -> bool:
        """Whether the run should end now: SIGTERM received, or the time budget (a ``time.monotonic``) is spent."""
        due = self.stop_requested or (stop_at is not None and time.monotonic() >= stop_at)
        if self.env.world_size > 1:  # every rank stops after the same step
            flag = torch.tensor([float(due)], device=self.env.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def train_epoch(self, epoch: int, stop_at: float | None = None) -> dict[str, Any]:
        """One pass over the epoch's samples, or fewer when the run must stop (:meth:`stop_due`); returns mean loss
        (and parts), last lr, the crops trained on and throughput."""
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
            lr = learning_rate(self.config, epoch, step, steps, self.run_progress(stop_at))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            for name, value in self.train_step(batch).items():
                losses.setdefault(name, []).append(value)
            samples += len(batch["image"]) * self.env.world_size
            bar.set_postfix(loss=f"{losses['loss'][-1]:.6f}", lr=f"{lr:.2e}")
            bar.update()
            if self.stop_due(stop_at):
                break
        bar.close()
        elapsed = time.perf_counter() - started
        parts = {f"loss_{name}": float(np.mean(values)) for name, values in losses.items() if name != "loss"}
        return {"loss": float(np.mean(losses["loss"])), **parts, "losses": losses["loss"], "lr": lr, "crops": samples,
                "complete": step + 1 >= steps, "samples_per_s": samples / elapsed, "train_seconds": elapsed}

    def input_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's images on the device, in the configured memory format."""
        memory = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return batch["image"].to(self.env.device, non_blocking=True).contiguous(memory_format=memory)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Forward, loss, backward, optimiser step; returns the loss and its parts."""
        images = self.input_images(batch)
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            output = self.network(images)
        losses = self.compute_loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {name: float(value.detach()) for name, value in losses.items()}

    def save(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        """Write last.pt (everything needed to resume) and, when improved, best.pt (evaluated weights + metrics)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint_state(epoch), self.out_dir / "last.tmp")
        os.replace(self.out_dir / "last.tmp", self.out_dir / "last.pt")
        if improved:
            save_checkpoint(self.evaluated_model, self.out_dir / "best.pt", epoch=epoch, metrics=record,
                            train_config=self.config.to_dict())

    def totals(self, stats: dict[str, Any], wall_seconds: float, cpu: float) -> dict[str, float]:
        """Campaign totals after an epoch: crops, wall hours and CPU hours since the campaign began."""
        last = self.history[-1] if self.history else {}
        return {"crops_seen": last.get("crops_seen", 0) + stats["crops"],
                "wall_hours": last.get("wall_hours", 0.0) + wall_seconds / 3600,
                "cpu_hours": last.get("cpu_hours", 0.0) + cpu / 3600}

    def end_epoch(self, epoch: int, stats: dict[str, Any], started: float, cpu_started: float) -> None:
        """Validate, log and checkpoint one (possibly partial) epoch (rank 0)."""
        losses = stats.pop("losses")
        validation_started = time.perf_counter()
        metrics = self.validate()
        record = {"run": self.out_dir.name, "epoch": epoch, **stats, **metrics,
                  "val_seconds": time.perf_counter() - validation_started, "first_loss": losses[0],
                  "last_loss": losses[-1], "time": time.time(),
                  "input_size": self.config.to_dict().get("input_size"), "device": self.env.device.type,
                  "processes": self.env.world_size, "threads": torch.get_num_threads(),
                  **self.totals(stats, time.perf_counter() - started, cpu_seconds() - cpu_started)}
        score = metrics.get(self.config.select_metric, -stats["loss"])
        improved = score > self.best
        self.best = max(self.best, score)
        self.history.append(record)
        self.save(epoch, record, improved)
        with (self.out_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        log.info("epoch %d: %s", epoch, {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})

    def export(self) -> Path | None:
        """Export the evaluated weights to ``out_dir/model.onnx`` at the end of a run (tasks that ship ONNX)."""
        return None

    def fit(self, stop_at: float | None = None) -> list[dict[str, Any]]:
        """Train the remaining epochs, or until ``stop_at`` (``time.monotonic``) or SIGTERM; returns the history.

        A stop ends the current epoch after the running step, validates, checkpoints and exports it.
        """
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        previous = signal.signal(signal.SIGTERM, self.request_stop)
        self.run_started = time.monotonic()
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                started, cpu_started = time.perf_counter(), cpu_seconds()
                stats = self.train_epoch(epoch, stop_at)
                if self.env.is_main:
                    self.end_epoch(epoch, stats, started, cpu_started)
                if self.env.world_size > 1:
                    dist.barrier()
                if not stats["complete"] or self.stop_due(stop_at):
                    log.info("stopped after epoch %d (%s)", epoch,
                             "SIGTERM" if self.stop_requested else "time budget spent")
                    break
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self.env.is_main:
            exported = self.export()
            if exported is not None:
                log.info("exported %s", exported)
        return self.history

    def request_stop(self, signum: int, frame: object) -> None:
        """SIGTERM handler: finish the running step, then end the run cleanly."""
        log.info("signal %d: stopping after this step", signum)
        self.stop_requested = True


class Trainer(TrainingLoop):
    """Top-down pose training: weighted heatmap MSE, optional precise BN, ONNX validation (AP, PCK)."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, env: Environment):
        self.criterion = JointsMSELoss(fg_weight=config.fg_weight if config.loss == "fg_mse" else 0.0)
        super().__init__(config, env)
        self.plain_loader: DataLoader | None = None
        if config.precise_bn_batches:
            plain, plain_sampler = build_train_data(config, env, augment="none")
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
        """Precise BN when configured, then AP and PCK on every validation source (of the evaluated weights)."""
        model = self.evaluated_model
        if self.plain_loader is not None:
            precise_bn(model, self.plain_loader, self.config.precise_bn_batches, self.env.device)
        return validate(model, self.config) if self.config.val else {}

    def export(self) -> Path:
        """The evaluated weights as ``out_dir/model.onnx`` (what a release ships)."""
        return export_onnx(self.evaluated_model.eval(), self.out_dir / "model.onnx", self.config.input_size,
                           weights="trained")


def run_loop(trainer_class: type[TrainingLoop], config: LoopConfig, resume: str | Path | None = None,
             stop_after_s: float | None = None) -> list[dict[str, Any]]:
    """Set up the process (torchrun-aware), train ``trainer_class`` on ``config`` (for at most ``stop_after_s``
    seconds of training when given), tear down."""
    stop_at = time.monotonic() + stop_after_s if stop_after_s is not None else None
    env = setup_environment()
    try:
        trainer = trainer_class(config, env)
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit(stop_at)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_training(config: TrainConfig, resume: str | Path | None = None,
                 stop_after_s: float | None = None) -> list[dict[str, Any]]:
    """Entry point of ``effpose train``."""
    return run_loop(Trainer, config, resume, stop_after_s)
