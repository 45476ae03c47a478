"""Evaluation commands: ``eval`` (keypoint AP/AR and PCK of a pose model), ``eval-detector`` (person box AP and
latency) and ``calibrate-detector`` (a detector's default score threshold)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from effpose.cli.options import add_detector_arguments, open_detector


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate and print the table (or JSON); exit code 2 when an input file or folder is missing."""
    inputs = [("model", args.model, Path.is_file), ("annotation file", args.annotations, Path.is_file),
              ("image folder", args.images, Path.is_dir)]
    if args.boxes != "gt":
        inputs.append(("detections file", Path(args.boxes), Path.is_file))
    missing = [f"{what} not found: {path}" for what, path, exists in inputs if not exists(path)]
    if missing:
        print("error: " + "; ".join(missing), file=sys.stderr)
        return 2

    from effpose.evaluation.runner import evaluate, load_estimator

    estimator = load_estimator(args.model, decode=args.decode, flip=args.flip, threads=args.threads,
                               providers=args.providers)
    if estimator.info.weights != "trained":
        print(f"warning: {estimator.info.name} has {estimator.info.weights} weights; its scores are meaningless",
              file=sys.stderr)
    report = evaluate(estimator, args.annotations, args.images, boxes=args.boxes, flip=args.flip,
                      batch_size=args.batch_size, progress=sys.stderr.isatty(), drop_pseudo=not args.keep_pseudo,
                      box_score_threshold=args.box_score_threshold)
    if args.results_out is not None:
        args.results_out.write_text(json.dumps(report.results))
    if not args.json:
        print(report.to_table())
        return 0
    print(json.dumps({
        **report.to_json(),
        "model": {"path": str(args.model), "name": estimator.info.name, "version": estimator.info.version,
                  "weights": estimator.info.weights},
        "options": {"annotations": str(args.annotations), "images": str(args.images), "boxes": args.boxes,
                    "box_score_threshold": args.box_score_threshold, "flip": args.flip, "decode": args.decode,
                    "providers": args.providers, "threads": args.threads, "batch_size": args.batch_size,
                    "drop_pseudo": not args.keep_pseudo},
    }, indent=2))
    return 0


def cmd_eval_detector(args: argparse.Namespace) -> int:
    """Print person box AP/AR and latency (table or JSON)."""
    from effpose.evaluation.detection import BOX_METRIC_NAMES, evaluate_detector

    report = evaluate_detector(open_detector(args), args.annotations, args.images, args.threshold,
                               args.max_detections, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['detector']}: {report['num_images']} images, {report['num_detections']} detections")
    for name in (*BOX_METRIC_NAMES, "ms_median", "ms_p90"):
        print(f"{name:<12}{report[name]:>8.4f}" if name in BOX_METRIC_NAMES else f"{name:<12}{report[name]:>8.1f}")
    return 0


def data_relative(path: Path) -> str:
    """``path`` relative to the data root ($EFFPOSE_DATA) when it lies inside it, else as given."""
    from effpose.data.sources import data_root

    try:
        return str(path.resolve().relative_to(data_root().resolve()))
    except ValueError:
        return str(path)


def cmd_calibrate_detector(args: argparse.Namespace) -> int:
    """Print the max-F1 threshold with its precision / recall (and the uncalibrated default's); --write stores it."""
    from effpose.evaluation.detection import calibrate_detector

    threshold, report = calibrate_detector(open_detector(args), args.annotations, args.images,
                                           data_relative(args.annotations), args.max_detections,
                                           progress=sys.stderr.isatty())
    if args.write:
        from effpose.detectors.onnx_detector import write_score_threshold

        write_score_threshold(args.model, threshold, report)
    print(json.dumps(report, indent=2))
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``eval``, ``eval-detector`` and ``calibrate-detector`` on ``parser.add_subparsers()``."""
    evaluate = subparsers.add_parser(
        "eval", help="COCO keypoint AP/AR and PCK@0.2 of a model on a COCO-format keypoint set",
        description="Run a pose model (ONNX, or a checkpoint exported on the fly) on every person of a "
                    "COCO-format keypoint set and print COCO keypoint AP/AR and PCK@0.2.")
    evaluate.add_argument("--model", type=Path, required=True, help="pose model: .onnx, or a .pt/.pth checkpoint")
    evaluate.add_argument("--annotations", type=Path, required=True, help="COCO person-keypoints JSON")
    evaluate.add_argument("--images", type=Path, required=True, help="folder the images' file_name is relative to")
    evaluate.add_argument("--boxes", default="gt",
                          help="gt (GT person boxes, default) or a COCO detection results JSON")
    evaluate.add_argument("--box-score-threshold", type=float, default=0.0, help="drop detections scoring lower")
    evaluate.add_argument("--flip", action="store_true", help="flip test (average with the mirrored crop)")
    evaluate.add_argument("--decode", choices=("quarter", "dark"),
                          help="sub-pixel refinement (default: the model's own, from its ONNX metadata)")
    evaluate.add_argument("--providers", default="cpu", help="cpu, cuda or auto")
    evaluate.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    evaluate.add_argument("--batch-size", type=int, default=32, help="crops per inference batch")
    evaluate.add_argument("--keep-pseudo", action="store_true", help="score pseudo-labelled GT keypoints too")
    evaluate.add_argument("--results-out", type=Path, help="also write the COCO keypoint results JSON here")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    evaluate.set_defaults(func=cmd_eval)

    detector = subparsers.add_parser(
        "eval-detector", help="person box AP / AP50 / AR (pycocotools) and latency of a detector",
        description="COCO person box AP/AR of a detector on a COCO-format set, and its ms per image "
                    "(pre- and post-processing included).")
    add_detector_arguments(detector)
    detector.add_argument("--threshold", type=float, default=0.01, help="score threshold (low, for AP)")
    detector.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    detector.set_defaults(func=cmd_eval_detector)

    calibrate = subparsers.add_parser(
        "calibrate-detector", help="choose a detector's default score threshold (max box F1) on a validation set",
        description="Detect every image of a COCO-format set at a low threshold, pick the score threshold of maximal "
                    "box F1 (IoU 0.5 against the non-crowd person boxes) and, with --write, store it in the model's "
                    "ONNX metadata (and its card beside it), where the service, predict and eval read it.")
    add_detector_arguments(calibrate)
    calibrate.add_argument("--write", action="store_true", help="store the threshold in the model (and its card)")
    calibrate.set_defaults(func=cmd_calibrate_detector)
