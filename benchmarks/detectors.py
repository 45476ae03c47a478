"""Person detectors on the shared COCO validation split: our shipped detector vs the YOLOX-nano teacher, in one run.

    python benchmarks/detectors.py [--own effpose/assets/person_detector.onnx [OTHER.onnx ...]] [--teacher PATH]
                                   [--threads N] [--pose-model PATH] [--pose-threshold 0.05]
                                   [--out benchmarks/results/detectors.json]

For each detector: person box AP / AP50 / AP75 / AP of medium and large persons / AR (pycocotools, detections from
score 0.01, at most 100 per image; AP75 against AP50 shows how well boxes fit, the split has no small persons) and
milliseconds per image (``detect()`` wall time, pre- and post-processing included, median and p90), both through
the service's detector adapter; and at the detector's default (calibrated) threshold, the persons it finds (IoU >= 0.5,
one detection per person): over the split, by person height, and in the photos of at least 8 annotated persons.
Then end to end: the shipped pose model (no flip) evaluated as ``effpose eval --boxes`` does, on each detector's
boxes (score >= --pose-threshold, at most 20 per image, the service's default cap) and on the ground-truth boxes.
The detectors run one after the other with the same ONNX Runtime thread count. Beside them, the pose model's time
per person crop (crop, network and decoding of one crop at a time, median over the ground-truth persons), the cost
each detected person adds to an image's detector time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from effpose.assets import DEFAULT_PERSON_DETECTOR, default_pose_model
from effpose.data.coco import is_scored_person, read_coco_json, xywh_to_xyxy
from effpose.data.dataset import read_image
from effpose.detectors import OnnxDetector
from effpose.evaluation import evaluate, load_estimator
from effpose.evaluation.detection import coco_box_ap, detect_images, person_boxes, persons_found
from effpose.runtime import PoseEstimator

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("EFFPOSE_DATA", REPO.parent / "shared" / "data"))
ANNOTATIONS = "coco/annotations/person_keypoints_val.json"
IMAGES = "coco/images"
POSE_METRICS = ("AP", "AP50", "AP75", "AR")
MAX_PERSONS = 20
CROWDED = 8  # a crowded photo has at least this many annotated persons
HEIGHT_BINS = ((0, 64), (64, 128), (128, 256), (256, np.inf))  # person box heights (pixels) for recall


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--own", type=Path, nargs="+", default=[DEFAULT_PERSON_DETECTOR],
                        help="our detector ONNX file(s), each measured in the same run")
    parser.add_argument("--teacher", type=Path, default=DATA / "models" / "yolox_nano" / "yolox_nano.onnx")
    parser.add_argument("--pose-model", type=Path, default=None, help="pose ONNX (default: the shipped model)")
    parser.add_argument("--pose-threshold", type=float, default=0.05, help="box score threshold for pose eval")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "detectors.json")
    return parser.parse_args()


def pose_metrics(pose_model: Path, boxes: str | Path, threads: int) -> dict[str, float]:
    """``effpose eval`` of the pose model on the COCO val split with ``boxes`` ("gt" or a results file)."""
    estimator = load_estimator(pose_model, threads=threads)  # decoded as the model states
    report = evaluate(estimator, DATA / ANNOTATIONS, DATA / IMAGES, boxes=boxes, flip=False)
    return {name: round(float(report.metrics[name]), 4) for name in POSE_METRICS}


def pose_ms_per_crop(pose_model: Path, threads: int, max_crops: int = 100) -> float:
    """Median wall time in ms of one person crop through the pose model (crop, network, decoding), over the first
    ``max_crops`` ground-truth persons of the val split, after one warm-up crop."""
    estimator = PoseEstimator(pose_model, intra_op_threads=threads)
    gt = read_coco_json(DATA / ANNOTATIONS)
    files = {image["id"]: image["file_name"] for image in gt["images"]}
    persons = [(files[a["image_id"]], box) for a in gt["annotations"]
               if is_scored_person(a) and (box := xywh_to_xyxy(a["bbox"])) is not None]
    images: dict[str, np.ndarray] = {}
    milliseconds = []
    for file_name, box in [persons[0], *persons[:max_crops]]:
        image = images.setdefault(file_name, read_image(DATA / IMAGES / file_name))
        started = time.perf_counter()
        crops = estimator.prepare(image, [box])
        estimator.decode(estimator.run(crops.tensor), crops.matrices)
        milliseconds.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(milliseconds[1:]))


def strongest(results: list[dict[str, Any]], threshold: float, per_image: int) -> list[dict[str, Any]]:
    """The detections scoring at least ``threshold``, at most ``per_image`` best ones per image (as the service)."""
    counts: Counter[int] = Counter()
    kept = []
    for result in sorted(results, key=lambda r: -r["score"]):
        if result["score"] >= threshold and counts[result["image_id"]] < per_image:
            counts[result["image_id"]] += 1
            kept.append(result)
    return kept


def found_by_default(gt: dict[str, Any], results: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Persons found (IoU >= 0.5) at the detector's default threshold, what a user gets without tuning: over the
    whole split, by person height (pixels), and on each crowded photo (at least :data:`CROWDED` persons)."""
    found = persons_found(gt, results, threshold)
    heights = {image: boxes[:, 3] - boxes[:, 1] for image, boxes in person_boxes(gt).items()}
    flags = np.concatenate(list(found.values()))
    person_heights = np.concatenate([heights[image] for image in found])
    by_height = {}
    for low, high in HEIGHT_BINS:
        inside = (person_heights >= low) & (person_heights < high)
        by_height[f"{low}-{high}" if high < np.inf else f">={low}"] = {
            "persons": int(inside.sum()), "recall": round(float(flags[inside].mean()), 4) if inside.any() else None}
    crowded = {image: hits for image, hits in sorted(found.items()) if len(hits) >= CROWDED}
    return {"threshold": round(threshold, 4), "recall": round(float(flags.mean()), 4), "recall_by_height": by_height,
            "crowded_found": int(sum(f.sum() for f in crowded.values())),
            "crowded_persons": sum(len(f) for f in crowded.values()),
            "crowded_per_image": {str(image): f"{int(f.sum())}/{len(f)}" for image, f in crowded.items()}}


def measure_detector(name: str, path: Path, args: argparse.Namespace, pose_model: Path,
                     scratch: Path) -> dict[str, Any]:
    """Box AP and latency of one detector, the persons it finds by default, and pose AP on its boxes."""
    detector = OnnxDetector(path, intra_op_threads=args.threads)
    run = detect_images(detector, DATA / ANNOTATIONS, DATA / IMAGES, score_threshold=0.01, max_detections=100)
    gt = read_coco_json(DATA / ANNOTATIONS)
    boxes = coco_box_ap(gt, run.results)
    results_file = scratch / f"{name}.json"
    results_file.write_text(json.dumps(strongest(run.results, args.pose_threshold, MAX_PERSONS)))
    return {"detector": name, "model": str(path), "layout": detector.layout, "input_size": list(detector.input_size),
            "box": {key: round(boxes[key], 4) for key in ("AP", "AP50", "AP75", "APM", "APL", "AR")},
            **{key: round(value, 2) for key, value in run.latency().items()},
            "found_by_default": found_by_default(gt, run.results, detector.default_threshold),
            "pose_with_its_boxes": pose_metrics(pose_model, results_file, args.threads)}


def print_table(report: dict[str, Any]) -> None:
    """Markdown table of the report."""
    print("| detector | input | box AP | box AP50 | box AP75 | box AP medium / large | box AR | ms/img median "
          f"| ms/img p90 | default threshold | recall there | found there in photos of >= {CROWDED} "
          "| pose AP (its boxes) | pose AP50 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in report["detectors"]:
        size = "x".join(map(str, row["input_size"]))
        found = row["found_by_default"]
        box = row["box"]
        print(f"| {row['detector']} | {size} | {box['AP']:.3f} | {box['AP50']:.3f} | {box['AP75']:.3f} | "
              f"{box['APM']:.3f} / {box['APL']:.3f} | {box['AR']:.3f} | {row['ms_median']:.1f} | {row['ms_p90']:.1f} | "
              f"{found['threshold']:.3f} | {found['recall']:.3f} | {found['crowded_found']}/{found['crowded_persons']} "
              f"| {row['pose_with_its_boxes']['AP']:.3f} | {row['pose_with_its_boxes']['AP50']:.3f} |")
    gt = report["pose_with_gt_boxes"]
    print(f"| ground truth | - | 1 | 1 | 1 | 1 / 1 | 1 | - | - | - | 1 | - | {gt['AP']:.3f} | {gt['AP50']:.3f} |")
    print(f"\npose model: {report['pose_ms_per_crop']:.1f} ms per person crop (crop, network, decoding)")


def main() -> None:
    """Measure both detectors, write the JSON report, print the table."""
    args = parse_args()
    pose_model = args.pose_model or default_pose_model()
    with tempfile.TemporaryDirectory(prefix="effpose-detbench-") as folder:
        own = [(f"effpose (own{'' if len(args.own) == 1 else ': ' + path.name})", path) for path in args.own]
        rows = [measure_detector(name, path, args, pose_model, Path(folder))
                for name, path in (*own, ("yolox_nano (teacher)", args.teacher))]
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__,
                    "load_average": os.getloadavg()},
        "data": {"annotations": ANNOTATIONS, "images": IMAGES,
                 "num_images": len(read_coco_json(DATA / ANNOTATIONS)["images"])},
        "threads": args.threads, "pose_model": str(pose_model), "pose_box_threshold": args.pose_threshold,
        "detectors": rows,
        "pose_with_gt_boxes": pose_metrics(pose_model, "gt", args.threads),
        "pose_ms_per_crop": round(pose_ms_per_crop(pose_model, args.threads), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
