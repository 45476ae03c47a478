#!/usr/bin/env python
"""Compare the arms of a campaign A/B: runs started from the same resume point with equal CPU time, differing in one
setting. Prints one row per arm and names the winner by the rule fixed before the runs: the higher mean of the
selection metric over each arm's last ``--last`` complete epochs (both arms annealed by ``run_cosine``). The last
line is ``winner: RUN_FOLDER`` (scripts/campaign_ab.sh reads it).

    python scripts/campaign_ab.py runs/detector_slim_r5_base runs/detector_slim_r5_aug
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any


def read_epochs(run: Path) -> list[dict[str, Any]]:
    """Every epoch of ``run``'s metrics.jsonl, the partial one a stopped run logs last included."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def summarise(run: Path, metric: str, last: int) -> dict[str, Any]:
    """One arm: epochs and images (all), throughput, and over its complete epochs the decision value (mean of
    the last ``last``), the mean and the best."""
    logged = read_epochs(run)
    epochs = [epoch for epoch in logged if epoch.get("complete", True)]
    if len(epochs) < last:
        raise SystemExit(f"{run} has {len(epochs)} complete epochs, fewer than --last {last}")
    values = [epoch[metric] for epoch in epochs]
    best = max(epochs, key=lambda epoch: epoch[metric])
    return {"arm": run.name, "run": run, "epochs": f"{logged[0]['epoch']}-{logged[-1]['epoch']}",
            "images": sum(epoch["crops"] for epoch in logged),
            "images_per_s": mean(epoch["samples_per_s"] for epoch in epochs),
            "decision": mean(values[-last:]), "mean": mean(values), "best": best[metric], "best_epoch": best["epoch"],
            "last_loss": epochs[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="the arms' run folders (metrics.jsonl)")
    parser.add_argument("--metric", default="mean_AP", help="the selection metric logged each epoch")
    parser.add_argument("--last", type=int, default=3, help="complete epochs at each arm's end that decide")
    args = parser.parse_args()
    arms = [summarise(run, args.metric, args.last) for run in args.runs]
    print(f"| arm | epochs | images | images/s | {args.metric}, last {args.last} epochs | all epochs: mean / best "
          "| training loss, last epoch |")
    print("|---|---|---:|---:|---:|---|---:|")
    for arm in arms:
        print(f"| {arm['arm']} | {arm['epochs']} | {arm['images']:,} | {arm['images_per_s']:.1f} | "
              f"{arm['decision']:.4f} | {arm['mean']:.4f} / {arm['best']:.4f} (epoch {arm['best_epoch']}) | "
              f"{arm['last_loss']:.3f} |")
    print(f"winner: {max(arms, key=lambda arm: arm['decision'])['run']}")


if __name__ == "__main__":
    main()
