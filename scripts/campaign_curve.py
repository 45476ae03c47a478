"""A training campaign's learning curve: how fast each validation metric still rises, and what the targets would cost.

    python scripts/campaign_curve.py [--kind pose|detector] [--log LOG] [--since-crops N] [--json runs/curve.json]

Fits ``metric = a + b * ln(crops seen)`` by least squares to every complete epoch of the campaign's metrics log
from ``--since-crops`` on, per validation metric (for the detector, crops are training images). The defaults per
``--kind``: the pose campaign from the start of run r7, the first run annealed with ``run_cosine``, so that every
run in the fit has the same schedule; the detector campaign from the end of run detector_slim_r0, which recovered
the depth-pruned detector from the weights it was pruned from (every later run is annealed the same way).
``b`` is the gain per e-fold of crops (x2.72); at that slope, reaching the issue's target from today's fitted value
takes ``crops * exp((target - value) / b)`` crops, converted to CPU hours with the campaign's measured CPU time per
crop over the same epochs. The epochs' numbers are the trainer's validation of the moving-average weights (for pose:
GT boxes, flip test, its decoding), not a release's.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Campaign:
    """Where a campaign's metrics log is, the epochs its fit starts after, and its issue's targets per metric."""

    log: Path
    since_crops: int
    targets: dict[str, float | None]


CAMPAIGNS = {
    "pose": Campaign(Path("checkpoints/efficientpose_a_coco17/campaign_metrics.jsonl"), 731_200,  # run r7 began
                     {"coco_val/AP": 0.25, "coco_val/PCK@0.2": None, "lspet_val/AP": None, "lspet_val/PCK@0.2": 0.60}),
    "detector": Campaign(Path("checkpoints/person_detector/campaign_metrics.jsonl"), 40_672,  # detector_slim_r0 ended
                         {"coco_val/AP": 0.40, "coco_val/AP50": None, "coco_val/AR": None}),
}


def read_epochs(log: Path, since_crops: int) -> list[dict[str, Any]]:
    """The complete epochs of the metrics log that end after ``since_crops``, in order."""
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in epochs if e.get("complete", True) and e["crops_seen"] > since_crops]


def fit_metric(crops: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Least-squares ``value = a + b ln(crops)``: the slope per e-fold, R^2 and the fitted value at the last crop."""
    design = np.stack([np.ones_like(crops), np.log(crops)], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, values, rcond=None)
    fitted = design @ np.array([intercept, slope])
    spread = float(np.sum((values - values.mean()) ** 2))
    r2 = 1.0 - float(np.sum((values - fitted) ** 2)) / spread if spread > 0 else 0.0
    return {"per_efold": float(slope), "r2": r2, "fitted_now": float(fitted[-1])}


def projection(fit: dict[str, float], crops_now: float, target: float, cpu_h_per_crop: float) -> dict[str, float]:
    """Crops and campaign CPU hours to ``target`` if the fitted slope held (infinite when it is not rising)."""
    if fit["per_efold"] <= 0:
        return {"crops_needed": math.inf, "cpu_hours_needed": math.inf}
    crops = crops_now * math.exp((target - fit["fitted_now"]) / fit["per_efold"])
    return {"crops_needed": crops, "cpu_hours_needed": max(crops - crops_now, 0.0) * cpu_h_per_crop}


def summarise(epochs: list[dict[str, Any]], targets: dict[str, float | None]) -> dict[str, Any]:
    """Per metric of ``targets``: the fit, and the projection to its target where the issue sets one."""
    crops = np.array([e["crops_seen"] for e in epochs], dtype=np.float64)
    cpu = np.array([e["cpu_hours"] for e in epochs], dtype=np.float64)
    cpu_h_per_crop = float((cpu[-1] - cpu[0]) / (crops[-1] - crops[0]))
    metrics = {}
    for name, target in targets.items():
        fit = fit_metric(crops, np.array([e[name] for e in epochs], dtype=np.float64))
        if target is not None:
            fit.update(target=target, **projection(fit, crops[-1], target, cpu_h_per_crop))
        metrics[name] = fit
    return {"epochs": len(epochs), "crops_from": int(crops[0]), "crops_to": int(crops[-1]),
            "cpu_hours_to": float(cpu[-1]), "crops_per_cpu_hour": 1.0 / cpu_h_per_crop, "metrics": metrics}


def main() -> None:
    """Print the fit table (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(CAMPAIGNS), default="pose", help="which campaign (default: pose)")
    parser.add_argument("--log", type=Path, help="its metrics log (default: the campaign's committed one)")
    parser.add_argument("--since-crops", type=int, help="fit the epochs after this many crops (default: see above)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    campaign = CAMPAIGNS[args.kind]
    log = args.log or campaign.log
    since = campaign.since_crops if args.since_crops is None else args.since_crops
    summary = summarise(read_epochs(log, since), campaign.targets)
    print(f"{summary['epochs']} epochs, {summary['crops_from']:,} -> {summary['crops_to']:,} crops, "
          f"{summary['crops_per_cpu_hour']:,.0f} crops per campaign CPU hour, "
          f"{summary['cpu_hours_to']:.2f} CPU h so far")
    print("| metric | fitted now | gain per e-fold of crops | R^2 | target | crops needed | more CPU h needed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, fit in summary["metrics"].items():
        row = f"| {name} | {fit['fitted_now']:.4f} | {fit['per_efold']:+.4f} | {fit['r2']:.2f} |"
        if "target" in fit:
            row += f" {fit['target']} | {fit['crops_needed']:.3g} | {fit['cpu_hours_needed']:.3g} |"
        else:
            row += " - | - | - |"
        print(row)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
