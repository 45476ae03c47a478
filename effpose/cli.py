"""The ``effpose`` command line. Each sub-command imports what it needs, so inference commands never load torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from effpose.contract import DEFAULT_INPUT_SIZE
from effpose.evaluation.cli import add_detector_parsers, add_eval_parser
from effpose.search.space import SEARCH_SPACES


def parse_input_size(text: str) -> tuple[int, int]:
    """Parse "HEIGHTxWIDTH" (the papers' order, e.g. 256x192) into (width, height)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 256x192 (height x width), got {text!r}") from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"input height and width must be positive multiples of 32, got {text!r}")
    return width, height


def parse_duration(text: str) -> float:
    """Parse a time budget such as "150m", "2.5h", "90s" or "45" (minutes) into seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text[-1:].lower() in units else (text, "m")
    try:
        seconds = float(number) * units[unit.lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration looks like 150m, 2h or 90s, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return seconds


def parse_cfg_option(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` config override; the value is JSON when it parses as JSON, else a string."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"a config override looks like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse "x1,y1,x2,y2" in image pixels."""
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box is x1,y1,x2,y2 (four numbers), got {text!r}") from None
    return x1, y1, x2, y2


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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint (or, explicitly, random weights) to ONNX and check parity with torch."""
    from effpose.export import check_parity, export_onnx
    from effpose.model import build_model, load_checkpoint

    if args.checkpoint is None and not args.random_weights:
        print("error: pass --checkpoint FILE (or --random-weights for an untrained test model)", file=sys.stderr)
        return 2
    trained_size = None
    if args.checkpoint is not None:
        model, extra = load_checkpoint(args.checkpoint, arch=args.arch)
        trained_size = (extra.get("train_config") or {}).get("input_size")
        weights = "trained"
    else:
        model = build_model(args.arch or "A", num_joints=args.joints)
        weights = "random-init"
    input_size = args.input or (tuple(trained_size) if trained_size else DEFAULT_INPUT_SIZE)
    path = export_onnx(model, args.out, input_size, weights=weights)
    diff = check_parity(model, path, input_size)
    print(json.dumps({"out": str(path), "weights": weights, "input_size": list(input_size),
                      "parity_max_abs_diff": diff}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Estimate poses in one image and print them as JSON; optionally write the drawn image."""
    import cv2

    from effpose.assets import default_person_detector, default_pose_model
    from effpose.detectors import OnnxDetector
    from effpose.draw import draw_poses
    from effpose.pipeline import TopDownPipeline
    from effpose.runtime import PoseEstimator

    image = cv2.imread(str(args.image), cv2.IMREAD_COLOR)  # applies the EXIF orientation
    if image is None:
        print(f"error: cannot read {args.image} as an image", file=sys.stderr)
        return 2
    height, width = image.shape[:2]
    estimator = PoseEstimator(
        args.model or default_pose_model(), providers=args.providers, intra_op_threads=args.threads,
        decode=args.decode, flip=args.flip,
    )
    if estimator.info.weights != "trained":
        print(f"warning: {estimator.info.name} has {estimator.info.weights} weights; its keypoints are meaningless",
              file=sys.stderr)
    boxes, source, detector = args.box, None, None
    if not args.box and args.whole_image:
        boxes, source = [(0.0, 0.0, float(width), float(height))], "whole_image"
    elif not args.box:
        detector = OnnxDetector(args.detector_model or default_person_detector(), providers=args.providers,
                                    intra_op_threads=args.threads)
    try:
        persons = TopDownPipeline(estimator, detector).estimate(
            image, boxes, det_threshold=args.det_threshold, max_persons=args.max_persons, source=source)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "image": str(args.image),
        "width": width,
        "height": height,
        "model": {"name": estimator.info.name, "version": estimator.info.version, "weights": estimator.info.weights},
        "persons": [p.to_dict(estimator.info.keypoint_names) for p in persons],
    }
    if args.out is not None:
        cv2.imwrite(str(args.out), draw_poses(image, [{"box": p.box, "keypoints": p.keypoints} for p in persons], args.keypoint_threshold))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for index, person in enumerate(result["persons"]):
            confident = sum(k["score"] > args.keypoint_threshold for k in person["keypoints"])
            print(f"person {index}: box {person['box']} score {person['score']:.3f} "
                  f"({confident}/{len(person['keypoints'])} keypoints over {args.keypoint_threshold})")
        if args.out is not None:
            print(f"drawn image: {args.out}")
    return 0


RUN_FLAGS: tuple[str, ...] = ("epochs", "batch_size", "lr", "workers", "samples_per_epoch", "max_steps_per_epoch",
                               "seed", "out_dir")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The training-loop flags that ``train``, ``train-detector`` and ``search`` share (overrides of the config)."""
    parser.add_argument("--epochs", type=int, help="all epochs (warm-up included)")
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float, help="learning rate of the weights")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--samples-per-epoch", type=int)
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke tests)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out-dir", help="checkpoints, config.json, metrics.jsonl and outputs go here")
    parser.add_argument("--resume", type=Path, help="continue from a last.pt")
    parser.add_argument("--stop-after", type=parse_duration, metavar="DURATION",
                        help="time budget, e.g. 150m or 2h: then end cleanly (validate, checkpoint, export)")
    parser.add_argument("--cfg-options", type=parse_cfg_option, nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. loss=fg_mse sigma=3 augment=light (JSON values)")


def run_overrides(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """The config fields the command line sets: :data:`RUN_FLAGS`, ``more`` (those given, not None) and then
    ``--cfg-options``."""
    given = {name: getattr(args, name) for name in RUN_FLAGS} | more
    return {name: value for name, value in given.items() if value is not None} | dict(args.cfg_options)


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` rebuilt with ``overrides`` through its ``from_dict``, which rejects unknown keys."""
    return type(config).from_dict({**config.to_dict(), **overrides})


def cmd_train(args: argparse.Namespace) -> int:
    """Train a pose network from a JSON config, with command-line overrides; works under torchrun."""
    import logging

    from effpose.training.config import TrainConfig
    from effpose.training.trainer import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = run_overrides(args, arch=args.arch if args.genotype is None else str(args.genotype), init=args.init,
                              weight_decay=args.weight_decay, pseudo_weight=args.pseudo_weight, sic=args.sic,
                              input_size=args.input, init_checkpoint=args.init_checkpoint,
                              precise_bn_batches=args.precise_bn_batches)
    config = with_overrides(config, overrides)
    run_training(config, resume=args.resume, stop_after_s=args.stop_after)
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    """Cut a training config's persons into one data pack file (for a machine that gets only the checkout)."""
    from effpose.data import load_person_records
    from effpose.data.pack import write_pack
    from effpose.training.config import TrainConfig

    config = TrainConfig.load(args.config)
    input_size = args.input or config.input_size
    sources = {source.name: load_person_records(*source.paths(), source=source.name) for source in config.train}
    meta = write_pack(sources, args.out, input_size, context=args.context, quality=args.quality)
    size_mib = args.out.stat().st_size / 2**20
    print(json.dumps({"out": str(args.out), "mib": round(size_mib, 2), **meta}))
    if size_mib > args.max_mib:
        print(f"error: the pack is {size_mib:.1f} MiB, over --max-mib {args.max_mib}: lower --quality or --context",
              file=sys.stderr)
        return 1
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Cost-aware architecture search on a training config's data; works under torchrun."""
    import logging

    from effpose.search.searcher import SearchConfig, run_search
    from effpose.training.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = run_overrides(args, space=args.space, cost=args.cost, lut=args.lut, target_cost=args.target_cost,
                              cost_lambda=args.cost_lambda, warmup_epochs=args.warmup_epochs, input_size=args.input,
                              arch_lr=args.arch_lr, init=args.init)
    config = SearchConfig.from_training_config(TrainConfig.load(args.config), **overrides)
    run_search(config, resume=args.resume, stop_after_s=args.stop_after)
    return 0


def cmd_build_lut(args: argparse.Namespace) -> int:
    """Time every candidate op of a search space with ONNX Runtime and write the latency table."""
    from effpose.search.cost import latency_table
    from effpose.search.space import get_space

    table = latency_table(get_space(args.space), args.input, threads=args.threads, providers=args.providers,
                          reps=args.reps, warmup=args.warmup)
    table.save(args.out)
    searched = [cost for layer in table.layers for cost in layer.values() if cost > 0]
    print(json.dumps({"out": str(args.out), "layers": len(table.layers), "fixed_ms": round(table.fixed, 4),
                      "op_ms_min": round(min(searched), 4), "op_ms_max": round(max(searched), 4),
                      "measured_with": table.measured_with}))
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    """Train the person detector from a JSON config, with command-line overrides; works under torchrun."""
    import logging

    from effpose.detector_training.config import DetectorConfig
    from effpose.detector_training.trainer import run_detector_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = DetectorConfig.load(args.config) if args.config else DetectorConfig()
    config = with_overrides(config, run_overrides(args, arch=args.arch, init=args.init, input_size=args.input))
    run_detector_training(config, resume=args.resume, stop_after_s=args.stop_after)
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
        model, extra = load_detector(args.checkpoint)
        trained_size = extra.get("train_config", {}).get("input_size")
        weights = "trained"
    else:
        model, trained_size, weights = build_centernet(args.arch), None, "random"
    input_size = args.input or trained_size or 320
    path = export_detector(model, args.out, input_size, weights=weights)
    diff = check_detector_parity(model, path, input_size)
    print(json.dumps({"out": str(path), "weights": weights, "input_size": [input_size, input_size],
                      "parity_max_abs_diff": diff}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve REST and gRPC; flags override the ``EFFPOSE_*`` environment, which overrides the defaults."""
    from pydantic import ValidationError

    from service.main import main as serve_main
    from service.settings import Settings

    overrides = {"host": args.host, "http_port": args.http_port, "grpc_port": args.grpc_port,
                 "pose_model": args.pose_model, "detector": args.detector, "detector_model": args.detector_model,
                 "threads": args.threads, "providers": args.providers}
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        raise ValueError(f"invalid settings:\n{error}") from error
    serve_main(settings)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a pose model or person detector to INT8 (QDQ), calibrated on a COCO-format set; print the report."""
    from effpose.quantize import quantize_model

    report = quantize_model(args.model, args.out, args.calibration_annotations, args.calibration_images,
                            method=args.method, count=args.crops, exclude=args.exclude,
                            keep_output_layers_fp32=not args.quantize_output_layers,
                            activation_type=args.activation_type, equalize=not args.no_equalize)
    print(json.dumps(report.to_json(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="effpose", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="parameters and MACs of an architecture (JSON)")
    info.add_argument("--arch", default="A", help="A, B, C, mbv2 or a genotype JSON file")
    info.add_argument("--input", type=parse_input_size, default=DEFAULT_INPUT_SIZE, help="HEIGHTxWIDTH, default 256x192")
    info.add_argument("--joints", type=int, default=17)
    info.set_defaults(func=cmd_info)

    export = commands.add_parser("export", help="export a checkpoint to ONNX (dynamic batch) with a parity check")
    export.add_argument("--arch", default=None, help="A, B, C, mbv2 or genotype JSON (default: the checkpoint's own, else A)")
    export.add_argument("--checkpoint", type=Path, help="checkpoint written by training")
    export.add_argument("--random-weights", action="store_true", help="export an untrained model (tests only)")
    export.add_argument("--input", type=parse_input_size,
                        help="HEIGHTxWIDTH (default: the checkpoint's training size, else 256x192)")
    export.add_argument("--joints", type=int, default=17, help="joints of a --random-weights model")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=cmd_export)

    add_eval_parser(commands)
    add_detector_parsers(commands)

    train = commands.add_parser("train", help="train a pose network (also under torchrun)")
    train.add_argument("--config", type=Path, help="JSON training config (see configs/)")
    train.add_argument("--arch", help="override: A, B, C, mbv2")
    train.add_argument("--genotype", type=Path, help="override: a genotype JSON written by the search")
    train.add_argument("--init", choices=("scratch", "lite0"), help="override: scratch or FNA-remapped ImageNet seed")
    train.add_argument("--init-checkpoint", help="override: start from these weights (e.g. a lower-resolution run)")
    train.add_argument("--input", type=parse_input_size, help="override: HEIGHTxWIDTH crop size")
    train.add_argument("--precise-bn-batches", type=int, help="override: BN re-estimation batches before validation")
    train.add_argument("--weight-decay", type=float, help="override: AdamW's decoupled decay of the conv weights")
    train.add_argument("--pseudo-weight", type=float, help="loss weight of pseudo-labelled keypoints")
    train.add_argument("--sic", action=argparse.BooleanOptionalAction, default=None, help="spatial info correction")
    add_run_arguments(train)
    train.set_defaults(func=cmd_train)

    data = commands.add_parser("data", help="training data tools").add_subparsers(dest="data_command", required=True)
    pack = data.add_parser("pack", help="cut a config's training persons (with context) into one small file")
    pack.add_argument("--config", type=Path, required=True, help="training config whose train sources are packed")
    pack.add_argument("--out", type=Path, required=True, help="the pack (.npz); train with --cfg-options pack=FILE")
    pack.add_argument("--input", type=parse_input_size, help="HEIGHTxWIDTH the crops are sized for (default: "
                      "the config's)")
    pack.add_argument("--context", type=float, default=1.35, help="crop side / padded box diagonal (augmentation room)")
    pack.add_argument("--quality", type=int, default=80, help="WebP quality, 1-100")
    pack.add_argument("--max-mib", type=float, default=48.0, help="fail when the pack is larger")
    pack.set_defaults(func=cmd_data_pack)

    search = commands.add_parser("search", help="cost-aware architecture search (FNA); also under torchrun",
                                 description="Search one op per layer of a search space on a training config's "
                                 "data; writes genotype.json (for effpose train --genotype), alphas.json, "
                                 "architecture.svg, metrics.jsonl and last.pt to --out-dir.")
    search.add_argument("--space", choices=sorted(SEARCH_SPACES), help="A (EfficientPose-A layout, default) or large "
                        "(B/C layout)")
    search.add_argument("--cost", choices=("macs", "latency"), help="cost table: MACs (default) or a latency --lut")
    search.add_argument("--lut", help="latency table from effpose build-lut (with --cost latency)")
    search.add_argument("--target-cost", type=float, help="budget in the table's unit: no cost pressure below it")
    search.add_argument("--lambda", dest="cost_lambda", type=float, help="weight of the log cost term")
    search.add_argument("--config", type=Path, default=Path("configs/efficientpose_a_coco17.json"),
                        help="training config whose data is searched on (sources, crop size, sigma, augmentation)")
    search.add_argument("--input", type=parse_input_size, help="override: HEIGHTxWIDTH crop size")
    search.add_argument("--warmup-epochs", type=int, help="epochs of uniform paths, no architecture updates")
    search.add_argument("--arch-lr", type=float, help="alphas' learning rate")
    search.add_argument("--init", choices=("scratch", "lite0"), help="scratch (default) or FNA-remapped ImageNet seed")
    add_run_arguments(search)
    search.set_defaults(func=cmd_search)

    lut = commands.add_parser("build-lut", help="latency lookup table for effpose search --cost latency",
                              description="Export every candidate op of a search space at its layer's shape to "
                              "ONNX and time it with ONNX Runtime (batch 1, median of --reps runs).")
    lut.add_argument("--space", choices=sorted(SEARCH_SPACES), default="A", help="the space to be searched")
    lut.add_argument("--input", type=parse_input_size, default=DEFAULT_INPUT_SIZE,
                     help="HEIGHTxWIDTH, default 256x192: the search's crop size")
    lut.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (the service's)")
    lut.add_argument("--providers", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime execution provider")
    lut.add_argument("--reps", type=int, default=20, help="timed runs per op")
    lut.add_argument("--warmup", type=int, default=5, help="untimed runs per op first")
    lut.add_argument("--out", type=Path, required=True, help="the table (JSON) for effpose search --lut")
    lut.set_defaults(func=cmd_build_lut)

    detector = commands.add_parser("train-detector", help="train the person detector (also under torchrun)")
    detector.add_argument("--config", type=Path, help="JSON detector config (configs/person_detector.json)")
    detector.add_argument("--arch", help="override: trunk genotype (A, B, C, mbv2 or a genotype JSON)")
    detector.add_argument("--init", choices=("scratch", "lite0"), help="override: scratch or FNA-remapped ImageNet seed")
    detector.add_argument("--input", type=int, help="override: square input side S (multiple of 32)")
    add_run_arguments(detector)
    detector.set_defaults(func=cmd_train_detector)

    export_det = commands.add_parser("export-detector", help="export a detector checkpoint to ONNX with a parity check")
    export_det.add_argument("--checkpoint", type=Path, help="checkpoint written by train-detector")
    export_det.add_argument("--random-weights", action="store_true", help="export an untrained model (tests only)")
    export_det.add_argument("--arch", default="A", help="trunk genotype of a --random-weights model")
    export_det.add_argument("--input", type=int, help="square input side S (default: the training size, else 320)")
    export_det.add_argument("--out", type=Path, required=True)
    export_det.set_defaults(func=cmd_export_detector)

    quantize = commands.add_parser(
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
    quantize.add_argument("--exclude", nargs="+", default=[], metavar="NODE",
                          help="more node names to keep float32 (as listed in the report)")
    quantize.add_argument("--no-equalize", action="store_true",
                          help="skip cross-layer equalization of Conv -> Relu -> Conv channel ranges")
    quantize.add_argument("--quantize-output-layers", action="store_true",
                          help="quantize the output layers too (kept float32 by default)")
    quantize.set_defaults(func=cmd_quantize)

    predict = commands.add_parser("predict", help="poses in one image: JSON and a drawn image")
    predict.add_argument("image", type=Path)
    predict.add_argument("--model", type=Path, help="pose model ONNX (default: the shipped model)")
    predict.add_argument("--box", type=parse_box, action="append", help="person box x1,y1,x2,y2 (repeatable); "
                         "default: the people the person detector finds")
    predict.add_argument("--detector-model", type=Path,
                         help="person detector ONNX: own, YOLOX or YOLOv8 layout (default: the shipped detector)")
    predict.add_argument("--whole-image", action="store_true", help="no detector: the whole image is one person")
    predict.add_argument("--det-threshold", type=float, help="detector score threshold (default: the detector's "
                         "calibrated one)")
    predict.add_argument("--max-persons", type=int, default=20, help="at most this many detected persons")
    predict.add_argument("--out", type=Path, help="write the image with skeletons drawn")
    predict.add_argument("--json", action="store_true", help="print the result as JSON")
    predict.add_argument("--flip", action="store_true", help="flip test (average with the mirrored crop)")
    predict.add_argument("--decode", choices=("quarter", "dark"), default="quarter", help="sub-pixel refinement")
    predict.add_argument("--keypoint-threshold", type=float, default=0.3, help="only for drawing and the summary")
    predict.add_argument("--providers", default="cpu", help="cpu, cuda or auto")
    predict.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    predict.set_defaults(func=cmd_predict)

    serve = commands.add_parser("serve", help="run the REST + gRPC service (settings: EFFPOSE_* variables)")
    serve.add_argument("--host", help="bind address (EFFPOSE_HOST, default 0.0.0.0)")
    serve.add_argument("--http-port", type=int, help="EFFPOSE_HTTP_PORT, default 8080")
    serve.add_argument("--grpc-port", type=int, help="EFFPOSE_GRPC_PORT, default 50051")
    serve.add_argument("--pose-model", type=Path, help="EFFPOSE_POSE_MODEL, default the shipped model")
    serve.add_argument("--detector", choices=("auto", "onnx", "whole-image"), help="EFFPOSE_DETECTOR")
    serve.add_argument("--detector-model", type=Path,
                       help="EFFPOSE_DETECTOR_MODEL: own, YOLOX or YOLOv8-style ONNX (default: the shipped detector)")
    serve.add_argument("--threads", type=int, help="EFFPOSE_THREADS: ONNX Runtime threads (default: CPU quota)")
    serve.add_argument("--providers", help="EFFPOSE_PROVIDERS: cpu, cuda or auto")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``effpose`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
