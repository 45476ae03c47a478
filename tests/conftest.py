"""Shared fixtures: the shared data folder, randomised (not trained) models and their ONNX exports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("EFFPOSE_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $EFFPOSE_DATA); tests that need it skip when it is absent."""
    if not (DATA_DIR / "coco" / "annotations" / "person_keypoints_val.json").is_file():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def coco_val_person(data_dir: Path) -> tuple[Path, list[float]]:
    """A real COCO val photo and one annotated person's box (x1, y1, x2, y2)."""
    annotations = json.loads((data_dir / "coco" / "annotations" / "person_keypoints_val.json").read_text())
    person = max(annotations["annotations"], key=lambda a: a["num_keypoints"] * (a["area"] > 64 * 64))
    image = next(i for i in annotations["images"] if i["id"] == person["image_id"])
    x, y, w, h = person["bbox"]
    return data_dir / "coco" / "images" / image["file_name"], [x, y, x + w, y + h]


@pytest.fixture()
def tiny_config(tmp_path: Path, data_dir: Path) -> Path:
    """A handful of real LSPet persons at a small input without augmentation: the net can memorise them fast."""
    full = json.loads((data_dir / "lspet" / "annotations" / "lspet_val.json").read_text())
    annotations = full["annotations"][:8]
    ids = {a["image_id"] for a in annotations}
    subset = {**full, "annotations": annotations, "images": [i for i in full["images"] if i["id"] in ids]}
    (tmp_path / "tiny.json").write_text(json.dumps(subset))
    images = str(data_dir / "lspet" / "images")
    source = {"name": "tiny", "annotations": str(tmp_path / "tiny.json"), "images": images}
    config = {
        "arch": "A", "input_size": [96, 128], "init": "scratch", "train": [source], "val": [source],
        "epochs": 6, "samples_per_epoch": 32, "batch_size": 8, "lr": 0.001, "schedule": "step", "lr_steps": [],
        "warmup_steps": 1, "augment": "none", "workers": 0, "out_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def randomize(model, input_size: tuple[int, int] = (192, 256)):  # noqa: ANN001, ANN201 - torch types stay out of this module's import
    """Give a freshly built model (pose or person detector) random BN affine parameters and O(1), input-dependent
    outputs at ``input_size`` (width, height).

    BN statistics are then measured on random inputs (precise BN): statistics that do not match the activations
    would normalise the signal away and leave an output that ignores the image, which parity checks cannot test.
    """
    import torch
    from torch import nn

    from effpose.training.trainer import precise_bn

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
            elif isinstance(module, nn.ConvTranspose2d):
                module.weight.normal_(0.0, 0.05, generator=generator)
        # the pose predictor, or the person detector's three prediction layers
        outputs = [model.predictor] if hasattr(model, "predictor") else [model.heatmap[-1], model.size[-1],
                                                                         model.offset[-1]]
        for layer in outputs:
            layer.weight.normal_(0.0, 0.2, generator=generator)
    width, height = input_size
    batches = [{"image": torch.randn(4, 3, height, width, generator=generator)} for _ in range(2)]
    precise_bn(model, batches, len(batches), torch.device("cpu"))
    return model.eval()


@pytest.fixture(scope="session")
def randomized():
    """The :func:`randomize` helper, for tests that build further models."""
    return randomize


@pytest.fixture(scope="session")
def random_model_a():
    """EfficientPose-A with random (untrained) weights, in eval mode; seeded, so every run tests the same net."""
    import torch

    from effpose.model import build_model

    torch.manual_seed(0)
    return randomize(build_model("A"))


@pytest.fixture(scope="session")
def random_onnx_a(random_model_a, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random EfficientPose-A exported to ONNX (weights marked random-init)."""
    from effpose.export import export_onnx

    return export_onnx(random_model_a, tmp_path_factory.mktemp("onnx") / "a.onnx", weights="random-init")
