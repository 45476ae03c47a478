"""Load test of the effpose service over real HTTP and gRPC on loopback, with real COCO JPEGs.

    python benchmarks/service_load.py [--quick | --stress | --v2] [--duration S] [--boxes N]
                                      [--detector-model PATH | --whole-image] [--slo-ms MS]
                                      [--threads N] [--http HOST:PORT --grpc HOST:PORT] [--data DIR] [--out FILE]

Without --http/--grpc the script starts ``effpose serve`` itself: a subprocess on free loopback ports with
EFFPOSE_THREADS=--threads (EFFPOSE_DETECTOR_MODEL with --detector-model, EFFPOSE_DETECTOR=whole-image with
--whole-image), every other setting at its default (so the shipped person detector finds the people),
used once /readyz answers 200, stopped with SIGTERM at the end (exit code and shutdown time are recorded). With
--http/--grpc it drives that server instead and skips part 5, which needs a restart with other settings.

1. Closed loop: C workers each send a request, wait for its answer, then send the next, at C = 1, 4, 16, 64, over
   HTTP unary (httpx), gRPC unary and gRPC StreamEstimate (grpc.aio). Streaming opens C streams, each writing its
   next frame only after the previous frame's result came back: one frame in flight per stream (the server's
   stream window is not used), so a stream point compares with the unary point of the same C. Every point runs
   --warmup seconds unmeasured, then --duration seconds; req/s counts successful answers completed in that
   window, latencies are theirs, error shares are of all answers completed in it.
2. Open loop over HTTP: Poisson arrivals at 50/80/150/200% of the saturation rate (the best closed-loop HTTP
   req/s), drawn up front and fired at their times whatever the answers do. Latency counts from the scheduled
   arrival, so a lagging client cannot hide queueing (the client's lag is recorded too). After the last arrival,
   answers are awaited for at most --drain seconds; the rest count as unfinished. Achieved req/s and goodput
   (successful answers within --slo-ms) are per second of the whole run (first arrival to last answer).
3. Batch sizes: the server's effpose_batch_size histogram (/metrics), diffed over every point.
4. In process: service.core.InferenceCore in this process, same settings, images and concurrency (asyncio tasks),
   no network frontend: the frontends' overhead is the ratio of throughputs and the difference of latencies.
5. Batcher off (EFFPOSE_BATCHING=false, a second server) against the part-1 points, over HTTP at C = 1 and at the
   saturating C.

With --v2 the script compares the protocols instead (one server, parts 1 and 4 only, default C = 1 and 8): closed
loop over /v1/pose (HTTP), PoseService.Estimate (gRPC) and the Open Inference Protocol's effpose-pose model over
REST (binary tensor data extension, httpx) and gRPC (ModelInfer, grpc.aio), against the in-process core, and writes
benchmarks/results/service_load_v2.json. v2 answers carry no server timings, so their "outside core" is empty.

With --stress the script runs the overload, memory and shutdown checks instead (each on a fresh server, default
settings otherwise) and writes benchmarks/results/service_stress.json:

S1. Overload, open loop over HTTP: the capacity is the best closed-loop HTTP req/s at --concurrency; then Poisson
    arrivals at --loads times it (default 50%, 200%, 400%). Per point: goodput (answers per second), the admitted
    (answered) requests' latency percentiles, the share and latency of refusals (429) and their Retry-After, and
    /healthz latency probed every 50 ms on its own connection during the point.
S2. Memory: --big-images concurrent maximum-size images (EFFPOSE_MAX_IMAGE_PIXELS, PNG then JPEG, synthetic, well
    within the body limit) against a fresh server with the latency target at the deadline (so that only the memory
    budget decides); outcomes and the server's peak RSS (VmHWM) against the Kubernetes manifest's memory limit.
S3. SIGTERM under load: open loop at the capacity; SIGTERM after --duration/2 s while arrivals go on for 2 s;
    requests admitted before the signal must all be answered 200, later ones 503 (REST) and UNAVAILABLE (gRPC)
    until the admitted work is done and the listeners close (then connections are refused), and the process must
    exit within EFFPOSE_DRAIN_TIMEOUT_S + 1 s.

The client runs on the same CPUs as the server, so every point records the CPU shares of this process (client),
the server process and everything else, read from /proc. After every point the script waits for the server's
in-flight gauge to return to 0 (a stuck request would show) and records its RSS, threads and open files. Requests
are never retried (a 429 counts as a refusal). Everything is written to benchmarks/results/service_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import cv2
import grpc
import httpx
import numpy as np
from cpuinfo import get_cpu_info

from effpose.v1 import pose_pb2, pose_pb2_grpc
from effpose.v2 import inference_pb2
from service.core import InferenceCore, PoseRequest
from service.errors import ServiceError
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "service_load.json"
STRESS_OUT = REPO / "benchmarks" / "results" / "service_stress.json"
STRESS_LOADS = (0.5, 2.0, 4.0)
HEALTH_PROBE_S = 0.05
MANIFEST = REPO / "k8s" / "base" / "deployment.yaml"
CONCURRENCIES = (1, 4, 16, 64)
LOADS = (0.5, 0.8, 1.5, 2.0)
FRONTENDS = ("http", "grpc", "grpc-stream")
V2_FRONTENDS = ("http", "grpc", "v2-http", "v2-grpc")
V2_CONCURRENCIES = (1, 8)
V2_OUT = REPO / "benchmarks" / "results" / "service_load_v2.json"
V2_INFER_PATH = "/v2/models/effpose-pose/infer"
V2_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLIENT_TIMEOUT_S = 30.0  # the server's own deadline (request_timeout_s) is 10 s by default
READY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 15.0
SHUTDOWN_TIMEOUT_S = 60.0
JPEG = {"content-type": "image/jpeg"}
GRPC_OUTCOMES = {grpc.StatusCode.RESOURCE_EXHAUSTED: "429", grpc.StatusCode.UNAVAILABLE: "503",
                 grpc.StatusCode.DEADLINE_EXCEEDED: "504"}
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
REFUSALS = ("429", "503")

OpenLane = Callable[[], Awaitable["Lane"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EFFPOSE_DATA", REPO.parent / "shared" / "data")),
                        help="shared data folder (JPEGs from coco/images); default $EFFPOSE_DATA or ../shared/data")
    parser.add_argument("--http", help="HOST:PORT of a running server's REST frontend (default: start one)")
    parser.add_argument("--grpc", help="HOST:PORT of a running server's gRPC frontend (default: start one)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before every closed-loop point")
    parser.add_argument("--drain", type=float, default=15.0, help="open loop: seconds to await answers after arrivals")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS),
                        help="open-loop arrival rates as fractions of the saturation rate")
    parser.add_argument("--slo-ms", type=float, default=500.0, help="latency objective of the goodput")
    parser.add_argument("--boxes", type=int, default=0, help="send N client boxes per image (default: none)")
    parser.add_argument("--detector-model", type=Path, help="EFFPOSE_DETECTOR_MODEL, e.g. a YOLOX-nano ONNX")
    parser.add_argument("--whole-image", action="store_true",
                        help="EFFPOSE_DETECTOR=whole-image: no detector, every image is one person (the pose path)")
    parser.add_argument("--threads", type=int, default=2, help="EFFPOSE_THREADS (ONNX Runtime intra-op threads)")
    parser.add_argument("--images", type=int, default=0, help="use the first N images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival times")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s points, C = 1 and 16, loads 50%% 150%%")
    parser.add_argument("--v2", action="store_true",
                        help="compare /v1 with the Open Inference Protocol (REST and gRPC) and the in-process core")
    parser.add_argument("--stress", action="store_true",
                        help="overload, memory and SIGTERM checks instead (S1-S3); loads default 0.5 2 4")
    parser.add_argument("--big-images", type=int, default=8, help="--stress: concurrent maximum-size images")
    parser.add_argument("--out", type=Path, help="JSON file for all results (default benchmarks/results/"
                                                 "service_load.json, or service_stress.json with --stress)")
    args = parser.parse_args(argv)
    if args.stress and args.v2:
        parser.error("--stress and --v2 are different runs: give one")
    if args.out is None:
        args.out = STRESS_OUT if args.stress else V2_OUT if args.v2 else DEFAULT_OUT
    if args.v2 and args.concurrency == list(CONCURRENCIES):
        args.concurrency = list(V2_CONCURRENCIES)
    if args.stress and args.loads == list(LOADS):
        args.loads = list(STRESS_LOADS)
    if (args.http is None) != (args.grpc is None):
        parser.error("give both --http and --grpc, or neither (then the script starts the server)")
    if args.quick:
        args.duration, args.warmup, args.drain = 1.0, 0.3, 5.0
        args.concurrency, args.loads = [1, 16], [0.5, 1.5]
    return args


# --- workload -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """The requests to send, cycled by index: encoded JPEGs and their client boxes (None: the server's detector)."""

    names: list[str]
    images: list[bytes]
    boxes: list[list[list[float]]] | None
    expected_persons: int | None  # persons in every answer; None when a real detector decides

    def __len__(self) -> int:
        return len(self.images)

    def answer(self, persons: int, core_ms: float | None) -> Answer:
        """A successful answer: ``ok``, or ``wrong-persons`` when it holds an unexpected number of persons."""
        return Answer("ok" if self.expected_persons in (None, persons) else "wrong-persons", core_ms)


def grid_boxes(width: int, height: int, count: int) -> list[list[float]]:
    """``count`` boxes tiling the image in a near-square grid, each cell inset by 5%."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w, cell_h = width / columns, height / rows
    boxes = []
    for index in range(count):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        boxes.append([x + 0.05 * cell_w, y + 0.05 * cell_h, x + 0.95 * cell_w, y + 0.95 * cell_h])
    return boxes


def load_workload(data: Path, limit: int, boxes: int, detector: bool) -> Workload:
    """The COCO JPEGs of ``data`` (sorted, the first ``limit``; 0: all), with ``boxes`` grid boxes each if > 0.

    Image sizes for the boxes come from OpenCV's decode, which applies the EXIF orientation as the server does.
    """
    paths = sorted((data / "coco" / "images").glob("*.jpg"))[:limit or None]
    if not paths:
        raise SystemExit(f"no JPEGs under {data / 'coco' / 'images'}: give --data or EFFPOSE_DATA")
    images = [path.read_bytes() for path in paths]
    client_boxes = None
    if boxes > 0:
        shapes = [cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape for image in images]
        client_boxes = [grid_boxes(shape[1], shape[0], boxes) for shape in shapes]
    expected = boxes if boxes > 0 else (None if detector else 1)
    return Workload([path.name for path in paths], images, client_boxes, expected)


# --- lanes: one way of sending requests -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """How a request ended: ``ok``, an HTTP-style status such as ``429``, or what went wrong (``client-timeout``,
    ``conn-error``, ``grpc-INTERNAL``, ``wrong-persons``, ...); for answers, the core's own ``timings_ms.total``."""

    outcome: str
    core_ms: float | None = None
    retry_after: float | None = None  # seconds, from a refusal's Retry-After header


class Lane(Protocol):
    """Sends one request at a time."""

    async def call(self, index: int) -> Answer: ...

    async def close(self) -> None: ...


def grpc_failure(code: grpc.StatusCode) -> Answer:
    """gRPC codes named as their HTTP equivalents where the service maps them (429, 503, 504)."""
    return Answer(GRPC_OUTCOMES.get(code, f"grpc-{code.name}"))


def grpc_requests(workload: Workload) -> list[pose_pb2.EstimateRequest]:
    """One ``EstimateRequest`` per image, built once."""
    boxes = workload.boxes or [[] for _ in workload.images]
    return [pose_pb2.EstimateRequest(image=image, boxes=[pose_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for b in bs])
            for image, bs in zip(workload.images, boxes, strict=True)]


async def posted(client: httpx.AsyncClient, path: str, **request: Any) -> httpx.Response | Answer:
    """``POST path``: the 200 response, else the :class:`Answer` the failure makes (a timeout, a connection error,
    another status with its Retry-After)."""
    try:
        response = await client.post(path, **request)
    except httpx.TimeoutException:
        return Answer("client-timeout")
    except httpx.TransportError as error:
        return Answer(f"conn-error ({type(error).__name__})")
    if response.status_code != 200:
        retry_after = response.headers.get("retry-after")
        return Answer(str(response.status_code), retry_after=float(retry_after) if retry_after else None)
    return response


class HttpLane:
    """``POST /v1/pose`` with the raw JPEG body (and ``boxes`` as a JSON query parameter); one shared client."""

    def __init__(self, client: httpx.AsyncClient, workload: Workload):
        self.client, self.workload = client, workload
        self.params = [{"boxes": json.dumps(b)} for b in workload.boxes] if workload.boxes else None

    async def call(self, index: int) -> Answer:
        index %= len(self.workload)
        response = await posted(self.client, "/v1/pose", content=self.workload.images[index], headers=JPEG,
                                params=self.params[index] if self.params else None)
        if isinstance(response, Answer):
            return response
        body = response.json()
        return self.workload.answer(len(body["persons"]), body["timings_ms"]["total"])

    async def close(self) -> None:
        """Nothing: the client belongs to the caller."""


class RawHttpLane:
    """``POST /v1/pose`` like :class:`HttpLane`, written as pre-built HTTP/1.1 bytes on kept-alive asyncio
    connections and read back with no more parsing than the outcome needs: an open-loop generator at several
    hundred requests per second then takes a few percent of a CPU instead of httpx's tens, which matters when it
    shares the server's two cores (the overload part, S1)."""

    def __init__(self, server: Server, workload: Workload):
        self.host, port = server.http.rsplit(":", 1)
        self.port, self.workload = int(port), workload
        boxes = workload.boxes or [None] * len(workload)
        self.requests = [self._request(image, bs) for image, bs in zip(workload.images, boxes, strict=True)]
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def _request(self, image: bytes, boxes: list[list[float]] | None) -> bytes:
        query = "" if boxes is None else "?" + urllib.parse.urlencode({"boxes": json.dumps(boxes)})
        head = (f"POST /v1/pose{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(image)}\r\n\r\n")
        return head.encode() + image

    async def call(self, index: int) -> Answer:
        try:
            return await asyncio.wait_for(self._exchange(self.requests[index % len(self.requests)]), CLIENT_TIMEOUT_S)
        except TimeoutError:
            return Answer("client-timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            return Answer(f"conn-error ({type(error).__name__})")

    async def _exchange(self, request: bytes) -> Answer:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        if status != 200:
            retry_after = headers.get("retry-after")
            return Answer(str(status), retry_after=float(retry_after) if retry_after else None)
        answer = json.loads(body)
        return self.workload.answer(len(answer["persons"]), answer["timings_ms"]["total"])

    async def close(self) -> None:
        """Close the kept-alive connections."""
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class GrpcUnaryLane:
    """``PoseService.Estimate``; one shared channel."""

    def __init__(self, stub: pose_pb2_grpc.PoseServiceStub, workload: Workload):
        self.stub, self.workload, self.requests = stub, workload, grpc_requests(workload)

    async def call(self, index: int) -> Answer:
        try:
            response = await self.stub.Estimate(self.requests[index % len(self.requests)], timeout=CLIENT_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return grpc_failure(error.code())
        return self.workload.answer(len(response.persons), response.timings_ms["total"])

    async def close(self) -> None:
        """Nothing: the channel belongs to the caller."""


class GrpcStreamLane:
    """One ``StreamEstimate`` stream: writes a frame, reads its result, and only then writes the next."""

    def __init__(self, stub: pose_pb2_grpc.PoseServiceStub, workload: Workload,
                 requests: list[pose_pb2.EstimateRequest], outcomes: Counter[str]):
        self.stream = stub.StreamEstimate()
        self.workload, self.requests, self.stream_outcomes = workload, requests, outcomes
        self.frame_id = 0

    async def call(self, index: int) -> Answer:
        self.frame_id += 1
        frame = pose_pb2.Frame(frame_id=self.frame_id, request=self.requests[index % len(self.requests)])
        try:
            await self.stream.write(frame)
            result = await self.stream.read()
        except grpc.aio.AioRpcError as error:
            return grpc_failure(error.code())
        except asyncio.InvalidStateError:  # writing to a stream that already ended
            return Answer("stream-ended")
        if result is grpc.aio.EOF:
            return Answer("stream-ended")
        if result.frame_id != self.frame_id:
            return Answer("wrong-frame")
        if result.HasField("error"):
            return grpc_failure(GRPC_CODES[result.error.code])
        return self.workload.answer(len(result.response.persons), result.response.timings_ms["total"])

    async def close(self) -> None:
        """Half-close and record how the stream ended (its final status code)."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.stream.done_writing()
        self.stream_outcomes[(await self.stream.code()).name] += 1


def v2_body(image: bytes, boxes: list[list[float]] | None) -> tuple[bytes, int]:
    """An Open Inference Protocol request for effpose-pose with the binary tensor data extension: the body and
    the length of its JSON header."""
    raw = [len(image).to_bytes(4, "little") + image]
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw[0])}}]
    if boxes:
        raw.append(np.asarray(boxes, "<f4").tobytes())
        inputs.append({"name": "boxes", "datatype": "FP32", "shape": [len(boxes), 4],
                       "parameters": {"binary_data_size": len(raw[1])}})
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(raw), len(header)


class V2HttpLane:
    """``POST /v2/models/effpose-pose/infer``, JSON header plus binary tensors both ways; one shared client."""

    def __init__(self, client: httpx.AsyncClient, workload: Workload):
        self.client, self.workload = client, workload
        boxes = workload.boxes or [None] * len(workload)
        self.bodies = [v2_body(image, b) for image, b in zip(workload.images, boxes, strict=True)]

    async def call(self, index: int) -> Answer:
        body, header_length = self.bodies[index % len(self.bodies)]
        response = await posted(self.client, V2_INFER_PATH, content=body, headers={
            "content-type": "application/octet-stream", "inference-header-content-length": str(header_length)})
        if isinstance(response, Answer):
            return response
        header = json.loads(response.content[:int(response.headers["inference-header-content-length"])])
        keypoints = next(output for output in header["outputs"] if output["name"] == "keypoints")
        return self.workload.answer(keypoints["shape"][0], None)

    async def close(self) -> None:
        """Nothing: the client belongs to the caller."""


class V2GrpcLane:
    """``inference.GRPCInferenceService/ModelInfer`` on effpose-pose with raw tensors; one shared channel."""

    def __init__(self, channel: grpc.aio.Channel, workload: Workload):
        self.workload = workload
        self.infer = channel.unary_unary(V2_MODEL_INFER,
                                         request_serializer=inference_pb2.ModelInferRequest.SerializeToString,
                                         response_deserializer=inference_pb2.ModelInferResponse.FromString)
        boxes = workload.boxes or [None] * len(workload)
        self.requests = []
        for image, image_boxes in zip(workload.images, boxes, strict=True):
            request = inference_pb2.ModelInferRequest(model_name="effpose-pose")
            request.inputs.add(name="image", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
            if image_boxes:
                request.inputs.add(name="boxes", datatype="FP32", shape=[len(image_boxes), 4])
                request.raw_input_contents.append(np.asarray(image_boxes, "<f4").tobytes())
            self.requests.append(request)

    async def call(self, index: int) -> Answer:
        try:
            response = await self.infer(self.requests[index % len(self.requests)], timeout=CLIENT_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return grpc_failure(error.code())
        keypoints = next(output for output in response.outputs if output.name == "keypoints")
        return self.workload.answer(keypoints.shape[0], None)

    async def close(self) -> None:
        """Nothing: the channel belongs to the caller."""


class InProcessLane:
    """``InferenceCore.estimate`` called directly; service errors named by their HTTP status."""

    def __init__(self, core: InferenceCore, workload: Workload):
        self.core, self.workload = core, workload

    async def call(self, index: int) -> Answer:
        index %= len(self.workload)
        boxes = self.workload.boxes[index] if self.workload.boxes else None
        try:
            result = await self.core.estimate(PoseRequest(image=self.workload.images[index], boxes=boxes))
        except ServiceError as error:
            return Answer(str(error.http_status))
        return self.workload.answer(len(result.persons), result.timings_ms["total"])

    async def close(self) -> None:
        """Nothing: the core belongs to the caller."""


@contextlib.asynccontextmanager
async def frontend(kind: str, server: Server, workload: Workload,
                   stream_outcomes: Counter[str]) -> AsyncIterator[OpenLane]:
    """A fresh client (httpx client or gRPC channel) for one point, as a factory of lanes over it."""
    if kind in ("http", "v2-http"):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=f"http://{server.http}", timeout=CLIENT_TIMEOUT_S,
                                     limits=limits) as client:
            lane = HttpLane(client, workload) if kind == "http" else V2HttpLane(client, workload)
            yield _returning(lane)
        return
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = pose_pb2_grpc.PoseServiceStub(channel)
        if kind == "v2-grpc":
            yield _returning(V2GrpcLane(channel, workload))
            return
        if kind == "grpc":
            yield _returning(GrpcUnaryLane(stub, workload))
            return
        requests = grpc_requests(workload)

        async def open_stream() -> Lane:
            return GrpcStreamLane(stub, workload, requests, stream_outcomes)

        yield open_stream


def _returning(lane: Lane) -> OpenLane:
    """A lane factory that hands out the same (shared) lane every time."""
    async def open_lane() -> Lane:
        return lane
    return open_lane


# --- load generators ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One request: when it was sent (open loop: scheduled), when its answer came, what it was, how late it left."""

    start: float
    end: float
    answer: Answer
    lag: float = 0.0

    @property
    def ok(self) -> bool:
        return self.answer.outcome == "ok"

    @property
    def ms(self) -> float:
        return 1000.0 * (self.end - self.start)


async def closed_loop(open_lane: OpenLane, concurrency: int, warmup: float, duration: float) -> list[Sample]:
    """``concurrency`` workers sending back to back; the samples answered in the measured window."""
    begin = time.perf_counter() + warmup
    stop = begin + duration
    samples: list[Sample] = []

    async def worker(first: int) -> None:
        lane = await open_lane()
        index = first
        try:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                answer = await lane.call(index)
                samples.append(Sample(start, time.perf_counter(), answer))
                index += concurrency
        finally:
            await lane.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [s for s in samples if begin <= s.end < stop]


def poisson_arrivals(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (seconds) of a Poisson process of ``rate`` per second over ``duration`` seconds."""
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration * 1.5) + 50)
    arrivals = np.cumsum(gaps)
    return arrivals[arrivals < duration]


async def open_loop(lane: Lane, arrivals: np.ndarray, drain: float) -> tuple[list[Sample], int, float]:
    """Fire a request at every arrival offset regardless of answers; (samples, unfinished, seconds of the run).

    Requests still unanswered ``drain`` seconds after the last arrival are cancelled and counted as unfinished.
    """
    samples: list[Sample] = []

    async def fire(index: int, scheduled: float) -> None:
        sent = time.perf_counter()
        answer = await lane.call(index)
        samples.append(Sample(scheduled, time.perf_counter(), answer, sent - scheduled))

    origin = time.perf_counter()
    tasks = []
    for index, offset in enumerate(arrivals):
        delay = origin + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(index, origin + offset)))
    _, pending = await asyncio.wait(tasks, timeout=drain) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    last_answer = max((s.end for s in samples), default=origin) - origin
    last_arrival = float(arrivals[-1]) if len(arrivals) else 0.0
    return samples, len(pending), max(last_answer, last_arrival, 1e-9)


# --- statistics -----------------------------------------------------------------------------------------------------

def latency_percentiles(samples: list[Sample]) -> dict[str, float | None]:
    """p50/p95/p99 milliseconds of the successful samples, and p50/p99 of the time they spent outside the core
    (client latency minus the core's ``timings_ms.total``: network, frontend, client); None without any (the
    outside-core ones also when the answers carry no core timings, as v2 answers)."""
    answered = [s for s in samples if s.ok]
    if not answered:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "outside_core_p50_ms", "outside_core_p99_ms"))
    p50, p95, p99 = np.percentile([s.ms for s in answered], [50, 95, 99])
    outside = [s.ms - s.answer.core_ms for s in answered if s.answer.core_ms is not None]
    outside50, outside99 = np.percentile(outside, [50, 99]) if outside else (None, None)
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "outside_core_p50_ms": None if outside50 is None else float(outside50),
            "outside_core_p99_ms": None if outside99 is None else float(outside99)}


def outcome_shares(outcomes: Counter[str], total: int) -> dict[str, float]:
    """Shares of refusals (429, 503) and of every other failure among ``total`` requests."""
    total = max(total, 1)
    failed = sum(n for outcome, n in outcomes.items() if outcome != "ok")
    refused = {f"share_{code}": outcomes.get(code, 0) / total for code in REFUSALS}
    return {**refused, "share_other_errors": (failed - sum(outcomes.get(c, 0) for c in REFUSALS)) / total}


def summarize(samples: list[Sample], seconds: float) -> dict[str, Any]:
    """Requests, successful answers per second, latency percentiles and outcome shares."""
    outcomes = Counter(s.answer.outcome for s in samples)
    return {"requests": len(samples), "ok": outcomes.get("ok", 0), "rps": outcomes.get("ok", 0) / seconds,
            **latency_percentiles(samples), **outcome_shares(outcomes, len(samples)), "outcomes": dict(outcomes)}


# --- the server and what it reports ---------------------------------------------------------------------------------

@dataclass
class Server:
    """A server to drive: its addresses and, when this script started it, its process and log."""

    http: str
    grpc: str
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    shutdown: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings_fields(args: argparse.Namespace, batching: bool) -> dict[str, Any]:
    """The service settings this benchmark sets; everything else stays at its default."""
    fields: dict[str, Any] = {"threads": args.threads, "batching": batching}
    if args.detector_model is not None:
        fields["detector_model"] = args.detector_model.resolve()
    if args.whole_image:
        fields["detector"] = "whole-image"
    return fields


def settings_env(fields: dict[str, Any]) -> dict[str, str]:
    """``EFFPOSE_*`` environment variables of ``fields``."""
    return {f"EFFPOSE_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in fields.items()}


def logged_settings(log: Path) -> dict[str, Any]:
    """The settings the server printed at start (``settings: {...}``), i.e. those it really runs with."""
    for line in log.read_text(errors="replace").splitlines():
        if " settings: {" in line:
            return json.loads(line.split(" settings: ", 1)[1])
    return {}


async def wait_ready(server: Server, timeout: float) -> None:
    """Poll /readyz until it answers 200; fail early when the process exits."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=f"http://{server.http}", timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process is not None and server.process.returncode is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout:.0f} s")


async def stop_server(server: Server) -> None:
    """SIGTERM, then wait for the graceful shutdown; record its exit code and seconds (killed after a minute)."""
    process = server.process
    if process.returncode is not None:  # stopped already (the SIGTERM part does it itself)
        server.shutdown.setdefault("exit_code", process.returncode)
        return
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        code = await process.wait()
        server.shutdown["killed"] = True
    server.shutdown.update({"exit_code": code, "seconds": time.monotonic() - started})


@contextlib.asynccontextmanager
async def started_server(fields: dict[str, Any], log_dir: Path, name: str) -> AsyncIterator[Server]:
    """``effpose serve`` as a subprocess on free loopback ports with ``fields`` set, ready; stopped on exit."""
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, **settings_env(fields), "EFFPOSE_HOST": "127.0.0.1",
           "EFFPOSE_HTTP_PORT": str(http_port), "EFFPOSE_GRPC_PORT": str(grpc_port)}
    log = log_dir / f"{name}.log"
    with log.open("w") as log_file:
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "effpose.cli", "serve", env=env, cwd=REPO,
                                                       stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, log)
    try:
        await wait_ready(server, READY_TIMEOUT_S)
        server.settings = logged_settings(log)
        yield server
    finally:
        await stop_server(server)


def log_issues(log: Path) -> dict[str, Any]:
    """Counts of tracebacks, errors and warnings in a server log, with the first such lines."""
    lines = log.read_text(errors="replace").splitlines()
    flagged = [line for line in lines if any(word in line for word in ("Traceback", "ERROR", "WARNING", "Exception"))]
    return {"tracebacks": sum("Traceback" in line for line in lines), "error_lines": sum("ERROR" in line for line in lines),
            "warning_lines": sum("WARNING" in line for line in lines), "first": flagged[:20]}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as ``{'name{labels}': value}``."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def scrape(server: Server) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=f"http://{server.http}", timeout=10.0) as client:
        return parse_metrics((await client.get("/metrics")).text)


def batch_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Model batches formed between two scrapes: count, mean crops per batch and count per size range."""
    prefix = 'effpose_batch_size_bucket{le="'
    edges = sorted(float(key[len(prefix):-2]) for key in after if key.startswith(prefix) and "+Inf" not in key)
    buckets, lower, below = {}, 0, 0.0
    for edge in edges:
        key = f'{prefix}{edge}"}}'
        cumulative = after[key] - before.get(key, 0.0)
        label = str(int(edge)) if int(edge) == lower + 1 else f"{lower + 1}-{int(edge)}"
        buckets[label] = int(cumulative - below)
        lower, below = int(edge), cumulative
    count = after.get("effpose_batch_size_count", 0.0) - before.get("effpose_batch_size_count", 0.0)
    crops = after.get("effpose_batch_size_sum", 0.0) - before.get("effpose_batch_size_sum", 0.0)
    buckets[f">{lower}"] = int(count - below)
    return {"batches": int(count), "mean": crops / count if count else None, "buckets": buckets}


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """What the server saw between two scrapes: mean milliseconds per pipeline stage and per route (from the
    histograms' sums and counts) and refused requests by reason."""
    view: dict[str, dict[str, float]] = {"stage_mean_ms": {}, "route_mean_ms": {}, "rejected": {}}
    sections = {"effpose_stage_duration_seconds": "stage_mean_ms", "effpose_request_duration_seconds": "route_mean_ms"}
    rejected = 'effpose_rejected_requests_total{reason="'
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        name, _, labels = key.partition("{")
        if name.endswith("_count") and name[:-len("_count")] in sections and delta:
            metric = name[:-len("_count")]
            total = after[f"{metric}_sum{{{labels}"] - before.get(f"{metric}_sum{{{labels}", 0.0)
            view[sections[metric]][labels.split('"')[1]] = 1000.0 * total / delta
        elif key.startswith(rejected) and delta:
            view["rejected"][key[len(rejected):-2]] = delta
    return view


def process_info(pid: int | None) -> dict[str, Any]:
    """RSS (MiB), threads and open files of a process from /proc (empty for a server this script did not start)."""
    if pid is None:
        return {}
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


async def settle(server: Server) -> dict[str, Any]:
    """Wait (at most SETTLE_TIMEOUT_S) until the server reports nothing in flight and nothing queued."""
    started = time.monotonic()
    while True:
        metrics = await scrape(server)
        in_flight, queued = metrics.get("effpose_in_flight_requests", 0.0), metrics.get("effpose_queue_depth", 0.0)
        if (in_flight == 0 and queued == 0) or time.monotonic() - started > SETTLE_TIMEOUT_S:
            return {"in_flight": in_flight, "queue_depth": queued, "settle_s": time.monotonic() - started,
                    **process_info(server.pid)}
        await asyncio.sleep(0.1)


# --- CPU accounting -------------------------------------------------------------------------------------------------

def cpu_counters(server_pid: int | None) -> tuple[float, float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process, CPU s of the server process)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    server = 0.0
    if server_pid is not None:
        fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / ticks
    return time.perf_counter(), (user + nice + system + irq + softirq + steal) / ticks, sum(os.times()[:2]), server


def cpu_shares(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """Shares of the machine's CPU capacity used by the client (this process), the server and everything else."""
    wall, machine, client, server = (b - a for a, b in zip(before, after, strict=True))
    capacity = wall * (os.cpu_count() or 1)
    return {"client": client / capacity, "server": server / capacity,
            "others": max(0.0, machine - client - server) / capacity}


# --- the parts ------------------------------------------------------------------------------------------------------

async def measure_point(server: Server, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one point with the server's batch histogram, CPU shares and after-state around it."""
    before_metrics, before_cpu = await scrape(server), cpu_counters(server.pid)
    point = await run()
    cpu = cpu_shares(before_cpu, cpu_counters(server.pid))
    after_metrics = await scrape(server)
    point.update(batch=batch_histogram(before_metrics, after_metrics), server=server_view(before_metrics, after_metrics),
                 cpu=cpu, after=await settle(server))
    return point


async def closed_loop_point(server: Server, workload: Workload, kind: str, concurrency: int,
                            args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop point over one frontend."""
    streams: Counter[str] = Counter()

    async def run() -> dict[str, Any]:
        async with frontend(kind, server, workload, streams) as open_lane:
            samples = await closed_loop(open_lane, concurrency, args.warmup, args.duration)
        return {"frontend": kind, "concurrency": concurrency, **summarize(samples, args.duration)}

    point = await measure_point(server, run)
    if streams:
        point["stream_status"] = dict(streams)
    print_progress(point)
    return point


async def open_loop_point(server: Server, workload: Workload, load: float, saturation: float,
                          args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """One open-loop point over HTTP at ``load`` times the saturation rate."""
    rate = load * saturation
    arrivals = poisson_arrivals(rate, args.duration, rng)

    async def run() -> dict[str, Any]:
        async with frontend("http", server, workload, Counter()) as open_lane:
            samples, unfinished, seconds = await open_loop(await open_lane(), arrivals, args.drain)
        outcomes = Counter(s.answer.outcome for s in samples) + Counter({"unfinished": unfinished} if unfinished else {})
        good = sum(s.ok and s.ms <= args.slo_ms for s in samples)
        lags = [1000.0 * s.lag for s in samples]
        return {"frontend": "http", "load": load, "offered_rps": rate, "arrivals": len(arrivals), "seconds": seconds,
                "requests": len(arrivals), "ok": outcomes.get("ok", 0), "rps": outcomes.get("ok", 0) / seconds,
                "goodput_rps": good / seconds, **latency_percentiles(samples),
                **outcome_shares(outcomes, len(arrivals)), "unfinished": unfinished, "outcomes": dict(outcomes),
                "client_lag_p99_ms": float(np.percentile(lags, 99)) if lags else None}

    point = await measure_point(server, run)
    print_progress(point)
    return point


async def in_process_points(workload: Workload, fields: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    """Part 4: the inference core in this process, closed loop at every concurrency."""
    core = InferenceCore(Settings(**fields))
    await core.start()
    points = []
    try:
        lane = InProcessLane(core, workload)
        for concurrency in args.concurrency:
            before = cpu_counters(None)
            samples = await closed_loop(_returning(lane), concurrency, args.warmup, args.duration)
            point = {"frontend": "in-process", "concurrency": concurrency, **summarize(samples, args.duration),
                     "cpu": cpu_shares(before, cpu_counters(None))}
            points.append(point)
            print_progress(point)
    finally:
        await core.stop()
    return points


def print_progress(point: dict[str, Any]) -> None:
    where = f"C={point['concurrency']}" if "concurrency" in point else f"load {100 * point['load']:.0f}%"
    p50 = "-" if point["p50_ms"] is None else f"{point['p50_ms']:.0f}"
    p99 = "-" if point["p99_ms"] is None else f"{point['p99_ms']:.0f}"
    print(f"[{point['frontend']} {where}] {point['rps']:.1f} req/s, p50 {p50} ms, p99 {p99} ms, "
          f"outcomes {point['outcomes']}", file=sys.stderr, flush=True)


# --- tables ---------------------------------------------------------------------------------------------------------

def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def closed_loop_table(points: list[dict[str, Any]]) -> str:
    headers = ["frontend", "C", "answers", "req/s", "p50 ms", "p95 ms", "p99 ms", "outside core p50/p99 ms", "429 %",
               "503 %", "other err %", "mean batch", "CPU % client/server/others"]
    rows = [[p["frontend"], str(p["concurrency"]), str(p["requests"]), fmt(p["rps"]), fmt(p["p50_ms"]),
             fmt(p["p95_ms"]), fmt(p["p99_ms"]), outside_core(p), pct(p["share_429"]), pct(p["share_503"]),
             pct(p["share_other_errors"]), fmt(p.get("batch", {}).get("mean"), 2), cpu_column(p["cpu"])]
            for p in points]
    return markdown_table(headers, rows)


def cpu_column(cpu: dict[str, float]) -> str:
    return "/".join(f"{100 * cpu[who]:.0f}" for who in ("client", "server", "others"))


def outside_core(point: dict[str, Any]) -> str:
    return f"{fmt(point['outside_core_p50_ms'])} / {fmt(point['outside_core_p99_ms'])}"


def open_loop_table(points: list[dict[str, Any]], slo_ms: float) -> str:
    headers = ["load", "offered req/s", "arrivals", "achieved req/s", f"goodput (<= {slo_ms:.0f} ms) req/s",
               "p50 ms", "p95 ms", "p99 ms", "429 %", "503 %", "other err %", "unfinished", "client lag p99 ms",
               "outside core p50/p99 ms", "mean batch", "CPU % client/server/others"]
    rows = [[f"{100 * p['load']:.0f}%", fmt(p["offered_rps"]), str(p["arrivals"]), fmt(p["rps"]),
             fmt(p["goodput_rps"]), fmt(p["p50_ms"]), fmt(p["p95_ms"]), fmt(p["p99_ms"]), pct(p["share_429"]),
             pct(p["share_503"]), pct(p["share_other_errors"]), str(p["unfinished"]), fmt(p["client_lag_p99_ms"]),
             outside_core(p),
             fmt(p["batch"]["mean"], 2), cpu_column(p["cpu"])] for p in points]
    return markdown_table(headers, rows)


def batch_table(points: list[dict[str, Any]]) -> str:
    labels = list(points[0]["batch"]["buckets"])
    used = [label for label in labels if any(p["batch"]["buckets"][label] for p in points)]
    headers = ["run", "batches", "mean crops/batch"] + [f"size {label} %" for label in used]
    rows = []
    for p in points:
        batch = p["batch"]
        run = f"{p['frontend']} C={p['concurrency']}" if "concurrency" in p else f"http open {100 * p['load']:.0f}%"
        shares = [pct(batch["buckets"][label] / max(batch["batches"], 1)) for label in used]
        rows.append([run, str(batch["batches"]), fmt(batch["mean"], 2)] + shares)
    return markdown_table(headers, rows)


def overhead_table(in_process: list[dict[str, Any]], closed: list[dict[str, Any]],
                   kinds: tuple[str, ...] = FRONTENDS) -> str:
    by_key = {(p["frontend"], p["concurrency"]): p for p in closed}
    headers = ["C", "in-process req/s", "in-process p50 ms"]
    for kind in kinds:
        headers += [f"{kind} req/s", f"in-process/{kind} req/s", f"{kind} p50 - in-process p50 ms"]
    rows = []
    for base in in_process:
        row = [str(base["concurrency"]), fmt(base["rps"]), fmt(base["p50_ms"])]
        for kind in kinds:
            other = by_key.get((kind, base["concurrency"]))
            if other is None or not other["rps"] or base["p50_ms"] is None or other["p50_ms"] is None:
                row += ["-", "-", "-"]
                continue
            row += [fmt(other["rps"]), f"{base['rps'] / other['rps']:.2f}x", fmt(other["p50_ms"] - base["p50_ms"])]
        rows.append(row)
    return markdown_table(headers, rows)


def batching_table(on: list[dict[str, Any]], off: list[dict[str, Any]]) -> str:
    headers = ["batching", "C", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "other err %",
               "CPU % client/server/others"]
    rows = [[label, str(p["concurrency"]), fmt(p["rps"]), fmt(p["p50_ms"]), fmt(p["p95_ms"]), fmt(p["p99_ms"]),
             fmt(p["batch"]["mean"], 2), pct(p["share_other_errors"]), cpu_column(p["cpu"])]
            for label, points in (("on", on), ("off", off)) for p in points]
    return markdown_table(headers, rows)


# --- machine and report ---------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    return {"cpu_model": get_cpu_info()["brand_raw"], "cpus": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "versions": {"python": platform.python_version(),
                         **{name: version(name) for name in ("onnxruntime", "fastapi", "uvicorn", "grpcio", "httpx")}}}


@contextlib.asynccontextmanager
async def target(args: argparse.Namespace, fields: dict[str, Any], log_dir: Path, name: str,
                 report: dict[str, Any]) -> AsyncIterator[Server]:
    """The server to drive: the given addresses, or one started with ``fields`` (its log and shutdown reported)."""
    if args.http:
        yield Server(args.http, args.grpc)
        return
    async with started_server(fields, log_dir, name) as server:
        report["servers"][name] = {"settings": server.settings, "at_start": process_info(server.pid)}
        yield server
    report["servers"][name].update(shutdown=server.shutdown, log=log_issues(server.log))


async def run_parts(args: argparse.Namespace, workload: Workload, report: dict[str, Any], log_dir: Path) -> None:
    """Parts 1-5 in the order: closed loop and open loop on one server, batcher off on another, in process (with
    --v2: the closed loop over the v1 and v2 frontends, then in process)."""
    on_fields = settings_fields(args, batching=True)
    if args.v2:
        async with target(args, on_fields, log_dir, "v2", report) as server:
            for kind in V2_FRONTENDS:
                for concurrency in args.concurrency:
                    report["closed_loop"].append(await closed_loop_point(server, workload, kind, concurrency, args))
        report["in_process"] = await in_process_points(workload, on_fields, args)
        return
    async with target(args, on_fields, log_dir, "batching-on", report) as server:
        closed = report["closed_loop"]
        for kind in FRONTENDS:
            for concurrency in args.concurrency:
                closed.append(await closed_loop_point(server, workload, kind, concurrency, args))
        http = [p for p in closed if p["frontend"] == "http"]
        best = max(http, key=lambda p: p["rps"])
        report["saturation"] = {"rps": best["rps"], "concurrency": best["concurrency"]}
        rng = np.random.default_rng(args.seed)
        for load in args.loads:
            report["open_loop"].append(await open_loop_point(server, workload, load, best["rps"], args, rng))
    if not args.http:
        off_fields = settings_fields(args, batching=False)
        levels = sorted({1, best["concurrency"]} & set(args.concurrency))
        async with target(args, off_fields, log_dir, "batching-off", report) as server:
            for concurrency in levels:
                report["batching_off"].append(await closed_loop_point(server, workload, "http", concurrency, args))
    report["in_process"] = await in_process_points(workload, on_fields, args)


def print_tables(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.v2:
        print("\n## Closed loop: /v1/pose (http), PoseService (grpc), Open Inference Protocol REST and gRPC\n")
        print(closed_loop_table(report["closed_loop"]))
        print("\n## Protocol overhead: in-process core vs each frontend\n")
        print(overhead_table(report["in_process"], report["closed_loop"], V2_FRONTENDS))
        return
    print("\n## 1. Closed loop (HTTP unary, gRPC unary, gRPC streams with one frame in flight each)\n")
    print(closed_loop_table(report["closed_loop"]))
    saturation = report["saturation"]
    print(f"\nsaturation: {saturation['rps']:.1f} req/s (HTTP, C={saturation['concurrency']})")
    print(f"\n## 2. Open loop over HTTP (Poisson arrivals, SLO {args.slo_ms:.0f} ms)\n")
    print(open_loop_table(report["open_loop"], args.slo_ms))
    print("\n## 3. Model batch sizes (effpose_batch_size, diffed over each run)\n")
    print(batch_table(report["closed_loop"] + report["open_loop"]))
    print("\n## 4. Frontend overhead: in-process core vs the network frontends\n")
    print(overhead_table(report["in_process"], report["closed_loop"]))
    if report["batching_off"]:
        on = [p for p in report["closed_loop"] if p["frontend"] == "http"
              and p["concurrency"] in {q["concurrency"] for q in report["batching_off"]}]
        print("\n## 5. Batcher on vs off (HTTP)\n")
        print(batching_table(on, report["batching_off"]))
    for name, server in report["servers"].items():
        log = server.get("log", {})
        print(f"\nserver {name}: shutdown {server.get('shutdown')}, log: {log.get('tracebacks')} tracebacks, "
              f"{log.get('error_lines')} error lines, {log.get('warning_lines')} warnings")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    detector = Settings(**settings_fields(args, batching=True)).detector_kind != "whole-image"
    workload = load_workload(args.data, args.images, args.boxes, detector)
    report: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "settings_set": settings_env(settings_fields(args, batching=True)),
        "workload": {"images": len(workload), "mean_jpeg_kib": sum(map(len, workload.images)) / len(workload) / 1024,
                     "boxes_per_image": args.boxes, "expected_persons": workload.expected_persons},
        "servers": {}, "closed_loop": [], "open_loop": [], "batching_off": [], "in_process": [],
    }
    print(f"{get_cpu_info()['brand_raw']}, {os.cpu_count()} CPUs, load average {os.getloadavg()}; "
          f"{len(workload)} images", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="effpose-load-") as log_dir:
        await run_parts(args, workload, report, Path(log_dir))
    report.update(load_average_end=os.getloadavg(), wall_seconds=time.monotonic() - started)
    return report


# --- stress: overload, memory, SIGTERM (--stress) -------------------------------------------------------------------

def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max of millisecond values (None without any)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(max(values))}


def probe_health_process(url: str, stop: Any, results: Any) -> None:
    """In a process of its own (so that the load generator's own lag is not measured): GET ``url`` every
    HEALTH_PROBE_S on one kept-alive connection until ``stop`` is set; put the latencies (ms) on ``results``
    (a failed probe counts as CLIENT_TIMEOUT_S)."""
    latencies: list[float] = []
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(1000.0 * (time.perf_counter() - started) if ok else 1000.0 * CLIENT_TIMEOUT_S)
            time.sleep(HEALTH_PROBE_S)
    results.put(latencies)


@contextlib.asynccontextmanager
async def health_prober(server: Server) -> AsyncIterator[list[float]]:
    """/healthz latencies (ms), probed from another process while the body runs; the list fills in at exit."""
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    process = context.Process(target=probe_health_process, args=(f"http://{server.http}/healthz", stop, results))
    process.start()
    latencies: list[float] = []
    try:
        yield latencies
    finally:
        stop.set()
        latencies.extend(await asyncio.to_thread(results.get, True, 60))
        await asyncio.to_thread(process.join, 10)


async def overload_point(server: Server, workload: Workload, load: float, capacity: float,
                         args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """S1: one open-loop point at ``load`` times the capacity, with /healthz probed throughout."""
    arrivals = poisson_arrivals(load * capacity, args.duration, rng)

    async def run() -> dict[str, Any]:
        before = await scrape(server)
        lane = RawHttpLane(server, workload)
        async with health_prober(server) as health:
            try:
                samples, unfinished, seconds = await open_loop(lane, arrivals, args.drain)
            finally:
                await lane.close()
        refusals_in_server = refusal_histogram(before, await scrape(server))
        refused = [s for s in samples if s.answer.outcome == "429"]
        outcomes = Counter(s.answer.outcome for s in samples)
        outcomes += Counter({"unfinished": unfinished} if unfinished else {})
        return {"load": load, "offered_rps": load * capacity, "arrivals": len(arrivals), "seconds": seconds,
                "goodput_rps": outcomes.get("ok", 0) / seconds, "admitted": latency_percentiles(samples),
                "refused_share": len(refused) / max(len(arrivals), 1),
                "refused": percentiles_ms([s.ms for s in refused]),
                "refused_from_send": percentiles_ms([s.ms - 1000.0 * s.lag for s in refused]),
                "refused_in_server": refusals_in_server,
                "retry_after_s": sorted(Counter(s.answer.retry_after for s in refused).items()),
                "healthz": percentiles_ms(health), "outcomes": dict(outcomes), "unfinished": unfinished,
                "client_lag_p99_ms": float(np.percentile([1000 * s.lag for s in samples], 99)) if samples else None}

    point = await measure_point(server, run)
    print(f"[S1 load {100 * load:.0f}%] goodput {point['goodput_rps']:.2f} req/s, admitted p99 "
          f"{fmt(point['admitted']['p99_ms'])} ms, refused {pct(point['refused_share'])}% p99 "
          f"{fmt(point['refused']['p99_ms'])} ms, healthz p99 {fmt(point['healthz']['p99_ms'])} ms, "
          f"{point['outcomes']}", file=sys.stderr, flush=True)
    return point


def refusal_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Shares of the server's 429 answers on /v1/pose (between two scrapes) that took at most 5, 10, 25 and 50 ms
    inside the server (from the first ASGI middleware to the answer sent), from effpose_error_duration_seconds."""
    def count(le: str) -> float:
        key = f'effpose_error_duration_seconds_bucket{{code="429",le="{le}",route="/v1/pose"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    total = count("+Inf")
    return {f"<= {float(le) * 1000:g} ms": count(le) / total for le in ("0.005", "0.01", "0.025", "0.05")} if total \
        else {}


def big_images(pixels: int) -> dict[str, bytes]:
    """A synthetic PNG and JPEG of ``pixels`` pixels (3:2): gradients and blocks, small on the wire."""
    width = int(math.sqrt(pixels * 1.5))
    height = pixels // width
    x, y = np.arange(width)[None, :], np.arange(height)[:, None]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x * 255 // width).astype(np.uint8)
    image[..., 1] = (y * 255 // height).astype(np.uint8)
    image[..., 2] = ((x + y) % 256).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top = rng.integers(0, width - 200), rng.integers(0, height - 400)
        image[top:top + 400, left:left + 200] = rng.integers(0, 255, 3)
    return {fmt: cv2.imencode(f".{fmt}", image[..., ::-1])[1].tobytes() for fmt in ("png", "jpg")}


def manifest_memory_limit_mib() -> float | None:
    """The serving container's memory limit in the Kubernetes manifest (MiB), None when it has none."""
    import yaml  # noqa: PLC0415 - a dev dependency, needed only here

    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for document in yaml.safe_load_all(MANIFEST.read_text()):
        if document and document.get("kind") == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            value = str(container.get("resources", {}).get("limits", {}).get("memory", ""))
            unit = next((u for u in units if value.endswith(u)), None)
            return float(value[:-len(unit)]) * units[unit] if unit else None
    return None


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


async def memory_part(args: argparse.Namespace, fields: dict[str, Any], log_dir: Path,
                      report: dict[str, Any]) -> list[dict[str, Any]]:
    """S2: ``--big-images`` concurrent maximum-size images per format, each format on a fresh server."""
    max_pixels = Settings(**fields).max_image_pixels
    points = []
    for fmt, image in big_images(max_pixels).items():
        big_fields = {**fields, "latency_target_s": Settings(**fields).request_timeout_s}
        async with target(args, big_fields, log_dir, f"memory-{fmt}", report) as server:
            at_start = process_info(server.pid)
            async with httpx.AsyncClient(base_url=f"http://{server.http}", timeout=CLIENT_TIMEOUT_S,
                                         limits=httpx.Limits(max_connections=None)) as client:
                async def send() -> tuple[str, float]:
                    started = time.perf_counter()
                    try:
                        response = await client.post("/v1/pose", content=image,
                                                     headers={"content-type": f"image/{fmt.replace('jpg', 'jpeg')}"})
                        outcome = "ok" if response.status_code == 200 else str(response.status_code)
                    except httpx.HTTPError as error:
                        outcome = type(error).__name__
                    return outcome, 1000.0 * (time.perf_counter() - started)

                answers = await asyncio.gather(*(send() for _ in range(args.big_images)))
            point = {"format": fmt, "bytes": len(image), "pixels": max_pixels, "concurrent": args.big_images,
                     "outcomes": dict(Counter(outcome for outcome, _ in answers)),
                     "latency": percentiles_ms([ms for _, ms in answers]), "rss_at_start_mib": at_start["rss_mib"],
                     "peak_rss_mib": peak_rss_mib(server.pid), "after": await settle(server),
                     "memory_limit_mib": manifest_memory_limit_mib()}
        points.append(point)
        print(f"[S2 {fmt}] {point['outcomes']}, peak RSS {point['peak_rss_mib']:.0f} MiB (limit "
              f"{point['memory_limit_mib']} MiB)", file=sys.stderr, flush=True)
    return points


async def sigterm_part(args: argparse.Namespace, workload: Workload, fields: dict[str, Any], capacity: float,
                       log_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """S3: open loop at the capacity, SIGTERM halfway, arrivals going on for 2 s after it; gRPC calls after it."""
    before_s, after_s = args.duration / 2, 2.0
    rng = np.random.default_rng(args.seed + 1)
    arrivals = poisson_arrivals(capacity, before_s + after_s, rng)
    async with started_server(fields, log_dir, "sigterm") as server:
        drain_timeout = float(server.settings.get("drain_timeout_s", 20.0))

        async def signal_later() -> float:
            await asyncio.sleep(before_s)
            server.process.send_signal(signal.SIGTERM)
            return time.perf_counter()

        async def grpc_after(signalled: asyncio.Task) -> list[str]:
            await asyncio.wait({signalled})
            await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(server.grpc) as channel:
                lane = GrpcUnaryLane(pose_pb2_grpc.PoseServiceStub(channel), workload)
                return [(await lane.call(i)).outcome for i in range(5)]

        async with frontend("http", server, workload, Counter()) as open_lane:
            signalled = asyncio.create_task(signal_later())
            grpc_outcomes = asyncio.create_task(grpc_after(signalled))
            samples, unfinished, _ = await open_loop(await open_lane(), arrivals, args.drain)
        signal_time = await signalled
        code = await asyncio.wait_for(server.process.wait(), SHUTDOWN_TIMEOUT_S)
        exit_s = time.perf_counter() - signal_time
        grpc_after_signal = Counter(await grpc_outcomes)
    exited = signal_time + exit_s
    before = Counter(s.answer.outcome for s in samples if s.start + s.lag < signal_time)
    draining = Counter(s.answer.outcome for s in samples if signal_time <= s.start + s.lag < exited)
    after_exit = Counter(s.answer.outcome for s in samples if s.start + s.lag >= exited)  # nobody listens: refused
    result = {"sent_before_signal": dict(before), "sent_while_draining": dict(draining),
              "sent_after_exit": dict(after_exit), "unfinished": unfinished,
              "grpc_after_signal": dict(grpc_after_signal), "exit_code": code, "exit_s": exit_s,
              "drain_timeout_s": drain_timeout,
              # a refused connection (ConnectError: the listener closed once the admitted work was done) sent nothing
              "failed_admitted": sum(n for outcome, n in (before + draining).items()
                                     if outcome not in REFUSALS + ("ok",) and "ConnectError" not in outcome)}
    print(f"[S3] before SIGTERM {dict(before)}, while draining {dict(draining)}, after exit {dict(after_exit)}, "
          f"gRPC after {dict(grpc_after_signal)}, exit {code} after {exit_s:.2f} s", file=sys.stderr, flush=True)
    return result


async def stress_async(args: argparse.Namespace) -> dict[str, Any]:
    """S1-S3 (see the module docstring)."""
    fields = settings_fields(args, batching=True)
    workload = load_workload(args.data, args.images, args.boxes, Settings(**fields).detector_kind != "whole-image")
    report: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "servers": {}, "capacity": {}, "overload": [], "memory": [], "sigterm": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="effpose-stress-") as log_dir:
        async with target(args, fields, log_dir=Path(log_dir), name="overload", report=report) as server:
            closed = [await closed_loop_point(server, workload, "http", c, args) for c in args.concurrency]
            best = max(closed, key=lambda p: p["rps"])
            report["capacity"] = {"rps": best["rps"], "concurrency": best["concurrency"], "closed_loop": closed}
            rng = np.random.default_rng(args.seed)
            for load in args.loads:
                report["overload"].append(await overload_point(server, workload, load, best["rps"], args, rng))
        report["memory"] = await memory_part(args, fields, Path(log_dir), report)
        report["sigterm"] = await sigterm_part(args, workload, fields, best["rps"], Path(log_dir), report)
    report.update(load_average_end=os.getloadavg(), wall_seconds=time.monotonic() - started)
    return report


def print_stress_tables(report: dict[str, Any]) -> None:
    capacity = report["capacity"]
    print(f"\ncapacity: {capacity['rps']:.2f} req/s (closed loop HTTP, C={capacity['concurrency']})")
    print("\n## S1. Overload, open loop over HTTP\n")
    headers = ["load", "offered req/s", "arrivals", "goodput req/s", "goodput / capacity", "admitted p50 ms",
               "admitted p99 ms", "refused %", "refusal p50 / p99 ms", "refusal from send p50 / p99 ms",
               "Retry-After s", "/healthz p50 ms", "/healthz p99 ms", "client lag p99 ms", "other outcomes"]
    rows = [[f"{100 * p['load']:.0f}%", fmt(p["offered_rps"], 2), str(p["arrivals"]), fmt(p["goodput_rps"], 2),
             pct(p["goodput_rps"] / capacity["rps"]) + "%", fmt(p["admitted"]["p50_ms"]), fmt(p["admitted"]["p99_ms"]),
             pct(p["refused_share"]), f"{fmt(p['refused']['p50_ms'])} / {fmt(p['refused']['p99_ms'])}",
             f"{fmt(p['refused_from_send']['p50_ms'])} / {fmt(p['refused_from_send']['p99_ms'])}",
             ", ".join(f"{v:g} x{n}" for v, n in p["retry_after_s"] if v is not None) or "-",
             fmt(p["healthz"]["p50_ms"]), fmt(p["healthz"]["p99_ms"]), fmt(p["client_lag_p99_ms"]),
             str({k: v for k, v in p["outcomes"].items() if k not in ("ok", "429")} or "-")]
            for p in report["overload"]]
    print(markdown_table(headers, rows))
    for point in report["overload"]:
        if point.get("refused_in_server"):
            shares = ", ".join(f"{pct(v)}% {k}" for k, v in point["refused_in_server"].items())
            print(f"\n429s at {100 * point['load']:.0f}% inside the server: {shares}")
    print("\n## S2. Concurrent maximum-size images\n")
    headers = ["format", "MiB", "pixels", "concurrent", "outcomes", "latency p50 / max ms", "RSS at start MiB",
               "peak RSS MiB", "manifest limit MiB"]
    rows = [[p["format"], fmt(p["bytes"] / 2**20, 2), str(p["pixels"]), str(p["concurrent"]), str(p["outcomes"]),
             f"{fmt(p['latency']['p50_ms'], 0)} / {fmt(p['latency']['max_ms'], 0)}", fmt(p["rss_at_start_mib"], 0),
             fmt(p["peak_rss_mib"], 0), fmt(p["memory_limit_mib"], 0)] for p in report["memory"]]
    print(markdown_table(headers, rows))
    term = report["sigterm"]
    print("\n## S3. SIGTERM under load\n")
    print(f"sent before SIGTERM: {term['sent_before_signal']}; sent while draining: {term['sent_while_draining']}; "
          f"sent after the exit: {term['sent_after_exit']}; gRPC calls after SIGTERM: {term['grpc_after_signal']}; "
          f"failed admitted requests: {term['failed_admitted']}; exit code {term['exit_code']} "
          f"{term['exit_s']:.2f} s after SIGTERM (drain timeout {term['drain_timeout_s']:g} s)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stress:
        report = asyncio.run(stress_async(args))
        print_stress_tables(report)
    else:
        report = asyncio.run(main_async(args))
        print_tables(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
