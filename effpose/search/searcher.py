"""The FNA search loop (``effpose search``): alternating weight and architecture updates, cost-aware.

The training persons are split by image into two disjoint halves. Every step trains the supernet's weights on
a batch of the first half (pose recipe: Adam, heatmap MSE, the learning-rate schedule of the training job);
after ``warmup_epochs`` epochs of uniformly sampled paths and no architecture updates, every step also updates
the alphas on a batch of the second half (Adam, lr 5e-4, betas (0.5, 0.999), weight decay 1e-3) with

    loss = log(task_loss) + cost_loss,  cost_loss = lambda * log(E) / log(base)

where E = :meth:`SuperNet.expected_cost` from a MAC or latency table (:mod:`effpose.search.cost`). With a
``target_cost`` T the cost term is a budget: lambda * max(0, log(E / T)) / log(base), no pressure below T and
the same gradient as without a target above it (a plain log(E / T) would only shift the loss by a constant).
The task term is the log of the heatmap loss, i.e. the loss is log(task_loss * E ** (lambda / ln base)), the
multiplicative form of FBNet and ProxylessNAS: its gradient does not depend on the loss's scale. (FNA adds the
cost to a cross-entropy of order 1; a per-pixel heatmap MSE is ~4e-3, and added as it is the cost term would
swamp it: a measured proxy search collapsed to ``skip`` in 20 of 26 layers.)

It runs on :class:`~effpose.training.trainer.TrainingLoop` (process setup, torchrun/DDP, schedule, metrics.jsonl,
``last.pt`` and ``--resume``). Under DDP the alphas are parameters of the wrapped module, so DDP averages their
gradients with the weights' and the architecture optimiser steps identically on every rank; the path sampler is
a generator seeded by (seed, epoch) alike on all ranks, so all ranks run the same path (DDP needs
``find_unused_parameters`` because the other candidates get no gradient). ``alpha_rank_difference`` in the log
checks that the alphas stayed equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from effpose.data import PersonRecord
from effpose.data.dataset import MixedSampler
from effpose.search.cost import CostTable, mac_table
from effpose.search.outputs import write_search_outputs
from effpose.search.space import SearchSpace, get_space
from effpose.search.supernet import SuperNet
from effpose.training.config import TrainConfig
from effpose.training.loss import JointsMSELoss
from effpose.training.trainer import (
    Environment,
    TrainingLoop,
    build_train_data,
    decay_groups,
    initialise,
    load_train_records,
    run_loop,
)


@dataclass
class SearchConfig(TrainConfig):
    """One search run: the pose-training settings of :class:`TrainConfig` train the supernet's weights.

    Inherited fields the search does not use: ``arch`` (the supernet comes from ``space``), ``init_checkpoint``,
    and the validation settings (``val``, ``val_flip``, ``precise_bn_batches``, ``select_metric``): a search does
    not validate, it keeps ``last.pt`` and the derived architecture of the latest epoch.
    """

    space: str = "A"  # A or large (effpose.search.space)
    cost: Literal["macs", "latency"] = "macs"
    lut: str = ""  # latency table written by `effpose build-lut` (cost "latency")
    cost_lambda: float = 0.05
    cost_base: float = 10.0
    target_cost: float = 0.0  # 0: none; else a budget in the table's unit (MACs or ms)
    warmup_epochs: int = 5  # uniform paths, weights only
    arch_lr: float = 5e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    epochs: int = 20
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    out_dir: str = "runs/search"

    @classmethod
    def from_training_config(cls, config: TrainConfig, **settings: Any) -> SearchConfig:
        """A search on ``config``'s data: its training sources, crop size, heatmap sigma, pseudo-label weight and
        augmentation; ``settings`` set the rest."""
        data = {"train": config.train, "input_size": config.input_size, "sigma": config.sigma,
                "pseudo_weight": config.pseudo_weight, "augment": config.augment, "pack": config.pack}
        return cls(**{**data, **settings})

    def validate(self) -> None:
        """The training checks plus the search's own."""
        super().validate()
        get_space(self.space)
        if self.cost not in ("macs", "latency"):
            raise ValueError(f"cost must be macs or latency, got {self.cost!r}")
        if (self.cost == "latency") != bool(self.lut):
            raise ValueError("a latency search needs lut=FILE (from effpose build-lut), a MAC search takes no LUT")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        if self.cost_lambda < 0 or self.cost_base <= 1 or self.target_cost < 0 or self.arch_lr <= 0:
            raise ValueError("need cost_lambda >= 0, cost_base > 1, target_cost >= 0 and arch_lr > 0")
        if self.drop_path:  # set_drop_path would rank a layer's candidate ops as if they were successive blocks
            raise ValueError("drop_path is for training a fixed architecture, not for the search's supernet")


def split_by_image(records: Sequence[PersonRecord], seed: int) -> tuple[list[PersonRecord], list[PersonRecord]]:
    """Two disjoint halves of ``records`` (all persons of an image in the same half), the same for the same seed."""
    images = sorted({str(record.image_path) for record in records})
    first = {images[i] for i in np.random.default_rng(seed).permutation(len(images))[: (len(images) + 1) // 2]}
    weights = [record for record in records if str(record.image_path) in first]
    arch = [record for record in records if str(record.image_path) not in first]
    if not weights or not arch:
        raise ValueError(f"cannot split {len(images)} image(s) into two halves: the search needs at least two")
    return weights, arch


def cost_loss(expected_cost: Tensor, cost_lambda: float, base: float = 10.0, target: float = 0.0) -> Tensor:
    """lambda * log(expected) / log(base); with a target T, lambda * max(0, log(expected / T)) / log(base)."""
    if target > 0:
        return cost_lambda * torch.log(expected_cost / target).clamp_min(0.0) / math.log(base)
    return cost_lambda * torch.log(expected_cost) / math.log(base)


def architecture_loss(task_loss: Tensor, cost: Tensor) -> Tensor:
    """The alphas' loss: log(task_loss) + cost (see the module docstring), invariant to the task loss's scale."""
    return torch.log(task_loss) + cost


def build_cost_table(config: SearchConfig, space: SearchSpace) -> CostTable:
    """The MAC table of ``space`` at the config's input size, or the config's latency table (checked to fit)."""
    if config.cost == "macs":
        return mac_table(space, config.input_size, sic=config.sic)
    table = CostTable.load(config.lut)
    table.check(space, config.input_size)
    return table


class SearchLoop(TrainingLoop):
    """The search on the shared training loop: supernet weights on one half, alphas on the other."""

    config: SearchConfig
    model: SuperNet
    find_unused_parameters = True  # only the sampled candidate of each layer runs

    def __init__(self, config: SearchConfig, env: Environment):
        self.criterion = JointsMSELoss()
        super().__init__(config, env)
        self.cost_table = build_cost_table(config, self.model.space)
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=config.arch_lr,
                                               betas=tuple(config.arch_betas), weight_decay=config.arch_weight_decay)
        self.genotype_name = f"searched_{config.space.lower()}"
        self.paths = torch.Generator()
        self.searching = False
        self.arch_batches: Iterator[dict[str, Tensor]] | None = None

    def build_model(self) -> SuperNet:
        """The supernet of the config's space, from scratch or with the FNA remap of EfficientNet-Lite0."""
        model = SuperNet(get_space(self.config.space), sic=self.config.sic)
        initialise(model, self.config.init)
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW on the weights (see :func:`decay_groups`); the alphas have their own optimiser."""
        return torch.optim.AdamW(decay_groups(list(self.model.weight_parameters()), self.config.weight_decay),
                                 lr=self.config.lr)

    def build_loader(self) -> tuple[DataLoader, MixedSampler]:
        """The weight half's loader; the architecture half's goes to ``arch_loader`` / ``arch_sampler``."""
        records, read = load_train_records(self.config)
        halves = [split_by_image(part, self.config.seed) for part in records]
        weight_data, weight_sampler = build_train_data(self.config, self.env, self.config.augment,
                                                       persons=([weights for weights, _ in halves], read))
        arch_data, self.arch_sampler = build_train_data(self.config, self.env, self.config.augment,
                                                        persons=([arch for _, arch in halves], read))
        self.arch_loader = self.make_loader(arch_data, self.arch_sampler)
        return self.make_loader(weight_data, weight_sampler), weight_sampler

    def compute_loss(self, output: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted heatmap MSE (the task loss)."""
        target = batch["target"].to(self.env.device, non_blocking=True)
        weight = batch["target_weight"].to(self.env.device, non_blocking=True)
        return {"loss": self.criterion(output.float(), target, weight)}

    def train_epoch(self, epoch: int, stop_at: float | None = None) -> dict[str, Any]:
        """A warm-up or search epoch; adds the phase, the alphas' learning rate and their agreement across ranks."""
        self.searching = epoch >= self.config.warmup_epochs
        self.paths.manual_seed(self.config.seed * 1_000_003 + epoch)  # alike on every rank: one path for all
        if self.searching:
            self.arch_sampler.set_epoch(epoch)
            self.arch_batches = iter(self.arch_loader)
        stats = super().train_epoch(epoch, stop_at)
        self.arch_batches = None
        return {**stats, "phase": "search" if self.searching else "warmup", "arch_lr": self.config.arch_lr,
                "alpha_rank_difference": self.alpha_rank_difference()}

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """A weight step on a path (uniform in the warm-up, else from alpha), then, when searching, an arch step."""
        self.model.sample(self.paths, uniform=not self.searching)
        losses = super().train_step(batch)
        if self.arch_batches is not None:
            losses.update(self.arch_step(next(self.arch_batches)))
        return losses

    def arch_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """Update the alphas on a batch of the architecture half; returns its task loss and the cost loss."""
        self.model.sample(self.paths, uniform=False)
        with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            output = self.network(self.input_images(batch))
        task = self.compute_loss(output, batch)["loss"]
        cost = cost_loss(self.model.expected_cost(self.cost_table), self.config.cost_lambda, self.config.cost_base,
                         self.config.target_cost)
        self.arch_optimizer.zero_grad(set_to_none=True)
        architecture_loss(task, cost).backward()
        self.arch_optimizer.step()
        return {"arch": float(task.detach()), "cost": float(cost.detach())}

    def alpha_rank_difference(self) -> float:
        """Largest difference between this rank's alphas and rank 0's (0.0 when in sync, and in one process)."""
        if self.env.world_size == 1:
            return 0.0
        alphas = torch.cat([alpha.detach().flatten() for alpha in self.model.arch_parameters()])
        reference = alphas.clone()
        dist.broadcast(reference, 0)
        difference = (alphas - reference).abs().max()
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        return float(difference)

    def validate(self) -> dict[str, Any]:
        """No pose validation: the search's state after the epoch (rank 0).

        Expected cost under softmax(alpha), cost of the argmax architecture, mean alpha entropy (nats) and the
        argmax op of every layer.
        """
        return {"cost_metric": self.cost_table.metric,
                "expected_cost": float(self.model.expected_cost(self.cost_table).detach()),
                "derived_cost": self.cost_table.genotype_cost(self.model.derive(self.genotype_name)),
                "alpha_entropy": self.model.mean_entropy(), "argmax": self.model.argmax_ops()}

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """The training loop's state plus the architecture optimiser (the alphas are in the supernet's weights)."""
        return {**super().checkpoint_state(epoch), "arch_optimizer": self.arch_optimizer.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`checkpoint_state`."""
        super().restore(state)
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])

    def save(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        """``last.pt`` (supernet weights are no model to keep a best of), then this epoch's search outputs."""
        super().save(epoch, record, improved=False)
        write_search_outputs(self.model, self.cost_table, self.out_dir, self.genotype_name)


def run_search(config: SearchConfig, resume: str | Path | None = None,
               stop_after_s: float | None = None) -> list[dict[str, Any]]:
    """Entry point of ``effpose search`` (also under torchrun); returns the per-epoch history."""
    return run_loop(SearchLoop, config, resume, stop_after_s)
