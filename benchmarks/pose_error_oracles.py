"""Where the pose model's COCO AP goes: the same predictions re-scored with one kind of error removed by an oracle.

    python benchmarks/pose_error_oracles.py [--model effpose/assets/efficientpose_a_coco17.onnx] [--no-flip]
        [--out benchmarks/results/pose_error_oracles.json]

The model estimates every person of the COCO and LSPet validation splits from its ground-truth box (flip test by
default, the model's own decoding); then each oracle edits the predicted keypoints with the ground truth, and the
edited results are scored again (COCO keypoint AP, pycocotools):

* ``left/right fixed``: each left/right pair swapped where the swap brings both closer to their labels;
* ``face from GT``: nose, eyes and ears set to their labels;
* ``errors <= N hm px removed`` (N = 1, 2, 3): every keypoint within N heatmap pixels of its label (in image
  pixels, through the crop's scale) set to the label: what more precision (a finer heatmap, a larger input)
  could buy;
* ``errors > 3 hm px removed``: every keypoint farther than that set to its label: what finding the right place
  (recognition: data, capacity, training) could buy.

The gap each oracle closes says which kind of error holds the AP down. Unlabelled keypoints are left as
predicted (they are not scored); pseudo-labelled LSPet face points are not ground truth and are left out as in
``effpose eval``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from effpose.assets import default_pose_model
from effpose.data.coco import read_coco_json, xywh_to_xyxy
from effpose.data.sources import data_root
from effpose.evaluation import evaluate, load_estimator
from effpose.evaluation.coco_eval import coco_keypoint_ap, drop_pseudo_keypoints
from effpose.keypoints import FLIP_PAIRS
from effpose.processing.affine import box_to_center_size

FACE = [0, 1, 2, 3, 4]
SPLITS = {"coco_val": ("coco/annotations/person_keypoints_val.json", "coco/images"),
          "lspet_val": ("lspet/annotations/lspet_val.json", "lspet/images")}
Oracle = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (prediction, label, image px per heatmap px)


def fix_left_right(pred: np.ndarray, gt: np.ndarray, _: float) -> np.ndarray:
    """Swap each left/right pair whose swapped assignment is closer to the two labels (both labelled)."""
    out = pred.copy()
    for left, right in FLIP_PAIRS:
        if gt[left, 2] > 0 and gt[right, 2] > 0:
            kept = np.linalg.norm(pred[left, :2] - gt[left, :2]) + np.linalg.norm(pred[right, :2] - gt[right, :2])
            swapped = np.linalg.norm(pred[right, :2] - gt[left, :2]) + np.linalg.norm(pred[left, :2] - gt[right, :2])
            if swapped < kept:
                out[[left, right], :2] = pred[[right, left], :2]
    return out


def face_from_gt(pred: np.ndarray, gt: np.ndarray, _: float) -> np.ndarray:
    """Labelled face keypoints set to their labels."""
    out = pred.copy()
    labelled = [j for j in FACE if gt[j, 2] > 0]
    out[labelled, :2] = gt[labelled, :2]
    return out


def snap(pred: np.ndarray, gt: np.ndarray, radius: float, near: bool) -> np.ndarray:
    """Labelled keypoints within (``near``) or beyond ``radius`` image pixels of their label set to it."""
    out = pred.copy()
    distance = np.linalg.norm(pred[:, :2] - gt[:, :2], axis=1)
    chosen = (gt[:, 2] > 0) & ((distance <= radius) if near else (distance > radius))
    out[chosen, :2] = gt[chosen, :2]
    return out


ORACLES: dict[str, Oracle | None] = {
    "as predicted": None,
    "left/right fixed": fix_left_right,
    "face from GT": face_from_gt,
    **{f"errors <= {n} hm px removed": lambda pred, gt, radius, n=n: snap(pred, gt, n * radius, near=True)
       for n in (1, 2, 3)},
    "errors > 3 hm px removed": lambda pred, gt, radius: snap(pred, gt, 3 * radius, near=False),
}


def heatmap_pixel(annotation: dict[str, Any], input_size: tuple[int, int], padding: float, stride: float) -> float:
    """Image pixels per heatmap pixel for the crop of this person's GT box."""
    width, height = input_size
    _, size = box_to_center_size(xywh_to_xyxy(annotation["bbox"]), width / height, padding)
    return float(size[0]) / width * stride


def oracle_table(model: Path, flip: bool) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {oracle: {AP, AP50, AP75}}} for the model's GT-box predictions."""
    estimator = load_estimator(model, flip=flip, threads=1)
    contract = estimator.contract
    table: dict[str, dict[str, dict[str, float]]] = {}
    for split, (annotation_file, image_dir) in SPLITS.items():
        gt = read_coco_json(data_root() / annotation_file)
        report = evaluate(estimator, data_root() / annotation_file, data_root() / image_dir)
        labels = {annotation["id"]: annotation for annotation in drop_pseudo_keypoints(gt)["annotations"]}
        table[split] = {}
        for name, oracle in ORACLES.items():
            edited = []
            for result, person in zip(report.results, report.gt_persons, strict=True):
                pred = np.asarray(result["keypoints"], np.float64).reshape(-1, 3)
                truth = np.asarray(labels[person["id"]]["keypoints"], np.float64).reshape(-1, 3)
                radius = heatmap_pixel(person, contract.input_size, contract.padding, contract.stride)
                keypoints = pred if oracle is None else oracle(pred, truth, radius)
                edited.append({**result, "keypoints": keypoints.reshape(-1).tolist()})
            metrics = coco_keypoint_ap(gt, edited)
            table[split][name] = {key: float(metrics[key]) for key in ("AP", "AP50", "AP75")}
    return table


def main() -> None:
    """Print the table and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_pose_model())
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="without the flip test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pose_error_oracles.json"))
    args = parser.parse_args()
    table = oracle_table(args.model, args.flip)
    print(f"{args.model} (GT boxes, flip {'on' if args.flip else 'off'})")
    print("| oracle | " + " | ".join(f"{split} AP / AP50 / AP75" for split in table) + " |")
    print("|---|" + "---|" * len(table))
    for name in ORACLES:
        cells = [" / ".join(f"{table[split][name][key]:.3f}" for key in ("AP", "AP50", "AP75")) for split in table]
        print(f"| {name} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "flip": args.flip, "oracles": table}, indent=2))


if __name__ == "__main__":
    main()
