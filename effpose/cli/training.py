"""Training commands: ``train`` (pose network), ``train-detector``, ``search`` (architecture search), ``build-lut``
(its latency table), ``data pack`` and ``data pack-detector``. The three training runs take a JSON config whose
fields ``--cfg-options`` overrides; they work under torchrun."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effpose.cli.options import add_run_arguments, parse_input_size, run_overrides, with_overrides
from effpose.contract import DEFAULT_INPUT_SIZE
from effpose.search.space import SEARCH_SPACES

if TYPE_CHECKING:
    from effpose.detector_training.config import DetectorConfig
    from effpose.search.searcher import SearchConfig
    from effpose.training.config import TrainConfig

LOOP_EXAMPLES = "epochs=20 lr=5e-4 batch_size=64 workers=4 samples_per_epoch=6400 max_steps_per_epoch=2 seed=1"


def train_config(args: argparse.Namespace) -> TrainConfig:
    """``effpose train``'s config: ``--config`` (else the defaults) with the command line's overrides."""
    from effpose.training.config import TrainConfig

    return with_overrides(TrainConfig.load(args.config) if args.config else TrainConfig(), run_overrides(args))


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    """``effpose train-detector``'s config: ``--config`` (else the defaults) with the command line's overrides."""
    from effpose.detector_training.config import DetectorConfig

    return with_overrides(DetectorConfig.load(args.config) if args.config else DetectorConfig(), run_overrides(args))


def search_config(args: argparse.Namespace) -> SearchConfig:
    """``effpose search``'s config: the search on ``--config``'s data, with the command line's overrides."""
    from effpose.search.searcher import SearchConfig
    from effpose.training.config import TrainConfig

    return with_overrides(SearchConfig.from_training_config(TrainConfig.load(args.config)), run_overrides(args))


def log_to_stderr() -> None:
    """Show the training loop's progress (INFO) with timestamps."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a pose network."""
    from effpose.training.trainer import run_training

    log_to_stderr()
    run_training(train_config(args), resume=args.resume, stop_after_s=args.stop_after)
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    """Train the person detector."""
    from effpose.detector_training.trainer import run_detector_training

    log_to_stderr()
    run_detector_training(detector_config(args), resume=args.resume, stop_after_s=args.stop_after)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Cost-aware architecture search on a training config's data."""
    from effpose.search.searcher import run_search

    log_to_stderr()
    run_search(search_config(args), resume=args.resume, stop_after_s=args.stop_after)
    return 0


def cmd_build_lut(args: argparse.Namespace) -> int:
    """Time every candidate op of a search space with ONNX Runtime and write the latency table."""
    from effpose.search.cost import latency_table
    from effpose.search.space import get_space

    table = latency_table(get_space(args.space), args.input, threads=args.threads, providers=args.providers,
                          reps=args.reps, warmup=args.warmup)
    table.save(args.out)
    searched = [cost for layer in table.layers for cost in layer.values() if cost > 0]
    print(json.dumps({"out": str(args.out), "layers": len(table.layers), "fixed_ms": round(table.fixed, 4),
                      "op_ms_min": round(min(searched), 4), "op_ms_max": round(max(searched), 4),
                      "measured_with": table.measured_with}))
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    """Cut a training config's persons into one data pack file (for a machine that gets only the checkout)."""
    from effpose.data import load_person_records
    from effpose.data.pack import write_pack
    from effpose.training.config import TrainConfig

    config = TrainConfig.load(args.config)
    input_size = args.input or config.input_size
    sources = {source.name: load_person_records(*source.paths(), source=source.name) for source in config.train}
    meta = write_pack(sources, args.out, input_size, context=args.context, quality=args.quality)
    return report_pack(args.out, meta, args.max_mib, "lower --quality or --context")


def cmd_data_pack_detector(args: argparse.Namespace) -> int:
    """Write a detector config's training images and boxes into one data pack file."""
    from effpose.detector_training.config import DetectorConfig
    from effpose.detector_training.data import load_source
    from effpose.detector_training.pack import write_detector_pack

    config = DetectorConfig.load(args.config)
    sources = {source.name: load_source(source) for source in config.train}
    meta = write_detector_pack(sources, args.out, max_side=args.max_side or config.input_size, quality=args.quality)
    return report_pack(args.out, meta, args.max_mib, "lower --quality or --max-side")


def report_pack(out: Path, meta: dict[str, Any], max_mib: float, advice: str) -> int:
    """Print a written pack's size and meta (JSON); 1 with an error on stderr when it is over ``max_mib``."""
    size_mib = out.stat().st_size / 2**20
    print(json.dumps({"out": str(out), "mib": round(size_mib, 2), **meta}))
    if size_mib > max_mib:
        print(f"error: the pack is {size_mib:.1f} MiB, over --max-mib {max_mib}: {advice}", file=sys.stderr)
        return 1
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``train``, ``train-detector``, ``search``, ``build-lut`` and ``data`` on
    ``parser.add_subparsers()``."""
    train = subparsers.add_parser(
        "train", help="train a pose network (also under torchrun)",
        description="Train a pose network from a JSON config (the fields of effpose/training/config.py); "
                    "--cfg-options overrides any of them.")
    add_run_arguments(train, "JSON training config (see configs/; default: the built-in defaults)",
                      f"{LOOP_EXAMPLES} weight_decay=1e-4 'input_size=[96,128]' (width, height: 128x96 crops) "
                      "arch=B (or a genotype JSON: arch=runs/search_a/genotype.json) init=scratch "
                      "init_checkpoint=runs/a/last.pt sic=false pseudo_weight=0 precise_bn_batches=10 loss=fg_mse "
                      "sigma=3 augment=light")
    train.set_defaults(func=cmd_train)

    detector = subparsers.add_parser(
        "train-detector", help="train the person detector (also under torchrun)",
        description="Train the person detector from a JSON config (the fields of "
                    "effpose/detector_training/config.py); --cfg-options overrides any of them.")
    add_run_arguments(detector, "JSON detector config (configs/person_detector.json; default: the built-in "
                      "defaults)", f"{LOOP_EXAMPLES} input_size=256 (the square side) arch=A init=scratch "
                      "init_checkpoint=runs/seed.pt")
    detector.set_defaults(func=cmd_train_detector)

    search = subparsers.add_parser(
        "search", help="cost-aware architecture search (FNA); also under torchrun",
        description="Search one op per layer of a search space on a training config's data (its training sources, "
                    "crop size, sigma, pseudo-label weight, augmentation and pack); --cfg-options sets the fields of "
                    "SearchConfig (effpose/search/searcher.py). Writes genotype.json (for effpose train "
                    "--cfg-options arch=FILE), alphas.json, architecture.svg, metrics.jsonl and last.pt to "
                    "--out-dir.")
    add_run_arguments(search, "training config whose data is searched on (default: "
                      "configs/efficientpose_a_coco17.json)",
                      "space=large cost=latency lut=runs/lut_a.json target_cost=5 cost_lambda=0.1 warmup_epochs=5 "
                      f"arch_lr=3e-3 init=lite0 'input_size=[96,128]' (width, height: 128x96 crops) {LOOP_EXAMPLES}",
                      config_default=Path("configs/efficientpose_a_coco17.json"))
    search.set_defaults(func=cmd_search)

    lut = subparsers.add_parser("build-lut", help="latency lookup table for effpose search cost=latency",
                                description="Export every candidate op of a search space at its layer's shape to "
                                "ONNX and time it with ONNX Runtime (batch 1, median of --reps runs).")
    lut.add_argument("--space", choices=sorted(SEARCH_SPACES), default="A", help="the space to be searched")
    lut.add_argument("--input", type=parse_input_size, default=DEFAULT_INPUT_SIZE,
                     help="HEIGHTxWIDTH, default 256x192: the search's crop size")
    lut.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (the service's)")
    lut.add_argument("--providers", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime execution provider")
    lut.add_argument("--reps", type=int, default=20, help="timed runs per op")
    lut.add_argument("--warmup", type=int, default=5, help="untimed runs per op first")
    lut.add_argument("--out", type=Path, required=True,
                     help="the table (JSON) for effpose search --cfg-options cost=latency lut=FILE")
    lut.set_defaults(func=cmd_build_lut)

    data = subparsers.add_parser("data", help="training data tools").add_subparsers(dest="data_command", required=True)
    pack = data.add_parser("pack", help="cut a config's training persons (with context) into one small file")
    pack.add_argument("--config", type=Path, required=True, help="training config whose train sources are packed")
    pack.add_argument("--out", type=Path, required=True, help="the pack (.npz); train with --cfg-options pack=FILE")
    pack.add_argument("--input", type=parse_input_size,
                      help="HEIGHTxWIDTH the crops are sized for (default: the config's)")
    pack.add_argument("--context", type=float, default=1.35, help="crop side / padded box diagonal (augmentation room)")
    pack.add_argument("--quality", type=int, default=80, help="WebP quality, 1-100")
    pack.add_argument("--max-mib", type=float, default=48.0, help="fail when the pack is larger")
    pack.set_defaults(func=cmd_data_pack)

    detector_pack = data.add_parser(
        "pack-detector", help="shrink a detector config's training images, with their boxes, into one small file")
    detector_pack.add_argument("--config", type=Path, required=True,
                               help="detector training config whose train sources are packed (boxes as it merges them)")
    detector_pack.add_argument("--out", type=Path, required=True,
                               help="the pack (.npz); train with effpose train-detector --cfg-options pack=FILE")
    detector_pack.add_argument("--max-side", type=int, help="longest image side kept (default: the config's input)")
    detector_pack.add_argument("--quality", type=int, default=70, help="WebP quality, 1-100")
    detector_pack.add_argument("--max-mib", type=float, default=60.0, help="fail when the pack is larger")
    detector_pack.set_defaults(func=cmd_data_pack_detector)
