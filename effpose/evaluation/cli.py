"""The ``effpose eval`` sub-command. ``effpose.cli`` registers it with :func:`add_eval_parser`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the sub-parsers object of ``argparse`` (``parser.add_subparsers()``)."""
    parser = subparsers.add_parser(
        "eval", help="COCO keypoint AP/AR and PCK@0.2 of a model on a COCO-format keypoint set",
        description="Run a pose model (ONNX, or a checkpoint exported on the fly) on every person of a "
                    "COCO-format keypoint set and print COCO keypoint AP/AR and PCK@0.2.",
    )
    parser.add_argument("--model", type=Path, required=True, help="pose model: .onnx, or a .pt/.pth checkpoint")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO person-keypoints JSON")
    parser.add_argument("--images", type=Path, required=True, help="folder the images' file_name is relative to")
    parser.add_argument("--boxes", default="gt", help="gt (GT person boxes, default) or a COCO detection results JSON")
    parser.add_argument("--box-score-threshold", type=float, default=0.0, help="drop detections scoring lower")
    parser.add_argument("--flip", action="store_true", help="flip test (average with the mirrored crop)")
    parser.add_argument("--decode", choices=("quarter", "dark"), default="quarter", help="sub-pixel refinement")
    parser.add_argument("--providers", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per inference batch")
    parser.add_argument("--keep-pseudo", action="store_true", help="score pseudo-labelled GT keypoints too")
    parser.add_argument("--results-out", type=Path, help="also write the COCO keypoint results JSON here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=cmd_eval)
    return parser


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
