"""Which backbone layers can a trained person detector do without? Each layer that may be skipped (every layer but
a stage's first) is removed in turn, zero-shot (no retraining), and the rest is scored on the validation split.

    python scripts/detector_from_onnx.py --out runs/detector_seed.pt
    python scripts/detector_layer_ablation.py --checkpoint runs/detector_seed.pt --out runs/detector_layers.json

Prints one row per layer (MACs it costs at the input size, COCO val box AP / AP50 / AR without it) and writes them
as JSON. The layers whose removal costs least are the candidates for a depth-pruned genotype
(:meth:`effpose.genotype.Genotype.skip_layers`), which then starts from the same checkpoint and is fine-tuned.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from effpose.data.sources import DataSource
from effpose.detector_training.config import DetectorConfig
from effpose.detector_training.model import CenterNetDetector
from effpose.detector_training.trainer import VAL_METRICS, validate_detector
from effpose.genotype import Genotype
from effpose.model.complexity import measure_complexity
from effpose.training.trainer import initialise


def score(genotype: Genotype, checkpoint: Path, config: DetectorConfig) -> dict[str, float]:
    """MACs (millions) and validation metrics of ``genotype`` started from ``checkpoint`` without training."""
    model = CenterNetDetector(genotype)
    initialise(model, "scratch", str(checkpoint))
    macs = measure_complexity(model, (config.input_size, config.input_size)).macs / 1e6
    metrics = validate_detector(model, config)
    return {"MMACs": round(macs, 1), **{name: round(metrics[f"coco_val/{name}"], 4) for name in VAL_METRICS}}


def main() -> None:
    """Score the full network, then each skippable layer left out; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="detector checkpoint (config with a genotype)")
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--annotations", default="coco/annotations/person_keypoints_val.json")
    parser.add_argument("--images", default="coco/images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    genotype = Genotype.from_dict(checkpoint["config"]["genotype"])
    config = DetectorConfig(input_size=args.input_size,
                            val=[DataSource(annotations=args.annotations, images=args.images, name="coco_val")])
    full = score(genotype, args.checkpoint, config)
    print(f"{'layer':<14} {'op':<10} {'MMACs':>7} {'AP':>7} {'AP50':>7} {'AR':>7}")
    print(f"{'none (full)':<14} {'':<10} {full['MMACs']:>7} {full['AP']:>7} {full['AP50']:>7} {full['AR']:>7}")
    rows = []
    for s, stage in enumerate(genotype.stages):
        for i, op in enumerate(stage.ops):
            if i == 0 or op == "skip":
                continue
            pruned = score(genotype.skip_layers({(s, i)}, f"{genotype.name}_without_{s}_{i}"), args.checkpoint, config)
            row = {"stage": s, "layer": i, "op": op, "MMACs_saved": round(full["MMACs"] - pruned["MMACs"], 1),
                   **{name: pruned[name] for name in VAL_METRICS}}
            rows.append(row)
            print(f"{f'backbone.{s}.{i}':<14} {op:<10} {row['MMACs_saved']:>7} {row['AP']:>7} {row['AP50']:>7} "
                  f"{row['AR']:>7}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "input_size": args.input_size, "full": full,
                                    "without_layer": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
