"""Ship a training run's best checkpoint: export it into the package and write its model card.

    python scripts/release_model.py --run runs/efficientpose_a_coco17 [--name efficientpose_a_coco17]
                                    [--earlier-runs RUN ...]   # stages the run was initialised from, in order
                                    [--continues-card CARD]    # or: the card of the model the run continued

Exports ``best.pt`` to ``effpose/assets/NAME.onnx`` (parity-checked against torch), evaluates that ONNX file on every
validation set of the run's config with GT boxes, with and without flip test, through the same code as
``effpose eval``, and writes ``effpose/assets/NAME.json``: data, recipe, epochs, wall time, hardware, params, MACs
and the measured results. Re-running ``effpose eval`` on the shipped file reproduces the card's numbers.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from effpose import __version__
from effpose.assets import ASSETS_DIR
from effpose.cards import read_history, write_card
from effpose.evaluation import evaluate, load_estimator
from effpose.export import check_parity, export_onnx
from effpose.machine import cpu_model
from effpose.model import load_checkpoint, measure_complexity
from effpose.training.config import TrainConfig


def evaluate_shipped(onnx_path: Path, config: TrainConfig) -> dict[str, dict[str, float]]:
    """AP / AP50 / AP75 / AR / PCK@0.2 on every val set, GT boxes, without and with flip test."""
    results: dict[str, dict[str, float]] = {}
    for flip in (False, True):
        estimator = load_estimator(onnx_path, flip=flip)
        for source in config.val:
            annotations, images = source.paths()
            metrics = evaluate(estimator, annotations, images, boxes="gt", flip=flip).metrics
            key = f"{source.name}{'_flip' if flip else ''}"
            results[key] = {name: round(float(metrics[name]), 4) for name in ("AP", "AP50", "AP75", "AR", "PCK@0.2")}
            results[key]["annotations"] = source.annotations
    return results


def stage_summary(run: Path) -> dict:
    """Input size, epochs, samples and hours of one training run (one stage of a staged recipe)."""
    config = json.loads((run / "config.json").read_text())
    history = read_history(run)
    return {
        "run": run.name,
        "input": config["input_size"],
        "init": config["init_checkpoint"] or config["init"],
        "epochs_run": len(history),
        "samples_per_epoch": config["samples_per_epoch"],
        "samples_seen": config["samples_per_epoch"] * len(history),
        "lr": config["lr"],
        "weight_decay": config["weight_decay"],
        "precise_bn_batches": config.get("precise_bn_batches", 0),
        "train_hours": round(sum(h["train_seconds"] + h["val_seconds"] for h in history) / 3600, 2),
    }


def main() -> None:
    """Export, evaluate and write the card."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder (best.pt, config.json, metrics)")
    parser.add_argument("--name", default="efficientpose_a_coco17")
    parser.add_argument("--earlier-runs", type=Path, nargs="*", default=[], help="earlier stages, in order")
    parser.add_argument("--continues-card", type=Path, help="model card of the model the first run started from: "
                        "its stages come first (read before the new card overwrites it)")
    args = parser.parse_args()

    config = TrainConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    carried = json.loads(args.continues_card.read_text())["training"]["stages"] if args.continues_card else []
    stages = [*carried, *(stage_summary(run) for run in [*args.earlier_runs, args.run])]
    model, extra = load_checkpoint(args.run / "best.pt")
    onnx_path = export_onnx(model, ASSETS_DIR / f"{args.name}.onnx", config.input_size, weights="trained")
    parity = check_parity(model, onnx_path, config.input_size)
    stats = measure_complexity(model, config.input_size)
    card = {
        "name": args.name,
        "model": model.genotype.name,
        "effpose_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"width": config.input_size[0], "height": config.input_size[1]},
        "keypoints": "COCO-17",
        "params": stats.params,
        "macs": stats.macs,
        "training": {
            "data": [{"name": s.name, "annotations": s.annotations, "ratio": s.ratio} for s in config.train],
            "init": stages[0]["init"],
            "recipe": {key: config.to_dict()[key] for key in (  # shared by every stage; the rest is per stage
                "batch_size", "schedule", "warmup_steps", "sigma", "augment", "pseudo_weight", "sic",
                "channels_last")},
            "best_epoch_of_last_stage": extra["epoch"],
            "stages": stages,
            "epochs_run": sum(s["epochs_run"] for s in stages),
            "samples_seen": sum(s["samples_seen"] for s in stages),
            "train_hours": round(sum(s["train_hours"] for s in stages), 2),
            "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads, CPU only (torch {torch.__version__})",
        },
        "validation_gt_boxes": evaluate_shipped(onnx_path, config),
    }
    write_card(args.name, card, onnx_path, parity, f"effpose eval --model effpose/assets/{onnx_path.name} "
               "--annotations $EFFPOSE_DATA/<annotations> --images $EFFPOSE_DATA/<images> [--flip] --json")
    print(json.dumps(card["validation_gt_boxes"], indent=2))


if __name__ == "__main__":
    main()
