"""Service latency of two revisions side by side: ``benchmarks/service_load.py`` against both, alternating.

    python benchmarks/compare_revisions.py 16e962b            # that revision vs the working tree
    python benchmarks/compare_revisions.py 16e962b HEAD~3 --load-args "--concurrency 1 16 --loads 1.5"

Each revision is checked out into a temporary git worktree (its gRPC stubs generated there) and served from it,
both servers at once and idle in turn, with the same model files (the working tree's shipped ones, so that only the
code differs) and the working tree's load generator. The runs alternate A B B A, and the table averages each
revision's points. Raw reports go to ``--out-dir`` (``<label>_<run>.json``); the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.request_path import free_port, wait_ready  # noqa: E402
from effpose.assets import default_person_detector, default_pose_model  # noqa: E402

DEFAULT_LOAD_ARGS = "--concurrency 1 4 16 --loads 1.5 2 --duration 6"
ORDER = (0, 1, 1, 0)  # A B B A: drift over the run weighs on both alike


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """The working tree itself for ``revision`` "." or a temporary worktree of it, with its gRPC stubs built."""
    if revision == ".":
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="effpose-rev-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision], check=True)
        try:
            subprocess.run([sys.executable, "setup.py", "-q", "build_py"], cwd=tree, check=True,  # writes the stubs
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


@contextmanager
def server(tree: Path) -> Iterator[tuple[str, str]]:
    """``effpose serve`` from ``tree`` on free loopback ports, with the working tree's shipped models."""
    http, grpc = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "EFFPOSE_HOST": "127.0.0.1", "EFFPOSE_HTTP_PORT": str(http),
           "EFFPOSE_GRPC_PORT": str(grpc), "EFFPOSE_LOG_LEVEL": "warning",
           "EFFPOSE_POSE_MODEL": str(default_pose_model()), "EFFPOSE_DETECTOR_MODEL": str(default_person_detector())}
    process = subprocess.Popen([sys.executable, "-c", "from service.main import main; main()"], cwd=tree, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=60) as client:
            wait_ready(client, process)
        yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
    finally:
        process.terminate()
        process.wait(60)


def file_label(revision: str) -> str:
    """A file-name-safe label of a revision ("." is the working tree)."""
    return "worktree" if revision == "." else revision.replace("/", "_").replace("~", "-").replace("^", "-")


def summarise(reports: dict[str, list[dict]]) -> str:
    """A Markdown table: per revision, the mean over its runs of each closed-loop and open-loop point."""
    rows: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for label, runs in reports.items():
        for report in runs:
            for point in report["closed_loop"]:
                key = ("closed", point["frontend"], point["concurrency"], label)
                for field in ("rps", "p50_ms", "p95_ms", "p99_ms"):
                    rows[key][field].append(point[field])
            for point in report["open_loop"]:
                key = ("open", point["frontend"], point["load"], label)
                for field in ("rps", "p50_ms", "p95_ms", "p99_ms", "share_429"):
                    rows[key][field].append(point[field])
    lines = ["| loop | frontend | C or load | revision | runs | req/s | p50 ms | p95 ms | p99 ms | 429 % |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2])):
        values = {field: statistics.mean(series) for field, series in rows[key].items()}
        refused = f"{100 * values['share_429']:.0f}" if "share_429" in values else "-"
        lines.append(f"| {' | '.join(map(str, key))} | {len(rows[key]['rps'])} | {values['rps']:.1f} | "
                     f"{values['p50_ms']:.1f} | {values['p95_ms']:.1f} | {values['p99_ms']:.1f} | {refused} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="first revision (any git revision; '.' is the working tree)")
    parser.add_argument("b", nargs="?", default=".", help="second revision (default: the working tree)")
    parser.add_argument("--load-args", default=DEFAULT_LOAD_ARGS,
                        help=f"options for benchmarks/service_load.py (default: {DEFAULT_LOAD_ARGS!r})")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "compare_revisions")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    labels = [args.a, args.b]
    reports: dict[str, list[dict]] = {label: [] for label in labels}
    with ExitStack() as stack:
        addresses = [stack.enter_context(server(stack.enter_context(checkout(label)))) for label in labels]
        for run, index in enumerate(ORDER):
            http, grpc = addresses[index]
            out = args.out_dir / f"{file_label(labels[index])}_{run}.json"
            command = [sys.executable, str(ROOT / "benchmarks" / "service_load.py"), "--http", http, "--grpc", grpc,
                       *shlex.split(args.load_args), "--out", str(out)]
            print(f"run {run + 1}/{len(ORDER)}: {labels[index]}", file=sys.stderr, flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            reports[labels[index]].append(json.loads(out.read_text()))
    print(summarise(reports))


if __name__ == "__main__":
    main()
