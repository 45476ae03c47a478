"""Ship a training run's best checkpoint: export it into the package and write its model card.

    python scripts/release_model.py --run runs/campaign_r3 [--name efficientpose_a_coco17] [--only-if-better]
                                    [--note "what the history does not say"]

Exports ``best.pt`` to ``effpose/assets/NAME.onnx`` (parity-checked against torch), chooses the heatmap decoder's
sub-pixel refinement on the run's validation sets (quarter offset or DARK with one of a few blur kernels: the best
mean flip-test (AP + PCK@0.2) / 2) and states it in the file's metadata, evaluates the file on every validation set
with GT boxes, with and without flip test, through the same code as ``effpose eval``, and writes
``effpose/assets/NAME.json``: data, recipe, input size, crops seen, CPU and wall hours (the totals of the campaign
history in the checkpoint), hardware, params, MACs, the decoder's choice and the measured results.
``--only-if-better`` ships only when the mean flip-test AP over the validation sets beats the shipped card's, so
the package always holds the best released model. Re-running ``effpose eval`` on the shipped file reproduces the
card's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from cards import write_card
from cpuinfo import get_cpu_info

from effpose import __version__
from effpose.assets import ASSETS_DIR
from effpose.contract import DEFAULT_DARK_KERNEL
from effpose.evaluation import evaluate, load_estimator
from effpose.export import check_parity, export_onnx, restate_contract
from effpose.model import load_checkpoint, measure_complexity
from effpose.training.config import TrainConfig

#: Recipe fields a card records (the rest of a config is paths and bookkeeping).
RECIPE_FIELDS = ("arch", "sic", "init", "batch_size", "lr", "weight_decay", "schedule", "warmup_steps", "sigma", "loss",
                 "fg_weight", "augment", "ema_decay", "pseudo_weight", "precise_bn_batches", "channels_last")


#: Decoder refinements a release chooses from: (refinement, DARK blur kernel). Wide training targets (sigma 3 on
#: 32x24 heatmaps) may want a smaller kernel than DARK's 11, which was tuned for 64x48.
REFINEMENT_CANDIDATES = (("quarter", DEFAULT_DARK_KERNEL), ("dark", 3), ("dark", 5), ("dark", 7), ("dark", 11))


def evaluate_sets(onnx_path: Path, config: TrainConfig, flip: bool) -> dict[str, dict]:
    """``effpose eval``'s metrics of the file on every val set of ``config``, GT boxes, by set name."""
    estimator = load_estimator(onnx_path, flip=flip)
    return {source.name: evaluate(estimator, *source.paths(), boxes="gt", flip=flip).metrics for source in config.val}


def choose_refinement(onnx_path: Path, config: TrainConfig) -> dict:
    """State in the file the refinement with the best mean flip-test (AP + PCK@0.2) / 2 over the val sets; return
    the choice and every candidate's score."""
    scores = {}
    for refinement, kernel in REFINEMENT_CANDIDATES:
        restate_contract(onnx_path, refinement=refinement, dark_kernel=kernel)
        metrics = evaluate_sets(onnx_path, config, flip=True).values()
        scores[(refinement, kernel)] = float(np.mean([(m["AP"] + m["PCK@0.2"]) / 2 for m in metrics]))
    refinement, kernel = max(scores, key=scores.get)
    restate_contract(onnx_path, refinement=refinement, dark_kernel=kernel)
    return {"refinement": refinement, "dark_kernel": kernel,
            "chosen_by": "mean over the val sets of the flip test's (AP + PCK@0.2) / 2, GT boxes",
            "candidates": {f"{r}" + (f"_k{k}" if r == "dark" else ""): round(v, 4) for (r, k), v in scores.items()}}


def evaluate_shipped(onnx_path: Path, config: TrainConfig) -> dict[str, dict[str, float]]:
    """AP / AP50 / AP75 / AR / PCK@0.2 on every val set, GT boxes, without and with flip test."""
    results: dict[str, dict[str, float]] = {}
    annotations = {source.name: source.annotations for source in config.val}
    for flip in (False, True):
        for name, metrics in evaluate_sets(onnx_path, config, flip).items():
            key = f"{name}{'_flip' if flip else ''}"
            results[key] = {metric: round(float(metrics[metric]), 4) for metric in ("AP", "AP50", "AP75", "AR",
                                                                                     "PCK@0.2")}
            results[key]["annotations"] = annotations[name]
    return results


def mean_flip_ap(results: dict[str, dict[str, float]]) -> float:
    """The release criterion: mean flip-test AP over the validation sets of a card's results."""
    return float(np.mean([value["AP"] for key, value in results.items() if key.endswith("_flip")]))


def training_summary(config: TrainConfig, record: dict, note: str) -> dict:
    """The card's training section: data, recipe and the campaign totals up to the released epoch."""
    devices = "GPU" if record.get("device") == "cuda" else f"CPU only, {record.get('threads', '?')} threads"
    return {
        "data": [{"name": s.name, "annotations": s.annotations, "ratio": s.ratio} for s in config.train],
        "recipe": {key: config.to_dict()[key] for key in RECIPE_FIELDS},
        "input": {"width": config.input_size[0], "height": config.input_size[1]},
        "epoch": record["epoch"],
        "crops_seen": record.get("crops_seen"),
        "cpu_hours": round(record["cpu_hours"], 2) if "cpu_hours" in record else None,
        "wall_hours": round(record["wall_hours"], 2) if "wall_hours" in record else None,
        "hardware": f"{get_cpu_info()['brand_raw']}, {devices} (torch {torch.__version__})",
        "note": note,
    }


def main() -> int:
    """Export, evaluate, compare and write the card; exit 0 when shipped, 3 when not better (--only-if-better)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder (best.pt, config.json)")
    parser.add_argument("--name", default="efficientpose_a_coco17")
    parser.add_argument("--only-if-better", action="store_true", help="ship only if it beats the shipped card")
    parser.add_argument("--note", default="", help="free text for the card (e.g. what came before the history)")
    args = parser.parse_args()

    config = TrainConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    if not (args.run / "best.pt").is_file():  # written only by an epoch that beat the campaign's best validation
        print(json.dumps({"released": False, "reason": f"no epoch of {args.run} beat the campaign's best"}))
        return 3
    model, extra = load_checkpoint(args.run / "best.pt")
    card_path = ASSETS_DIR / f"{args.name}.json"
    with tempfile.TemporaryDirectory(prefix="effpose-release-") as folder:
        candidate = export_onnx(model, Path(folder) / f"{args.name}.onnx", config.input_size, weights="trained")
        decoder = choose_refinement(candidate, config)
        results = evaluate_shipped(candidate, config)
        if args.only_if_better and card_path.is_file():
            shipped = mean_flip_ap(json.loads(card_path.read_text())["validation_gt_boxes"])
            if mean_flip_ap(results) <= shipped:
                print(json.dumps({"released": False, "candidate_mean_flip_AP": mean_flip_ap(results),
                                  "shipped_mean_flip_AP": shipped, "validation_gt_boxes": results}, indent=2))
                return 3
    onnx_path = export_onnx(model, ASSETS_DIR / f"{args.name}.onnx", config.input_size, weights="trained")
    restate_contract(onnx_path, refinement=decoder["refinement"], dark_kernel=decoder["dark_kernel"])
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
        "training": training_summary(config, extra["metrics"], args.note),
        "decoder": decoder,
        "validation_gt_boxes": results,
    }
    write_card(args.name, card, onnx_path, parity, f"effpose eval --model effpose/assets/{onnx_path.name} "
               "--annotations $EFFPOSE_DATA/<annotations> --images $EFFPOSE_DATA/<images> [--flip] --json")
    print(json.dumps({"released": True, "mean_flip_AP": mean_flip_ap(results), "validation_gt_boxes": results},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
