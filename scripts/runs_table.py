"""Print a markdown table of training runs: each run's last validation (and its crops and time).

    python scripts/runs_table.py runs/ablations_campaign/*
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cards import read_history


def main() -> None:
    """One row per run folder (its ``metrics.jsonl``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    args = parser.parse_args()
    print("| run | crops | coco val AP | coco val PCK@0.2 | lspet val AP | lspet val PCK@0.2 | train s |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        history = read_history(run)
        last = history[-1]
        crops = sum(record["crops"] for record in history)
        seconds = sum(record["train_seconds"] for record in history)
        print(f"| {run.name} | {crops} | {last['coco_val/AP']:.4f} | {last['coco_val/PCK@0.2']:.3f} | "
              f"{last['lspet_val/AP']:.4f} | {last['lspet_val/PCK@0.2']:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
