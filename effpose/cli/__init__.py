"""The ``effpose`` command line: one module per group of sub-commands (:mod:`~effpose.cli.model`,
:mod:`~effpose.cli.training`, :mod:`~effpose.cli.evaluation`, :mod:`~effpose.cli.inference`), each registering its
commands with ``add_parsers(subparsers)``, and :mod:`~effpose.cli.options`, what they share. Every command imports
what it needs when it runs, so building the parser loads no torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from effpose.cli import evaluation, inference, model, training

COMMAND_GROUPS = (model, training, evaluation, inference)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="effpose", description="Efficient top-down human pose estimation: architectures, training, search, "
        "export, evaluation, inference and the service.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``effpose`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
