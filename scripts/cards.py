"""Model cards (release tooling, not the library): the JSON written next to a shipped ONNX model by
``scripts/release_model.py`` and ``scripts/release_detector.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime

from effpose.assets import ASSETS_DIR


def read_history(run: Path) -> list[dict[str, Any]]:
    """The per-epoch records (``metrics.jsonl``) of a training run folder."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_card(name: str, card: dict[str, Any], onnx_path: Path, parity: float, reproduce: str) -> Path:
    """Add the export facts and the command that reproduces the card's numbers, write ``assets/NAME.json``."""
    card = {**card, "export": {"onnx": onnx_path.name, "parity_max_abs_diff": parity,
                               "onnxruntime": onnxruntime.__version__}, "reproduce": reproduce}
    path = ASSETS_DIR / f"{name}.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
