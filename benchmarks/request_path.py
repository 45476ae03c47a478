"""Which of the project's modules one ``POST /v1/pose`` runs code in, from the handler to ONNX Runtime and back.

    python benchmarks/request_path.py [--repo DIR] [--image FILE] [--det-threshold T] [--out FILE]

Starts ``effpose serve`` from the checkout at --repo (default: this one; point it at a ``git worktree`` of an older
revision to compare) as a subprocess with a profile hook on every Python thread, sends warm-up requests, then
records the source files of every Python function called while one more request (the same image, the shipped
detector finding the people at --det-threshold) is answered. Import-time and start-up code are outside the window.
Prints the project's modules (under ``effpose/`` and ``service/``) in first-call order and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("effpose", "service")

# Runs inside the server process: SIGUSR1 starts recording the files of called Python functions, SIGUSR2 writes
# them (in first-call order) to $REQUEST_PATH_OUT.
PROFILED_SERVER = """
import json, os, signal, sys, threading
seen = {}
armed = False
def profile(frame, event, arg):
    if armed and event == "call":
        seen.setdefault(frame.f_code.co_filename, len(seen))
def arm(*_):
    global armed
    seen.clear()
    armed = True
def dump(*_):
    global armed
    armed = False
    with open(os.environ["REQUEST_PATH_OUT"], "w") as out:
        json.dump(sorted(seen, key=seen.get), out)
signal.signal(signal.SIGUSR1, arm)
signal.signal(signal.SIGUSR2, dump)
threading.setprofile(profile)
sys.setprofile(profile)
from service.main import main
main()
"""


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(client: httpx.Client, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll /readyz until 200; raise if the server exits or does not get ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def project_modules(files: list[str], repo: Path) -> list[str]:
    """The files under the repo's packages, relative to it, in the order given."""
    modules = []
    for name in files:
        path = Path(name).resolve()
        if path.is_relative_to(repo) and path.relative_to(repo).parts[0] in PACKAGES:
            modules.append(str(path.relative_to(repo)))
    return modules


def request_path(repo: Path, image: bytes, det_threshold: float, warmup: int = 3) -> list[str]:
    """The project's modules one POST /v1/pose of ``image`` runs code in, on a server started from ``repo``."""
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "files.json"
        env = {**os.environ, "REQUEST_PATH_OUT": str(out), "EFFPOSE_HOST": "127.0.0.1",
               "EFFPOSE_HTTP_PORT": str(port), "EFFPOSE_GRPC_PORT": str(free_port()), "EFFPOSE_LOG_LEVEL": "warning"}
        process = subprocess.Popen([sys.executable, "-c", PROFILED_SERVER], cwd=repo, env=env)
        params, headers = {"det_threshold": det_threshold}, {"content-type": "image/jpeg"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_ready(client, process)
                for _ in range(warmup):
                    client.post("/v1/pose", params=params, content=image, headers=headers).raise_for_status()
                process.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
                answer = client.post("/v1/pose", params=params, content=image, headers=headers)
                answer.raise_for_status()
                if not answer.json()["persons"]:
                    raise RuntimeError("the detector found nobody: pick an image with people (--image)")
                time.sleep(0.5)  # the response's last bytes and the request's bookkeeping
                process.send_signal(signal.SIGUSR2)
                while not out.exists():
                    time.sleep(0.1)
                time.sleep(0.2)
                return project_modules(json.loads(out.read_text()), repo.resolve())
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    """Command line: print and write the modules of one request's path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose service is measured")
    parser.add_argument("--image", type=Path, default=ROOT.parent / "shared/data/coco/images/000000018380.jpg")
    parser.add_argument("--det-threshold", type=float, default=0.1,
                        help="low enough that the shipped detector finds people in the default image")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/request_path.json")
    args = parser.parse_args()
    modules = request_path(args.repo.resolve(), args.image.read_bytes(), args.det_threshold)
    for number, module in enumerate(modules, 1):
        print(f"{number:3d}  {module}")
    print(f"{len(modules)} modules of {', '.join(PACKAGES)} run code for one POST /v1/pose")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    revision = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    args.out.write_text(json.dumps({"revision": revision, "image": args.image.name, "det_threshold": args.det_threshold,
                                    "modules": modules}, indent=1) + "\n")


if __name__ == "__main__":
    main()
