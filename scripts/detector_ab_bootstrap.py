#!/usr/bin/env python
"""Is one person detector's box AP really above another's on the shared COCO val split, or within what the choice
of its 111 images moves? A paired bootstrap over images: pycocotools matches each detector's detections to the
persons of every image once; each resample draws the images with replacement (the same draw for both detectors)
and re-accumulates both APs from those per-image matches.

    python scripts/detector_ab_bootstrap.py A.onnx B.onnx [--resamples 1000] [--seed 0] [--threads 1]

Prints both APs, the difference B - A with its 95% percentile interval over the resamples and the share of
resamples in which B's AP is higher. Detections: every one from score 0.01 through the service's detector adapter
(``effpose.evaluation.detection.detect_images``), as ``benchmarks/detectors.py`` scores box AP. An A/B's arms are
compared on their final moving averages: ``effpose export-detector --checkpoint runs/RUN_ARM/last.pt --out ARM.onnx``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from effpose.data.coco import read_coco_json
from effpose.data.sources import data_root
from effpose.detectors import OnnxDetector
from effpose.evaluation.detection import detect_images, person_box_evaluation

ANNOTATIONS = "coco/annotations/person_keypoints_val.json"
IMAGES = "coco/images"
MAX_DETECTIONS = 100  # COCO's maxDets for AP


class ImageMatches:
    """One detector's COCO box matches on every image of ``gt`` (area range "all", at most 100 detections an image),
    from which the AP of any multiset of those images is accumulated."""

    def __init__(self, gt: dict[str, Any], results: list[dict[str, Any]]):
        if not results:
            raise ValueError("no detections to match: the AP of every resample would be 0")
        self._evaluation = person_box_evaluation(gt, results)
        params = self._evaluation.params
        params.maxDets, params.areaRng, params.areaRngLbl = [MAX_DETECTIONS], [[0, 1e10]], ["all"]
        with contextlib.redirect_stdout(io.StringIO()):
            self._evaluation.evaluate()
        self._per_image = list(self._evaluation.evalImgs)  # one entry per image, in params.imgIds order
        self.num_images = len(self._per_image)

    def ap(self, images: np.ndarray | None = None) -> float:
        """COCO box AP (mean precision over IoU 0.50:0.95 and 101 recall points) over ``images``: indices into the
        image list, repeats allowed (all images, once each, by default)."""
        chosen = np.arange(self.num_images) if images is None else np.asarray(images)
        evaluation = self._evaluation
        evaluation.evalImgs = [self._per_image[index] for index in chosen]
        evaluation.params.imgIds = evaluation._paramsEval.imgIds = list(range(len(chosen)))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.accumulate()
        precision = evaluation.eval["precision"][:, :, 0, 0, 0]
        valid = precision > -1
        return float(precision[valid].mean()) if valid.any() else 0.0


def paired_bootstrap(a: ImageMatches, b: ImageMatches, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, 2) APs of ``a`` and ``b`` over the same image draws with replacement."""
    if a.num_images != b.num_images:
        raise ValueError(f"the detectors were matched on different image sets ({a.num_images} vs {b.num_images})")
    generator = np.random.default_rng(seed)
    draws = generator.integers(0, a.num_images, size=(resamples, a.num_images))
    return np.asarray([[a.ap(draw), b.ap(draw)] for draw in draws])


def summary(name_a: str, name_b: str, ap_a: float, ap_b: float, resampled: np.ndarray) -> str:
    """A markdown table: both APs, B - A with its 95% percentile interval and how often B came out higher."""
    difference = resampled[:, 1] - resampled[:, 0]
    low, high = np.percentile(difference, [2.5, 97.5])
    return (f"| A | B | AP of A | AP of B | B - A | 95% interval ({len(resampled)} resamples) | B higher in |\n"
            f"|---|---|---:|---:|---:|---|---:|\n"
            f"| {name_a} | {name_b} | {ap_a:.4f} | {ap_b:.4f} | {ap_b - ap_a:+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {(difference > 0).mean():.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detectors", nargs=2, type=Path, metavar="ONNX", help="detector A, then detector B")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.resamples < 1:
        parser.error("--resamples must be >= 1")
    gt = read_coco_json(data_root() / ANNOTATIONS)
    matches = []
    for path in args.detectors:
        detector = OnnxDetector(path, intra_op_threads=args.threads)
        run = detect_images(detector, data_root() / ANNOTATIONS, data_root() / IMAGES, score_threshold=0.01,
                            max_detections=MAX_DETECTIONS)
        matches.append(ImageMatches(gt, run.results))
    resampled = paired_bootstrap(*matches, resamples=args.resamples, seed=args.seed)
    a, b = args.detectors
    print(summary(a.name, b.name, matches[0].ap(), matches[1].ap(), resampled))


if __name__ == "__main__":
    main()
