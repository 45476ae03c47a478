"""Model commands: ``info`` (parameters and MACs), ``export`` and ``export-detector`` (ONNX with a parity check) and
``quantize`` (INT8)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from effpose.cli.options import parse_input_size
from effpose.contract import DEFAULT_INPUT_SIZE


def cmd_info(args: argparse.Namespace) -> int:
    """Print parameters and multiply-accumulates of an architecture as JSON."""
    from effpose.model import build_model, measure_complexity

    model = build_model(args.arch, num_joints=args.joints)
    stats = measure_complexity(model, args.input)
    print(json.dumps({
        "arch": args.arch,
        "name": model.genotype.name,
        "input": {"height": args.input[1], "width": args.input[0]},
        "num_joints": args.joints,
        "params": stats.params,
        "macs": stats.macs,
        "gmacs": round(stats.macs / 1e9, 4),
        "genotype": model.genotype.to_dict(),
    }, indent=2))
    return 0


def exported_average(extra: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether an export took the checkpoint's moving average of the weights (see :func:`add_weights_option`)."""
    return "ema" in extra and not args.raw_weights


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    """``--raw-weights``: of a checkpoint that holds the weights and their moving average (a resume point, last.pt,
    of a run with ema_decay > 0), export the raw weights instead of the average that training validates."""
    parser.add_argument("--raw-weights", action="store_true",
                        help="export a resume point's raw weights, not their moving average (the default: what "
                             "training validated; best.pt holds only that)")


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint (or, explicitly, random weights) to ONNX and check parity with torch."""
    from effpose.export import check_parity, export_onnx
    from effpose.model import build_model, load_checkpoint

    if args.checkpoint is None and not args.random_weights:
        print("error: pass --checkpoint FILE (or --random-weights for an untrained test model)", file=sys.stderr)
        return 2
    trained_size = None
    if args.checkpoint is not None:
        model, extra = load_checkpoint(args.checkpoint, arch=args.arch, moving_average=not args.raw_weights)
        trained_size = (extra.get("train_config") or {}).get("input_size")
        weights = "trained"
    else:
        model, extra = build_model(args.arch or "A", num_joints=args.joints), {}
        weights = "random-init"
    input_size = args.input or (tuple(trained_size) if trained_size else DEFAULT_INPUT_SIZE)
    path = export_onnx(model, args.out, input_size, weights=weights)
    diff = check_parity(model, path, input_size)
    print(json.dumps({"out": str(path), "weights": weights, "moving_average": exported_average(extra, args),
                      "input_size": list(input_size), "parity_max_abs_diff": diff}))
    return 0


def cmd_export_detector(args: argparse.Namespace) -> int:
    """Export a detector checkpoint (or, explicitly, random weights) to ONNX and check parity with torch."""
    from effpose.detector_training.export import check_detector_parity, export_detector
    from effpose.detector_training.model import build_centernet, load_detector

    if (args.checkpoint is None) == (not args.random_weights):
        print("error: pass --checkpoint FILE or --random-weights (an untrained test model), not both",
              file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        model, extra = load_detector(args.checkpoint, moving_average=not args.raw_weights)
        trained_size = extra.get("train_config", {}).get("input_size")
        weights = "trained"
    else:
        model, extra, trained_size, weights = build_centernet(args.arch), {}, None, "random"
    input_size = args.input or trained_size or 320
    path = export_detector(model, args.out, input_size, weights=weights)
    diff = check_detector_parity(model, path, input_size)
    print(json.dumps({"out": str(path), "weights": weights, "moving_average": exported_average(extra, args),
                      "input_size": [input_size, input_size], "parity_max_abs_diff": diff}))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a pose model or person detector to INT8 (QDQ), calibrated on a COCO-format set; print the report."""
    from effpose.quantize import quantize_model

    report = quantize_model(args.model, args.out, args.calibration_annotations, args.calibration_images,
                            method=args.method, count=args.crops, exclude=args.exclude,
                            keep_output_layers_fp32=not args.quantize_output_layers,
                            activation_type=args.activation_type, equalize=not args.no_equalize,
                            reduce_range=not args.full_range_weights)
    print(json.dumps(report.to_json(), indent=2))
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``info``, ``export``, ``export-detector`` and ``quantize`` on ``parser.add_subparsers()``."""
    info = subparsers.add_parser("info", help="parameters and MACs of an architecture (JSON)")
    info.add_argument("--arch", default="A", help="A, B, C, mbv2 or a genotype JSON file")
    info.add_argument("--input", type=parse_input_size, default=DEFAULT_INPUT_SIZE,
                      help="HEIGHTxWIDTH, default 256x192")
    info.add_argument("--joints", type=int, default=17)
    info.set_defaults(func=cmd_info)

    export = subparsers.add_parser("export", help="export a checkpoint to ONNX (dynamic batch) with a parity check")
    export.add_argument("--arch", default=None,
                        help="A, B, C, mbv2 or genotype JSON (default: the checkpoint's own, else A)")
    export.add_argument("--checkpoint", type=Path, help="checkpoint written by training")
    export.add_argument("--random-weights", action="store_true", help="export an untrained model (tests only)")
    export.add_argument("--input", type=parse_input_size,
                        help="HEIGHTxWIDTH (default: the checkpoint's training size, else 256x192)")
    export.add_argument("--joints", type=int, default=17, help="joints of a --random-weights model")
    export.add_argument("--out", type=Path, required=True)
    add_weights_option(export)
    export.set_defaults(func=cmd_export)

    export_det = subparsers.add_parser("export-detector",
                                       help="export a detector checkpoint to ONNX with a parity check")
    export_det.add_argument("--checkpoint", type=Path, help="checkpoint written by train-detector")
    export_det.add_argument("--random-weights", action="store_true", help="export an untrained model (tests only)")
    export_det.add_argument("--arch", default="A", help="trunk genotype of a --random-weights model")
    export_det.add_argument("--input", type=int, help="square input side S (default: the training size, else 320)")
    export_det.add_argument("--out", type=Path, required=True)
    add_weights_option(export_det)
    export_det.set_defaults(func=cmd_export_detector)

    quantize = subparsers.add_parser(
        "quantize", help="INT8 static quantization (ONNX Runtime QDQ) of a pose model or person detector",
        description="Calibrate on person crops (pose model) or letterboxed whole images (detector) of a COCO-format "
                    "set, prepared as inference prepares them, and write an INT8 QDQ model carrying the original's "
                    "metadata. The runtime and the service load it like any other model.")
    quantize.add_argument("--model", type=Path, required=True, help="fp32 ONNX: pose model or person detector")
    quantize.add_argument("--calibration-annotations", type=Path, required=True,
                          help="COCO-format JSON (persons for a pose model, images for a detector)")
    quantize.add_argument("--calibration-images", type=Path, required=True,
                          help="folder the images' file_name is relative to")
    quantize.add_argument("--out", type=Path, required=True, help="INT8 ONNX to write")
    quantize.add_argument("--method", choices=("entropy", "percentile", "minmax"), default="percentile",
                          help="activation range calibration (default percentile: the closest to fp32 measured)")
    quantize.add_argument("--crops", type=int, default=300,
                          help="calibration samples: person crops, or images for a detector (default 300)")
    quantize.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                          help="activation type (default uint8: U8S8, the fast kernels on AVX2)")
    quantize.add_argument("--full-range-weights", action="store_true",
                          help="8-bit weights instead of the default 7-bit ones: only for CPUs with VNNI (on AVX2 "
                               "without it, full-range weights saturate ONNX Runtime's U8S8 kernels)")
    quantize.add_argument("--exclude", nargs="+", default=[], metavar="NODE",
                          help="more node names to keep float32 (as listed in the report)")
    quantize.add_argument("--no-equalize", action="store_true",
                          help="skip cross-layer equalization of Conv -> Relu -> Conv channel ranges")
    quantize.add_argument("--quantize-output-layers", action="store_true",
                          help="quantize the output layers too (kept float32 by default)")
    quantize.set_defaults(func=cmd_quantize)
