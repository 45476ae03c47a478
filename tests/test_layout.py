"""The code's layout as contracts: import-linter's (serving imports no torch, the library imports nothing from the
service, the inference layers in order; `.importlinter`) and no import cycle between sibling packages or modules."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"


def test_import_contracts_hold() -> None:
    result = subprocess.run([LINT_IMPORTS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def sibling_cycles(graph: grimp.ImportGraph, package: str) -> list[tuple[str, str]]:
    """Pairs of direct children of ``package`` that import each other, directly or through other modules."""
    children = sorted(graph.find_children(package))
    return [(a, b) for a, b in itertools.combinations(children, 2)
            if graph.find_shortest_chains(importer=a, imported=b, as_packages=True)
            and graph.find_shortest_chains(importer=b, imported=a, as_packages=True)]


def test_no_import_cycles_between_siblings() -> None:
    graph = grimp.build_graph("effpose", "service")
    packages = [name for name in graph.modules if graph.find_children(name)]
    cycles = {package: sibling_cycles(graph, package) for package in packages}
    assert not {package: pairs for package, pairs in cycles.items() if pairs}


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = grimp.build_graph("effpose")
    graph.add_import(importer="effpose.processing.affine", imported="effpose.evaluation.runner")
    assert ("effpose.evaluation", "effpose.processing") in sibling_cycles(graph, "effpose")
