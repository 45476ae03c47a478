#!/usr/bin/env python
"""A weight soup (Wortsman et al., 2022) of person detector checkpoints that share a start, e.g. an A/B's two
arms, which both continue the campaign's resume point: the uniform mean of their weights (each checkpoint's moving
average where it holds one, as an export takes it), exported to ONNX with a parity check.

    python scripts/detector_soup.py runs/RUN_A/last.pt runs/RUN_B/last.pt --out runs/soup.onnx

Score it like any detector: ``effpose eval-detector --model runs/soup.onnx ...`` or against an arm with
``scripts/detector_ab_bootstrap.py``. BatchNorm statistics are averaged as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from effpose.detector_training.export import check_detector_parity, export_detector
from effpose.detector_training.model import CenterNetDetector, load_detector


def soup(checkpoints: list[Path]) -> tuple[CenterNetDetector, int | None]:
    """The first checkpoint's detector holding the mean weights of all, and the training input size it states."""
    if len(checkpoints) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    models = [load_detector(path, moving_average=True) for path in checkpoints]
    model, extra = models[0]
    states = [other.state_dict() for other, _ in models]
    if any(state.keys() != states[0].keys() for state in states):
        raise ValueError("the checkpoints hold different architectures")
    mean = {name: torch.stack([state[name] for state in states]).mean(0) if value.is_floating_point() else value
            for name, value in states[0].items()}
    model.load_state_dict(mean)
    return model, extra.get("train_config", {}).get("input_size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+", help="detector checkpoints (last.pt / best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the soup's ONNX file")
    args = parser.parse_args()
    model, input_size = soup(args.checkpoints)
    size = input_size or 320
    export_detector(model, args.out, size)
    print(json.dumps({"out": str(args.out), "checkpoints": [str(path) for path in args.checkpoints],
                      "parity_max_abs_diff": check_detector_parity(model, args.out, size)}))


if __name__ == "__main__":
    main()
