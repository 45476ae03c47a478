"""Smoke training through the real `effpose train` command: loss goes down, checkpoints resume and export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from effpose.training.config import TrainConfig
from effpose.training.trainer import learning_rate

EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"


def _train(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([EFFPOSE, "train", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_smoke_training_lowers_the_loss_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    _train("--config", str(tiny_config))
    run = tmp_path / "run"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4, 5]
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(0.0 <= h["tiny/AP"] <= 1.0 and 0.0 <= h["tiny/PCK@0.2"] <= 1.0 for h in history)
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()

    _train("--config", str(tiny_config), "--cfg-options", "epochs=7", "--resume", str(run / "last.pt"))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(7))  # continued, did not restart

    exported = subprocess.run([EFFPOSE, "export", "--checkpoint", str(run / "best.pt"), "--input", "128x96",
                               "--out", str(tmp_path / "best.onnx")], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    evaluated = subprocess.run([EFFPOSE, "eval", "--model", str(run / "best.pt"), "--annotations",
                                str(tmp_path / "tiny.json"), "--images", str(tiny_config.parent / "x"), "--json"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 2 and "not found" in evaluated.stderr  # a wrong image folder is a clear error


@pytest.mark.slow
def test_distributed_training_under_torchrun(tiny_config: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) under torchrun, the command unchanged: one log, one set of checkpoints."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "effpose.cli", "train", "--config", str(tiny_config), "--cfg-options", "epochs=2",
               "--out-dir", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]  # rank 0 alone logs and validates
    assert (tmp_path / "ddp" / "best.pt").is_file() and (tmp_path / "ddp" / "last.pt").is_file()


def test_config_rejects_unknown_keys_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"arch": "A", "learning_rate": 1})
    config = TrainConfig.from_dict({"train": [{"name": "x", "annotations": str(tmp_path / "no.json"),
                                               "images": str(tmp_path)}]})
    with pytest.raises(FileNotFoundError, match="no.json"):
        config.validate()


def test_learning_rate_schedules() -> None:
    step = TrainConfig(lr=1e-3, warmup_steps=10, lr_steps=[2, 3], schedule="step", epochs=4)
    assert learning_rate(step, 0, 0, 100) == pytest.approx(1e-4)  # warm-up
    assert learning_rate(step, 1, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(step, 2, 0, 100) == pytest.approx(1e-4)
    assert learning_rate(step, 3, 50, 100) == pytest.approx(1e-5)
    cosine = TrainConfig(lr=1e-3, warmup_steps=1, schedule="cosine", epochs=4)
    rates = [learning_rate(cosine, e, s, 10) for e in range(4) for s in range(10)]
    assert rates[0] == pytest.approx(1e-3) and all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] < 5e-5
    per_run = TrainConfig(lr=1e-3, warmup_steps=1, schedule="run_cosine", epochs=4)
    assert learning_rate(per_run, 30, 5, 10, run_progress=0.0) == pytest.approx(1e-3)  # a resumed run restarts at lr
    assert learning_rate(per_run, 30, 5, 10, run_progress=0.5) == pytest.approx(0.505e-3)
    assert learning_rate(per_run, 31, 0, 10, run_progress=1.3) == pytest.approx(1e-5)  # past the budget: the floor


def test_precise_bn_averages_statistics_over_the_given_batches() -> None:
    import torch
    from torch import nn

    from effpose.training.trainer import precise_bn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(3, momentum=0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x)

    model = Tiny()
    batches = [{"image": torch.randn(4, 3, 5, 5) * (i + 1) + i} for i in range(3)]
    precise_bn(model, batches + [{"image": torch.full((4, 3, 5, 5), 1e6)}], batches=3, device=torch.device("cpu"))
    expected_mean = torch.stack([b["image"].mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(model.norm.running_mean, expected_mean, atol=1e-5)  # the 4th batch was not used
    assert model.norm.momentum == 0.1  # restored


def test_precise_bn_collects_statistics_without_stochastic_depth() -> None:
    import torch
    from torch import nn

    from effpose.model import build_op, set_drop_path
    from effpose.training.trainer import precise_bn

    torch.manual_seed(0)
    batches = [{"image": torch.randn(8, 8, 6, 6)} for _ in range(3)]
    means = []
    for rate in (0.0, 0.9):
        torch.manual_seed(1)
        model = nn.Sequential(build_op("ir_k3_e3", 8, 8, 1), build_op("ir_k3_e3", 8, 8, 1))
        set_drop_path(model, rate)
        precise_bn(model, batches, batches=3, device=torch.device("cpu"))
        means.append(model[1].body[0][1].running_mean)  # after the first block's (droppable) residual branch
    assert torch.equal(means[0], means[1])


@pytest.mark.slow
def test_depth_pruned_and_grown_genotypes_start_from_the_full_networks_weights(tmp_path, random_model_a) -> None:
    import dataclasses

    import torch

    from effpose.genotype import Stage
    from effpose.model import build_model, save_checkpoint
    from effpose.training.trainer import initialise

    full = tmp_path / "full.pt"
    save_checkpoint(random_model_a, full)
    genotype = random_model_a.genotype
    pruned = build_model(genotype.skip_layers({(2, i) for i in range(1, len(genotype.stages[2].ops))}, "pruned"))
    initialise(pruned, "scratch", str(full))
    weights = random_model_a.state_dict()
    assert all(torch.equal(value, weights[name]) for name, value in pruned.state_dict().items())
    assert not any(name.startswith("backbone.2.1.") for name in pruned.state_dict())

    last = genotype.stages[-1]
    deeper = build_model(dataclasses.replace(genotype, name="deeper", stages=(
        *genotype.stages[:-1], Stage(last.channels, last.stride, last.ops + ("ir_k7_e6",) * 2))))
    initialise(deeper.train(), "scratch", str(full))  # new layers start as identity: the same function
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(deeper.eval()(x), random_model_a(x))

    # a layer whose weights are only partly there is an error, not a silent random start
    del weights["backbone.3.2.body.1.0.weight"]
    torch.save({"state_dict": weights}, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        initialise(build_model("A"), "scratch", str(tmp_path / "broken.pt"))
