"""Inference commands: ``predict`` (poses in one image), ``detect`` (a person detector over an image set) and
``serve`` (the REST + gRPC service). ``predict`` and ``serve`` run without torch (the serving install)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from effpose.cli.options import add_detector_arguments, open_detector, parse_box


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
        drawn = draw_poses(image, [{"box": p.box, "keypoints": p.keypoints} for p in persons], args.keypoint_threshold)
        cv2.imwrite(str(args.out), drawn)
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


def cmd_detect(args: argparse.Namespace) -> int:
    """Write the detections of every listed image as COCO results."""
    from effpose.evaluation.detection import detect_images

    run = detect_images(open_detector(args), args.annotations, args.images, args.threshold, args.max_detections,
                        progress=sys.stderr.isatty())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run.results))
    print(f"{len(run.results)} detections in {run.num_images} images -> {args.out} "
          f"({run.latency()['ms_median']:.1f} ms per image)")
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


def add_parsers(subparsers: Any) -> None:
    """Register ``predict``, ``detect`` and ``serve`` on ``parser.add_subparsers()``."""
    predict = subparsers.add_parser("predict", help="poses in one image: JSON and a drawn image")
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
    predict.add_argument("--decode", choices=("quarter", "dark"),
                         help="sub-pixel refinement (default: the model's own, from its ONNX metadata)")
    predict.add_argument("--keypoint-threshold", type=float, default=0.3, help="only for drawing and the summary")
    predict.add_argument("--providers", default="cpu", help="cpu, cuda or auto")
    predict.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    predict.set_defaults(func=cmd_predict)

    detect = subparsers.add_parser(
        "detect", help="run a person detector over a COCO-format image set and write COCO detection results",
        description="Detections of every image of an annotation file as a COCO results JSON: pseudo-boxes for "
                    "detector training, or boxes for `effpose eval --boxes`.")
    add_detector_arguments(detect)
    detect.add_argument("--threshold", type=float, default=0.3, help="keep detections scoring at least this")
    detect.add_argument("--out", type=Path, required=True, help="COCO results JSON to write")
    detect.set_defaults(func=cmd_detect)

    serve = subparsers.add_parser("serve", help="run the REST + gRPC service (settings: EFFPOSE_* variables)")
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
