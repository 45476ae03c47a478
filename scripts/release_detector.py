"""Ship a person-detector training run: export its best checkpoint into the package and write its model card.

    python scripts/release_detector.py --run runs/person_detector [--name person_detector] [--note TEXT]
                                       [--only-if-better] [--input-size SIDE] [--checkpoint RUN/last.pt]

Exports ``best.pt`` to ``effpose/assets/NAME.onnx`` (parity-checked against torch), evaluates that ONNX file on every
validation set of the run's config through the service's detector adapter (the code of ``effpose eval-detector``),
calibrates its default score threshold on the first validation set (max box F1, the code of ``effpose
calibrate-detector --write``) and writes ``effpose/assets/NAME.json``: data, recipe, images seen, CPU and wall hours
(of the whole campaign when the run resumed one), hardware, params, MACs, the measured box AP / AP50 / AR and
latency, and the threshold. ``effpose eval-detector`` on the shipped file reproduces the card's numbers.
``--only-if-better`` ships only when the mean box AP over the validation sets beats the shipped card's (exit 3
otherwise, the shipped detector stays). ``--input-size`` exports at another square side than the run trained at
(the network is fully convolutional; training's scale augmentation covers nearby sides), e.g. a smaller one for speed.
``--checkpoint`` ships other weights than ``best.pt``: a resume point's moving average, e.g. the ``last.pt`` of a
GPU run (``scripts/train_gpu.sh detector``), which had no validation data and so wrote no ``best.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from cards import read_history, write_card
from cpuinfo import get_cpu_info

from effpose import __version__
from effpose.assets import ASSETS_DIR
from effpose.detector_training.config import DetectorConfig
from effpose.detector_training.export import check_detector_parity, export_detector
from effpose.detector_training.model import load_detector
from effpose.detectors import OnnxDetector
from effpose.detectors.onnx_detector import write_score_threshold
from effpose.evaluation.detection import calibrate_detector, evaluate_detector
from effpose.model import measure_complexity

CARD_METRICS = ("AP", "AP50", "AP75", "AR", "ms_median", "ms_p90")


def evaluate(onnx_path: Path, config: DetectorConfig, threads: int) -> dict[str, dict]:
    """The card's metrics of a detector ONNX on every validation set of ``config``."""
    detector = OnnxDetector(onnx_path, intra_op_threads=threads)
    validation = {}
    for source in config.val:
        annotations, images = source.paths()
        report = evaluate_detector(detector, annotations, images)
        validation[source.name] = {name: round(float(report[name]), 4) for name in CARD_METRICS}
        validation[source.name]["annotations"] = source.annotations
    return validation


def campaign_history(run: Path) -> list[dict]:
    """Every epoch since the campaign began (the resume point's history), or the run's own metrics log."""
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    return state.get("history") or read_history(run)


def mean_ap(validation: dict[str, dict]) -> float:
    """Mean box AP over a card's validation sets."""
    return sum(entry["AP"] for entry in validation.values()) / max(len(validation), 1)


def training_summary(config: DetectorConfig, history: list[dict], best_epoch: int, note: str) -> dict:
    """The card's training section: data, recipe and the totals of the run (or campaign) at its end."""
    last = history[-1]
    recipe = {key: value for key, value in config.to_dict().items() if key not in ("train", "val", "out_dir")}
    return {
        "data": [{"name": s.name, "annotations": s.annotations, "boxes": s.boxes, "teacher": s.teacher,
                  "teacher_threshold": s.teacher_threshold, "ratio": s.ratio} for s in config.train],
        "teacher": "YOLOX-nano (../shared/data/models/yolox_nano) through effpose detect, score >= 0.3 kept in "
                   "the pseudo-box files",
        "recipe": recipe,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "samples_seen": last.get("crops_seen", config.samples_per_epoch * len(history)),
        "cpu_hours": round(last["cpu_hours"], 2) if "cpu_hours" in last else None,
        "train_hours": round(last.get("wall_hours", sum(h["train_seconds"] + h["val_seconds"] for h in history)
                                      / 3600), 2),
        "hardware": f"{get_cpu_info()['brand_raw']}, {last.get('threads', torch.get_num_threads())} threads, "
                    f"{'GPU' if last.get('device') == 'cuda' else 'CPU only'} (torch {torch.__version__})",
        **({"note": note} if note else {}),
    }


def main() -> int:
    """Export, evaluate, compare, calibrate and write the card; exit 0 when shipped, 3 when not better."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder (best.pt, config.json, metrics)")
    parser.add_argument("--name", default="person_detector")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the latency measurement")
    parser.add_argument("--note", default="", help="what the config does not say (e.g. where the weights started)")
    parser.add_argument("--only-if-better", action="store_true", help="ship only if it beats the shipped card")
    parser.add_argument("--input-size", type=int, help="exported square side (default: the run's training side)")
    parser.add_argument("--checkpoint", type=Path, help="weights to ship (default: the run's best.pt); a resume "
                        "point (last.pt, e.g. of a GPU run that had no validation data) ships its moving average")
    args = parser.parse_args()

    config = DetectorConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    side = args.input_size or config.input_size
    checkpoint = args.checkpoint or args.run / "best.pt"
    if not checkpoint.is_file():  # best.pt is written only by an epoch that beat the campaign's best validation
        print(json.dumps({"released": False, "reason": f"no epoch of {args.run} beat the campaign's best"}))
        return 3
    model, extra = load_detector(checkpoint, moving_average=True)
    card_path = ASSETS_DIR / f"{args.name}.json"
    candidate = None  # the validation of these weights, when the comparison measured it
    if args.only_if_better and card_path.is_file():
        with tempfile.TemporaryDirectory(prefix="effpose-release-") as folder:
            candidate = evaluate(export_detector(model, Path(folder) / "candidate.onnx", side), config, args.threads)
        shipped = mean_ap(json.loads(card_path.read_text())["validation"])
        if mean_ap(candidate) <= shipped:
            print(json.dumps({"released": False, "candidate_mean_AP": mean_ap(candidate), "shipped_mean_AP": shipped,
                              "validation": candidate}, indent=2))
            return 3
    onnx_path = export_detector(model, ASSETS_DIR / f"{args.name}.onnx", side, weights="trained")
    parity = check_detector_parity(model, onnx_path, side)
    stats = measure_complexity(model, (side, side))
    card = {
        "name": args.name,
        "model": f"CenterNet-style person detector on the EfficientPose-{model.genotype.name} trunk",
        "effpose_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"width": side, "height": side, "format": "letterboxed RGB 0-1", "trained_at": config.input_size},
        "params": stats.params,
        "macs": stats.macs,
        "training": training_summary(config, campaign_history(args.run), extra["epoch"], args.note),
        "validation": candidate or evaluate(onnx_path, config, args.threads),
        "latency_threads": args.threads,
    }
    write_card(args.name, card, onnx_path, parity, f"effpose eval-detector --model effpose/assets/{onnx_path.name} "
               "--annotations $EFFPOSE_DATA/<annotations> --images $EFFPOSE_DATA/<images> --json")
    if config.val:
        annotations, images = config.val[0].paths()
        threshold, calibration = calibrate_detector(OnnxDetector(onnx_path), annotations, images,
                                                    config.val[0].annotations)
        write_score_threshold(onnx_path, threshold, calibration)
    print(json.dumps(card["validation"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
