"""After a campaign run: make its end the committed resume point and update the metrics log and progress table.

    python scripts/campaign_finish.py --run runs/campaign_r3 [--kind pose|detector]
        [--resume-dir checkpoints/efficientpose_a_coco17] [--results docs/results.md]

Replaces ``RESUME_DIR/last.pt`` with the run's ``last.pt`` (never a second one beside it), rewrites
``RESUME_DIR/campaign_metrics.jsonl`` from the checkpoint's history (every epoch since the campaign began), and
regenerates the progress table in the results document between the kind's markers (``campaign-progress`` for the
pose model, ``detector-campaign-progress`` for the person detector): one row per run, with the campaign totals at
the run's end and the validation of its final weights. Release separately (``scripts/release_model.py`` or
``scripts/release_detector.py``, ``--only-if-better``); ``scripts/campaign_run.sh`` does all three.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

RESUME_DIRS = {"pose": Path("checkpoints/efficientpose_a_coco17"), "detector": Path("checkpoints/person_detector")}
MARKERS = {"pose": "campaign-progress", "detector": "detector-campaign-progress"}


def markers(kind: str) -> tuple[str, str]:
    """The results document's start and end markers of ``kind``'s progress table."""
    return f"<!-- {MARKERS[kind]}:start -->", f"<!-- {MARKERS[kind]}:end -->"


def fmt(value: Any, digits: int) -> str:
    """A number rounded for the table, or a dash when the run did not measure it."""
    return "-" if value is None else f"{value:.{digits}f}"


def input_label(input_size: int | list[int]) -> str:
    """``HxW`` of a pose (width, height) input size or of a detector's square side."""
    width, height = (input_size, input_size) if isinstance(input_size, int) else input_size
    return f"{height}x{width}"


def validation_cells(kind: str, record: dict[str, Any]) -> list[str]:
    """The validation columns of one run's final record."""
    if kind == "detector":
        return [f"{fmt(record.get('coco_val/AP'), 4)} / {fmt(record.get('coco_val/AP50'), 3)} / "
                f"{fmt(record.get('coco_val/AR'), 3)}"]
    return [f"{fmt(record.get('coco_val/AP'), 4)} / {fmt(record.get('coco_val/PCK@0.2'), 3)}",
            f"{fmt(record.get('lspet_val/AP'), 4)} / {fmt(record.get('lspet_val/PCK@0.2'), 3)}"]


def progress_rows(history: list[dict[str, Any]], kind: str = "pose") -> list[str]:
    """One markdown row per run of ``history`` (consecutive records with the same ``run``)."""
    rows = []
    for run, records in groupby(history, key=lambda record: record.get("run", "?")):
        records = list(records)
        last = records[-1]
        ended = datetime.fromtimestamp(last["time"], timezone.utc).strftime("%Y-%m-%d %H:%M")
        device = "GPU" if last.get("device") == "cuda" else f"CPU {last.get('threads', '?')} thr"
        cells = [run, ended, input_label(last["input_size"]), device, f"{records[0]['epoch']}-{last['epoch']}",
                 f"{last['crops_seen']:,}", fmt(last.get("cpu_hours"), 2), fmt(last.get("wall_hours"), 2),
                 *validation_cells(kind, last)]
        rows.append(f"| {' | '.join(cells)} |")
    return rows


def progress_table(history: list[dict[str, Any]], kind: str = "pose") -> str:
    """The markdown progress table of the whole campaign of ``kind``."""
    validation = (["COCO val box AP / AP50 / AR"] if kind == "detector"
                  else ["COCO val AP / PCK@0.2", "LSPet val AP / PCK@0.2"])
    columns = ["run", "ended (UTC)", "input", "device", "epochs", "crops seen" if kind == "pose" else "images seen",
               "campaign CPU h", "wall h", *validation]
    return "\n".join([f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *progress_rows(history, kind)])


def replace_between_markers(text: str, content: str, kind: str = "pose") -> str:
    """``text`` with everything between ``kind``'s progress markers replaced by ``content``."""
    START, END = markers(kind)
    if START not in text or END not in text:
        raise ValueError(f"the results document needs the markers {START} and {END}")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{content}\n{END}{after}"


def main() -> None:
    """Copy the resume point, write the metrics log, regenerate the progress table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the finished run folder (last.pt)")
    parser.add_argument("--kind", choices=tuple(RESUME_DIRS), default="pose")
    parser.add_argument("--resume-dir", type=Path, help="default: the kind's folder under checkpoints/")
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    args.resume_dir = args.resume_dir or RESUME_DIRS[args.kind]
    args.resume_dir.mkdir(parents=True, exist_ok=True)

    history = torch.load(args.run / "last.pt", map_location="cpu", weights_only=False)["history"]
    shutil.copyfile(args.run / "last.pt", args.resume_dir / "last.pt")
    with (args.resume_dir / "campaign_metrics.jsonl").open("w") as handle:
        for record in history:
            handle.write(json.dumps(record) + "\n")
    args.results.write_text(replace_between_markers(args.results.read_text(), progress_table(history, args.kind),
                                                   args.kind))
    last = history[-1]
    print(json.dumps({"resume_point": str(args.resume_dir / "last.pt"), "epochs": len(history),
                      "crops_seen": last["crops_seen"], "cpu_hours": round(last["cpu_hours"], 3)}))


if __name__ == "__main__":
    main()
