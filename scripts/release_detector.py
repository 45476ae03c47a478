"""Ship a person-detector training run: export its best checkpoint into the package and write its model card.

    python scripts/release_detector.py --run runs/person_detector [--name person_detector] [--note TEXT]

Exports ``best.pt`` to ``effpose/assets/NAME.onnx`` (parity-checked against torch), evaluates that ONNX file on every
validation set of the run's config through the service's detector adapter (the code of ``effpose eval-detector``),
and writes ``effpose/assets/NAME.json``: data, recipe, epochs, wall time, hardware, params, MACs and the measured
box AP / AP50 / AR and latency. ``effpose eval-detector`` on the shipped file reproduces the card's numbers.
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
from effpose.detection.config import DetectorConfig
from effpose.detection.export import check_detector_parity, export_detector
from effpose.detection.model import load_detector
from effpose.detectors import OnnxYoloDetector
from effpose.evaluation.detection import evaluate_detector
from effpose.machine import cpu_model
from effpose.model import measure_complexity

CARD_METRICS = ("AP", "AP50", "AP75", "AR", "ms_median", "ms_p90")


def main() -> None:
    """Export, evaluate and write the card."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run folder (best.pt, config.json, metrics)")
    parser.add_argument("--name", default="person_detector")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the latency measurement")
    parser.add_argument("--note", default="", help="what the config does not say (e.g. a schedule changed on resume)")
    args = parser.parse_args()

    config = DetectorConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    history = read_history(args.run)
    model, extra = load_detector(args.run / "best.pt")
    onnx_path = export_detector(model, ASSETS_DIR / f"{args.name}.onnx", config.input_size, weights="trained")
    parity = check_detector_parity(model, onnx_path, config.input_size)
    stats = measure_complexity(model, (config.input_size, config.input_size))
    detector = OnnxYoloDetector(onnx_path, intra_op_threads=args.threads)
    validation = {}
    for source in config.val:
        annotations, images = source.paths()
        report = evaluate_detector(detector, annotations, images)
        validation[source.name] = {name: round(float(report[name]), 4) for name in CARD_METRICS}
        validation[source.name]["annotations"] = source.annotations
    recipe = {key: value for key, value in config.to_dict().items() if key not in ("train", "val", "out_dir")}
    card = {
        "name": args.name,
        "model": f"CenterNet-style person detector on the EfficientPose-{model.genotype.name} trunk",
        "effpose_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"width": config.input_size, "height": config.input_size, "format": "letterboxed RGB 0-1"},
        "params": stats.params,
        "macs": stats.macs,
        "training": {
            "data": [{"name": s.name, "annotations": s.annotations, "boxes": s.boxes, "teacher": s.teacher,
                      "teacher_threshold": s.teacher_threshold, "ratio": s.ratio} for s in config.train],
            "teacher": "YOLOX-nano (../shared/data/models/yolox_nano) through effpose detect, score >= 0.3 kept in "
                       "the pseudo-box files",
            "recipe": recipe,
            "best_epoch": extra["epoch"],
            "epochs_run": len(history),
            "samples_seen": config.samples_per_epoch * len(history),
            "train_hours": round(sum(h["train_seconds"] + h["val_seconds"] for h in history) / 3600, 2),
            "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads, CPU only (torch {torch.__version__})",
            **({"note": args.note} if args.note else {}),
        },
        "validation": validation,
        "latency_threads": args.threads,
    }
    write_card(args.name, card, onnx_path, parity, f"effpose eval-detector --model effpose/assets/{onnx_path.name} "
               "--annotations $EFFPOSE_DATA/<annotations> --images $EFFPOSE_DATA/<images> --json")
    print(json.dumps(card["validation"], indent=2))


if __name__ == "__main__":
    main()
