"""Graceful shutdown of a real ``effpose serve`` process: from SIGTERM on, new REST requests get 503 with
``Connection: close`` (kept-alive connections included) and new gRPC calls UNAVAILABLE, admitted requests finish,
and the process exits within the drain timeout (cutting what is still running then)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from effpose.v1 import pose_pb2, pose_pb2_grpc
from tests.service_support import assert_rich_status, call_status, encode

pytestmark = pytest.mark.slow  # real `effpose serve` processes stopped under load

JPEG = encode(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
BOX = [40.0, 20.0, 200.0, 230.0]
START_TIMEOUT_S = 120.0


@dataclass
class ServeProcess:
    process: subprocess.Popen
    http: str
    grpc: str
    log: Path

    def in_flight(self) -> float:
        for line in httpx.get(f"{self.http}/metrics", timeout=5).text.splitlines():
            if line.startswith("effpose_in_flight_requests "):
                return float(line.split()[1])
        return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(model: Path, tmp_path: Path, **settings: object) -> Iterator[ServeProcess]:
    """``effpose serve`` in a subprocess on free loopback ports (whole-image detector, 1 thread), ready."""
    http_port, grpc_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("EFFPOSE_")}
    env.update({"EFFPOSE_HOST": "127.0.0.1", "EFFPOSE_HTTP_PORT": str(http_port), "EFFPOSE_GRPC_PORT": str(grpc_port),
                "EFFPOSE_POSE_MODEL": str(model), "EFFPOSE_DETECTOR": "whole-image", "EFFPOSE_THREADS": "1",
                "EFFPOSE_LOG_LEVEL": "info", **{f"EFFPOSE_{k.upper()}": str(v) for k, v in settings.items()}})
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "effpose.cli", "serve"], env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    running = ServeProcess(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
    try:
        started = time.monotonic()
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() - started < START_TIMEOUT_S, "not ready in time"
            try:
                if httpx.get(f"{running.http}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def heavy(client: httpx.Client, boxes: int) -> httpx.Response:
    return client.post("/v1/pose", content=JPEG, headers={"content-type": "image/jpeg"},
                       params={"boxes": json.dumps([BOX] * boxes), "flip": "true"})


def start_in_flight(server: ServeProcess, count: int, boxes: int) -> tuple[list[threading.Thread], list]:
    """``count`` heavy requests on their own connections, returned once the server has admitted them all."""
    outcomes: list = []

    def one() -> None:
        try:
            with httpx.Client(base_url=server.http, timeout=60) as client:
                outcomes.append(heavy(client, boxes))
        except httpx.HTTPError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while server.in_flight() < count:
        assert time.monotonic() < deadline, "the requests were not admitted"
        time.sleep(0.02)
    return threads, outcomes


def test_sigterm_refuses_new_work_finishes_admitted_work_and_exits_in_time(random_onnx_a: Path,
                                                                          tmp_path: Path) -> None:
    drain_timeout = 20.0
    with serve(random_onnx_a, tmp_path, drain_timeout_s=drain_timeout, latency_target_s=60, request_timeout_s=18,
               max_batch_size=4) as server, httpx.Client(base_url=server.http, timeout=30) as kept_alive:
        assert kept_alive.get("/healthz").status_code == 200  # a connection opened before the signal
        threads, outcomes = start_in_flight(server, count=3, boxes=40)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.http, timeout=30) as fresh:
            while fresh.get("/readyz").status_code != 503:  # the signal reaches the event loop (a few ms)
                assert time.monotonic() - signalled < 5.0, "readiness did not turn false"
            refused_new = heavy(fresh, 1)
        refused_kept = heavy(kept_alive, 1)
        for refused in (refused_kept, refused_new):
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["reason"] == "draining"
            assert refused.headers["connection"] == "close" and refused.headers["retry-after"]
        with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as call:
            pose_pb2_grpc.PoseServiceStub(channel).Estimate(pose_pb2.EstimateRequest(image=JPEG), timeout=10)
        assert call.value.code() == grpc.StatusCode.UNAVAILABLE
        retry = assert_rich_status(call_status(call.value), grpc.StatusCode.UNAVAILABLE, "DRAINING")["RetryInfo"]
        assert retry.retry_delay.ToTimedelta().total_seconds() == float(refused_new.headers["retry-after"])

        for thread in threads:
            thread.join(60)
        assert [getattr(o, "status_code", o) for o in outcomes] == [200, 200, 200]  # admitted work finished
        assert all(len(o.json()["persons"]) == 40 for o in outcomes)
        exit_code = server.process.wait(timeout=drain_timeout + 5)
        took = time.monotonic() - signalled
    assert exit_code == 0, server.log.read_text()
    assert took <= drain_timeout + 1.0


def test_work_longer_than_the_drain_timeout_is_cut_and_the_process_exits_in_time(random_onnx_a: Path,
                                                                                tmp_path: Path) -> None:
    drain_timeout = 1.0
    with serve(random_onnx_a, tmp_path, drain_timeout_s=drain_timeout, latency_target_s=60,
               max_batch_size=2) as server:
        threads, _ = start_in_flight(server, count=2, boxes=100)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=drain_timeout + 10)
        took = time.monotonic() - signalled
        for thread in threads:
            thread.join(10)
    assert exit_code == 0, server.log.read_text()
    assert took <= drain_timeout + 1.0, (took, server.log.read_text()[-2000:])
