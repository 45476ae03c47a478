"""The pose campaign's learning curve: how fast each validation metric still rises, and what the targets would cost.

    python scripts/campaign_curve.py [--log checkpoints/efficientpose_a_coco17/campaign_metrics.jsonl]
        [--since-crops 731200] [--json runs/campaign_curve.json]

Fits ``metric = a + b * ln(crops seen)`` by least squares to every complete epoch of the campaign's metrics log
from ``--since-crops`` on (default: the start of run r7, the first run annealed with ``run_cosine``, so that every
run in the fit has the same schedule), per validation metric. ``b`` is the gain per e-fold of crops (x2.72); at
that slope, reaching the issue's target from today's fitted value takes ``crops * exp((target - value) / b)``
crops, converted to CPU hours with the campaign's measured CPU time per crop over the same epochs. The epochs'
numbers are the trainer's validation (moving-average weights, GT boxes, flip test, its decoding), not a release's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"coco_val/AP": 0.25, "coco_val/PCK@0.2": None, "lspet_val/AP": None, "lspet_val/PCK@0.2": 0.60}
FIRST_ANNEALED_RUN_CROPS = 731_200  # crops seen when run r7 began


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


def summarise(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the fit, and the projection to its target where the issue sets one."""
    crops = np.array([e["crops_seen"] for e in epochs], dtype=np.float64)
    cpu = np.array([e["cpu_hours"] for e in epochs], dtype=np.float64)
    cpu_h_per_crop = float((cpu[-1] - cpu[0]) / (crops[-1] - crops[0]))
    metrics = {}
    for name, target in TARGETS.items():
        fit = fit_metric(crops, np.array([e[name] for e in epochs], dtype=np.float64))
        if target is not None:
            fit.update(target=target, **projection(fit, crops[-1], target, cpu_h_per_crop))
        metrics[name] = fit
    return {"epochs": len(epochs), "crops_from": int(crops[0]), "crops_to": int(crops[-1]),
            "cpu_hours_to": float(cpu[-1]), "crops_per_cpu_hour": 1.0 / cpu_h_per_crop, "metrics": metrics}


def main() -> None:
    """Print the fit table (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=Path("checkpoints/efficientpose_a_coco17/campaign_metrics.jsonl"))
    parser.add_argument("--since-crops", type=int, default=FIRST_ANNEALED_RUN_CROPS)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = summarise(read_epochs(args.log, args.since_crops))
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
