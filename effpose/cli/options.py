"""What several ``effpose`` sub-commands share: argument types, the arguments of a training run with its config
overrides (``--cfg-options KEY=VALUE ...``, as in MMPose), and the person-detector arguments."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from effpose.detectors import OnnxDetector

Config = TypeVar("Config")


def parse_input_size(text: str) -> tuple[int, int]:
    """Parse "HEIGHTxWIDTH" (the papers' order, e.g. 256x192) into (width, height)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 256x192 (height x width), got {text!r}") from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"input height and width must be positive multiples of 32, got {text!r}")
    return width, height


def parse_duration(text: str) -> float:
    """Parse a time budget such as "150m", "2.5h", "90s" or "45" (minutes) into seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text[-1:].lower() in units else (text, "m")
    try:
        seconds = float(number) * units[unit.lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration looks like 150m, 2h or 90s, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return seconds


def parse_cfg_option(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` config override; the value is JSON when it parses as JSON, else a string."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"a config override looks like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse "x1,y1,x2,y2" in image pixels."""
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box is x1,y1,x2,y2 (four numbers), got {text!r}") from None
    return x1, y1, x2, y2


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str, cfg_examples: str,
                      config_default: Path | None = None) -> None:
    """The arguments of ``train``, ``train-detector`` and ``search``: the JSON config, where the run writes, the
    resume point, the time budget, and ``--cfg-options`` for every other setting (``cfg_examples`` in its help)."""
    parser.add_argument("--config", type=Path, default=config_default, help=config_help)
    parser.add_argument("--out-dir", help="checkpoints, config.json, metrics.jsonl and outputs go here "
                        "(the config's out_dir)")
    parser.add_argument("--resume", type=Path, help="continue from a last.pt")
    parser.add_argument("--stop-after", type=parse_duration, metavar="DURATION",
                        help="time budget, e.g. 150m or 2h: then end cleanly (validate, checkpoint, export)")
    parser.add_argument("--cfg-options", type=parse_cfg_option, nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="override config fields (any field of the config; unknown keys are refused). VALUE is "
                        "JSON where it parses as JSON, else a string; quote brackets for the shell. Repeatable: a "
                        f"later KEY wins. E.g. {cfg_examples}")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields a training command line sets: ``--out-dir`` (when given), then ``--cfg-options``."""
    given = {"out_dir": args.out_dir} if args.out_dir is not None else {}
    return given | dict(args.cfg_options)


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """``config`` rebuilt with ``overrides`` through its ``from_dict``, which rejects unknown keys."""
    return type(config).from_dict({**config.to_dict(), **overrides})


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The person detector and image set of ``detect``, ``eval-detector`` and ``calibrate-detector``."""
    parser.add_argument("--model", type=Path, required=True, help="person detector ONNX (own, YOLOX or YOLOv8 layout)")
    parser.add_argument("--layout", choices=("auto", "yolox", "yolov8", "effpose"), default="auto")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO-format JSON listing the images")
    parser.add_argument("--images", type=Path, required=True, help="folder the images' file_name is relative to")
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--providers", default="cpu", help="cpu, cuda or auto")


def open_detector(args: argparse.Namespace) -> OnnxDetector:
    """The :class:`~effpose.detectors.OnnxDetector` that :func:`add_detector_arguments`' arguments name."""
    from effpose.detectors import OnnxDetector

    return OnnxDetector(args.model, layout=args.layout, providers=args.providers, intra_op_threads=args.threads)
