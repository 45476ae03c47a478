"""The training campaign's machinery: time budget and SIGTERM stops, compact resume points with the full history,
the moving average, the recipe options, data packs and the GPU script (run here on the CPU at tiny size)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from effpose.data import load_person_records
from effpose.data.dataset import AugmentConfig, TopDownDataset
from effpose.data.pack import load_pack, write_pack
from effpose.model import build_model
from effpose.processing.affine import transform_points
from effpose.training.loss import JointsMSELoss
from effpose.training.trainer import compact_optimizer_state, compact_state, decay_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"
MAX_RESUME_BYTES = 12_000_000  # a resume point is committed after every campaign run


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _campaign_config(tiny_config: Path, **changes: object) -> Path:
    """The tiny config as an open-ended campaign: constant lr, moving average, epochs long enough to be cut."""
    config = json.loads(tiny_config.read_text())
    config.update({"epochs": 1000, "schedule": "constant", "ema_decay": 0.9, "samples_per_epoch": 4000,
                   "workers": 1, **changes})
    path = tiny_config.parent / "campaign.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_stop_after_ends_cleanly_and_the_resume_point_continues(tiny_config: Path, tmp_path: Path) -> None:
    config = _campaign_config(tiny_config)
    first_run, second_run = tmp_path / "campaign_r1", tmp_path / "campaign_r2"
    started = time.monotonic()
    first = subprocess.run([EFFPOSE, "train", "--config", str(config), "--stop-after", "4s",
                            "--out-dir", str(first_run)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert time.monotonic() - started < 120  # an epoch of 4,000 crops would take minutes: it was cut
    (record,) = _history(first_run)
    assert record["complete"] is False and 0 < record["crops"] < 4000 and record["run"] == "campaign_r1"
    assert record["crops_seen"] == record["crops"] and record["wall_hours"] > 0 and record["cpu_hours"] > 0
    assert 0.0 <= record["tiny/PCK@0.2"] <= 1.0  # the partial epoch was validated
    assert (first_run / "model.onnx").is_file() and (first_run / "best.pt").is_file()
    assert (first_run / "last.pt").stat().st_size <= MAX_RESUME_BYTES
    state = torch.load(first_run / "last.pt", weights_only=False)
    assert "ema" in state and [h["crops_seen"] for h in state["history"]] == [record["crops_seen"]]

    second = subprocess.run([EFFPOSE, "train", "--config", str(config), "--resume", str(first_run / "last.pt"),
                             "--stop-after", "3s", "--out-dir", str(second_run)],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    (resumed,) = _history(second_run)
    assert resumed["epoch"] == 1 and resumed["crops_seen"] == record["crops"] + resumed["crops"]
    assert resumed["wall_hours"] > record["wall_hours"] and resumed["cpu_hours"] > record["cpu_hours"]

    resume_dir, results = tmp_path / "checkpoints", tmp_path / "results.md"
    resume_dir.mkdir()
    results.write_text("# Results\n<!-- campaign-progress:start -->\nold\n<!-- campaign-progress:end -->\nrest\n")
    finished = subprocess.run([sys.executable, "scripts/campaign_finish.py", "--run", str(second_run),
                               "--resume-dir", str(resume_dir), "--results", str(results)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (resume_dir / "last.pt").read_bytes() == (second_run / "last.pt").read_bytes()
    assert [json.loads(line)["epoch"] for line in (resume_dir / "campaign_metrics.jsonl").read_text().splitlines()] \
        == [0, 1]
    table = results.read_text()
    assert "old" not in table and table.endswith("rest\n")
    rows = [line for line in table.splitlines() if line.startswith("| campaign_r")]
    assert [row.split(" | ")[0] for row in rows] == ["| campaign_r1", "| campaign_r2"]
    assert f"{resumed['crops_seen']:,}" in rows[1]


@pytest.mark.slow
def test_sigterm_ends_the_run_cleanly(tiny_config: Path, tmp_path: Path) -> None:
    config = _campaign_config(tiny_config)
    process = subprocess.Popen([EFFPOSE, "train", "--config", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "config.json").is_file():  # written when training starts
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("training did not start")
            time.sleep(0.5)
        time.sleep(3)  # a few training steps
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "SIGTERM" in stderr
    (record,) = _history(tmp_path / "run")
    assert record["complete"] is False
    assert (tmp_path / "run" / "model.onnx").is_file() and (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.slow
def test_compact_resume_point_restores_weights_and_optimiser() -> None:
    torch.manual_seed(0)
    model = build_model("A")
    optimizer = torch.optim.AdamW(decay_groups(list(model.parameters()), 0.0), lr=1e-3)
    model(torch.randn(2, 3, 128, 96)).square().mean().backward()
    optimizer.step()
    names = {name for name, _ in model.named_parameters()}
    weights = compact_state(model.state_dict(), names)
    moments = compact_optimizer_state(optimizer.state_dict())
    assert all(weights[name].dtype == torch.float16 for name in names)
    assert all(value.dtype != torch.float16 for name, value in weights.items() if name not in names)  # buffers
    assert all(entry["exp_avg_sq"].dtype == torch.bfloat16 for entry in moments["state"].values())

    restored = build_model("A")
    restored.load_state_dict(weights)
    for (name, before), after in zip(model.state_dict().items(), restored.state_dict().values()):
        assert after.dtype == before.dtype, name
        assert torch.allclose(after.float(), before.float(), rtol=1e-3, atol=1e-4), name
    again = torch.optim.AdamW(decay_groups(list(restored.parameters()), 0.0), lr=1e-3)
    again.load_state_dict(moments)
    assert all(state["exp_avg"].dtype == torch.float32 for state in again.state.values())


def test_decay_groups_spare_norms_and_biases() -> None:
    model = build_model("A")
    decay, no_decay = decay_groups(list(model.parameters()), 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_foreground_weighted_mse_weights_the_blob() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 1.0
    weight = torch.ones(1, 1)
    miss_blob = torch.zeros(1, 1, 8, 8)  # predicts background everywhere
    miss_background = target.clone()
    miss_background[0, 0, 0, 0] = 1.0  # one false background pixel
    plain, weighted = JointsMSELoss(), JointsMSELoss(fg_weight=10.0)
    assert plain(miss_blob, target, weight) == plain(miss_background, target, weight)
    assert weighted(miss_blob, target, weight) == pytest.approx(11 * weighted(miss_background, target, weight))


def test_augmentation_presets() -> None:
    release, light, none = (AugmentConfig.preset(name) for name in ("release", "light", "none"))
    assert release == AugmentConfig() and none == AugmentConfig.none()
    assert light.scale_factor < release.scale_factor and light.rotation_deg < release.rotation_deg
    assert light.half_body_prob == 0.0
    with pytest.raises(ValueError, match="preset"):
        AugmentConfig.preset("heavy")


@pytest.fixture()
def lspet_persons(data_dir: Path) -> list:
    records = load_person_records(data_dir / "lspet" / "annotations" / "lspet_val.json", data_dir / "lspet" / "images",
                                  source="lspet_train")
    return records[:6]


def test_pack_keeps_the_crop_geometry(lspet_persons: list, tmp_path: Path) -> None:
    """A packed person gives the same training crop as its original image: joints to a fraction of a pixel,
    pixels up to the downscale and WebP loss, also under rotation and scaling."""
    input_size = (96, 128)
    meta = write_pack({"lspet_train": lspet_persons}, tmp_path / "pack.npz", input_size, quality=95)
    assert meta["persons"] == {"lspet_train": 6}
    sources, images, loaded_meta = load_pack(tmp_path / "pack.npz")
    assert loaded_meta == meta and [r.annotation_id for r in sources["lspet_train"]] == [
        r.annotation_id for r in lspet_persons]
    original = TopDownDataset(lspet_persons, input_size, train=True, augment=AugmentConfig.none())
    packed = TopDownDataset(sources["lspet_train"], input_size, train=True, augment=AugmentConfig.none(), read=images)
    for index in range(len(lspet_persons)):
        for rotation, zoom in ((0.0, 1.0), (40.0, 1.3), (-80.0, 0.8)):
            items = []
            for dataset in (original, packed):
                params = dataset.crop_params(index)
                params = type(params)(center=params.center, size=(params.size[0] * zoom, params.size[1] * zoom),
                                      rotation_deg=rotation)
                items.append((dataset.load(index, params), dataset.records[index]))
            (a, record_a), (b, record_b) = items
            labelled = record_a.keypoints[:, 2] > 0
            joints_a = transform_points(record_a.keypoints[labelled, :2], a["matrix"].numpy())
            joints_b = transform_points(record_b.keypoints[labelled, :2], b["matrix"].numpy())
            np.testing.assert_allclose(joints_a, joints_b, atol=0.05)
            assert torch.equal(a["target_weight"], b["target_weight"])
            image_a, image_b = a["image"].numpy(), b["image"].numpy()
            inside = (np.abs(image_b).sum(0) > 0) & (np.abs(image_a).sum(0) > 0)
            assert np.abs(image_a - image_b)[:, inside].mean() < 0.25  # ImageNet-normalised units


@pytest.mark.slow
def test_pack_trains_through_the_gpu_script_on_a_cpu(lspet_persons: list, tmp_path: Path) -> None:
    """scripts/train_gpu.sh, unchanged but for a tiny batch and budget: resumes the committed resume point from a
    pack alone and writes the new resume point, metrics and ONNX model to the named folder."""
    write_pack({"coco_train": lspet_persons[:3], "lspet_train": lspet_persons[3:]}, tmp_path / "pack.npz", (96, 128))
    out = tmp_path / "gpu_run"
    result = subprocess.run(["bash", "scripts/train_gpu.sh", "pose", str(tmp_path / "pack.npz"), str(out),
                             "--stop-after", "5s", "--cfg-options", "batch_size=4", "samples_per_epoch=64",
                             "workers=0"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    committed = torch.load(REPO_ROOT / "checkpoints" / "efficientpose_a_coco17" / "last.pt", weights_only=False)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["epoch"] > committed["epoch"]
    assert state["history"][:len(committed["history"])] == committed["history"]
    new = state["history"][len(committed["history"]):]
    assert new and new[0]["crops_seen"] == committed["history"][-1]["crops_seen"] + new[0]["crops"]
    assert (out / "model.onnx").is_file() and (out / "last.pt").stat().st_size <= MAX_RESUME_BYTES


@pytest.mark.slow
def test_pack_command_refuses_a_pack_over_budget(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack.npz"
    result = subprocess.run([EFFPOSE, "data", "pack", "--config", str(tiny_config), "--out", str(out),
                             "--max-mib", "0.001"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "over --max-mib" in result.stderr
    assert json.loads(result.stdout)["persons"] == {"tiny": 8}


def test_curve_fit_recovers_the_slope_and_prices_the_targets(tmp_path: Path) -> None:
    """scripts/campaign_curve.py on a synthetic log: LSPet PCK rises 0.05 per e-fold of crops, COCO AP is flat."""
    crops = np.geomspace(800_000, 2_000_000, 12)
    epochs = [{"run": "r", "complete": True, "crops_seen": int(c), "cpu_hours": c / 100_000,
               "coco_val/AP": 0.08 + 0.002 * (-1) ** i, "coco_val/PCK@0.2": 0.45,
               "lspet_val/AP": 0.2 + 0.06 * np.log(c / crops[0]),
               "lspet_val/PCK@0.2": 0.3 + 0.05 * np.log(c / crops[0])}
              for i, c in enumerate(crops)]
    epochs.insert(3, {**epochs[3], "complete": False, "lspet_val/PCK@0.2": 0.0})  # a cut epoch is left out
    log = tmp_path / "campaign_metrics.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in epochs))
    result = subprocess.run([sys.executable, "scripts/campaign_curve.py", "--log", str(log), "--since-crops", "0",
                             "--json", str(tmp_path / "curve.json")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "curve.json").read_text())
    pck = summary["metrics"]["lspet_val/PCK@0.2"]
    assert summary["epochs"] == 12 and summary["crops_per_cpu_hour"] == pytest.approx(100_000)
    assert pck["per_efold"] == pytest.approx(0.05) and pck["r2"] == pytest.approx(1.0)
    now = 0.3 + 0.05 * np.log(crops[-1] / crops[0])
    expected_crops = crops[-1] * np.exp((0.6 - now) / 0.05)
    assert pck["crops_needed"] == pytest.approx(expected_crops)
    assert pck["cpu_hours_needed"] == pytest.approx((expected_crops - crops[-1]) / 100_000)
    coco = summary["metrics"]["coco_val/AP"]
    assert abs(coco["per_efold"]) < 0.005 and coco["r2"] < 0.5
    assert "lspet_val/PCK@0.2" in result.stdout and "| 0.6 |" in result.stdout


def test_curve_fit_of_the_detector_campaign_prices_its_box_ap_target(tmp_path: Path) -> None:
    """``--kind detector`` fits the detector's metrics and prices the issue's box AP 0.40."""
    crops = np.geomspace(50_000, 150_000, 8)
    epochs = [{"run": "d", "complete": True, "crops_seen": int(c), "cpu_hours": c / 10_000,
               "coco_val/AP": 0.2 + 0.02 * np.log(c / crops[0]), "coco_val/AP50": 0.5, "coco_val/AR": 0.3}
              for c in crops]
    log = tmp_path / "campaign_metrics.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in epochs))
    result = subprocess.run([sys.executable, "scripts/campaign_curve.py", "--kind", "detector", "--log", str(log),
                             "--json", str(tmp_path / "curve.json")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "curve.json").read_text())
    assert summary["epochs"] == 8 and set(summary["metrics"]) == {"coco_val/AP", "coco_val/AP50", "coco_val/AR"}
    box_ap = summary["metrics"]["coco_val/AP"]
    now = 0.2 + 0.02 * np.log(crops[-1] / crops[0])
    assert box_ap["target"] == 0.4 and box_ap["crops_needed"] == pytest.approx(
        crops[-1] * np.exp((0.4 - now) / 0.02), rel=1e-3)


def test_ab_comparison_decides_on_the_last_complete_epochs(tmp_path: Path) -> None:
    """scripts/campaign_ab.py: arm "steady" has the best single epoch and mean, arm "late" the better end; the rule
    (mean of the last three complete epochs) picks "late", and a cut final epoch counts in images, not in the rule."""
    def arm(name: str, aps: list[float], cut: float | None = None) -> Path:
        epochs = [{"epoch": 80 + i, "complete": True, "crops": 1600, "samples_per_s": 5.0, "loss": 1.0,
                   "mean_AP": ap} for i, ap in enumerate(aps)]
        if cut is not None:
            epochs.append({**epochs[-1], "epoch": 80 + len(aps), "complete": False, "crops": 160, "mean_AP": cut})
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
        return tmp_path / name

    steady = arm("steady", [0.23, 0.22, 0.22, 0.20, 0.20, 0.20])
    late = arm("late", [0.18, 0.19, 0.20, 0.21, 0.21, 0.21], cut=0.0)
    result = subprocess.run([sys.executable, "scripts/campaign_ab.py", str(steady), str(late)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert "| 0.2000 |" in rows["steady"] and "0.2117 / 0.2300 (epoch 80)" in rows["steady"]
    assert "| 0.2100 |" in rows["late"] and "| 9,760 |" in rows["late"] and "| 80-86 |" in rows["late"]
    assert result.stdout.strip().endswith(f"winner: {late}")


@pytest.mark.parametrize("arms", [["base"], ["base", "--"], ["base", "lr=1", "--", "base", "lr=2"],
                                  ["--", "ttf", "a=1", "b=2"], ["base", "a=1", "b=2", "c=3"]])
def test_ab_launcher_needs_two_differently_named_arms(arms: list[str], tmp_path: Path) -> None:
    """scripts/campaign_ab.sh refuses an A/B it cannot run before it starts anything (CONFIG points nowhere, so
    should the check ever pass, the arms fail at once and nothing is finished)."""
    result = subprocess.run(["bash", "scripts/campaign_ab.sh", "detector", "1m", str(tmp_path / "ab"), *arms],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CONFIG": str(tmp_path / "missing.json")})
    assert result.returncode == 2 and "usage" in result.stderr
    assert not list(tmp_path.iterdir())
