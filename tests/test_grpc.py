"""The gRPC frontend end to end: a real grpc.aio server over a real inference core (random-weight ONNX model) on
loopback, called through the generated stubs and the example client; errors in the standard rich error model
(google.rpc.Status with ErrorInfo, RetryInfo and BadRequest details); plus the ordered, windowed stream machinery on
its own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from effpose.keypoints import KEYPOINT_NAMES, SKELETON
from effpose.pipeline import TopDownPipeline
from effpose.processing.smoothing import OneEuroParams, PoseTracker
from effpose.runtime import PoseEstimator
from effpose.v1 import pose_pb2, pose_pb2_grpc
from service.core import InferenceCore, PoseRequest, PoseResult
from service.grpc_server import SERVICE_NAME, build_grpc_server, route
from service.grpc_stream import ordered_window
from service.imaging import UNSUPPORTED, decode_image, encode_image
from service.metrics import ServiceMetrics
from service.settings import Settings
from tests.service_support import assert_rich_status, call_status

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
WINDOW = 2
HEAVY_BOXES = 100  # x2 with flip: 200 crops, seconds of model work on one thread


class GrpcServer:
    """A started gRPC server and its core on an event loop in a background thread (the tests are the clients)."""

    def __init__(self, **overrides: Any):
        self.settings = Settings(**{"host": "127.0.0.1", "threads": 1, "cpu_workers": 2, "log_level": "warning",
                                    "stream_window": WINDOW, "detector_model": None, **overrides})  # whole image
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-loop", daemon=True)
        self.thread.start()
        self.run(self._start())

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.metrics = ServiceMetrics()
        self.core = InferenceCore(self.settings, self.metrics)
        self.server, self.health = build_grpc_server(self.core, self.settings, self.metrics)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.health.set_serving(self.core.serving)
        await self.server.start()
        await self.core.start()
        await self.health.set_serving(self.core.serving)

    async def _stop(self) -> None:
        await self.server.stop(1.0)
        await self.core.stop()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def channel(self, *options: tuple[str, Any]) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=list(options))

    def count(self, code: str, method: str = "Estimate") -> float:
        """Answers the server recorded for ``method`` with status ``code``."""
        labels = {"route": route(method), "method": "grpc", "code": code}
        return self.metrics.registry.get_sample_value("effpose_requests_total", labels) or 0.0

    def sample(self, name: str, **labels: str) -> float:
        """A sample of the server's metrics registry (0 when absent)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def server(random_onnx_a: Path) -> Iterator[GrpcServer]:
    running = GrpcServer(pose_model=random_onnx_a)
    yield running
    running.close()


@pytest.fixture(scope="module")
def stub(server: GrpcServer) -> Iterator[pose_pb2_grpc.PoseServiceStub]:
    with server.channel() as channel:
        yield pose_pb2_grpc.PoseServiceStub(channel)


def noise_image(width: int, height: int, seed: int = 0, fmt: str = "jpeg") -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode_image(image, fmt)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def heavy_request() -> pose_pb2.EstimateRequest:
    """An image with many boxes and the flip test: seconds of model work, so that it can be stopped midway."""
    boxes = [pose_pb2.Box(x1=10 + i, y1=10, x2=200 + i, y2=230) for i in range(HEAVY_BOXES)]
    return pose_pb2.EstimateRequest(image=noise_image(320, 240), boxes=boxes, flip=True)


def points(person: pose_pb2.Person) -> np.ndarray:
    return np.array([[k.x, k.y, k.score] for k in person.keypoints])


# --- unary --------------------------------------------------------------------------------------------------------


@pytest.mark.data
def test_estimate_real_image(server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub, coco_val_person):
    path, box = coco_val_person
    data = path.read_bytes()
    ok_before = server.count("OK")

    detected = stub.Estimate(pose_pb2.EstimateRequest(image=data, request_id="photo-1"))
    [whole] = detected.persons  # the default detector stage: the whole image is one person
    assert detected.request_id == "photo-1"
    assert (whole.source, whole.box.x2, whole.box.y2) == ("detector", detected.width, detected.height)

    response = stub.Estimate(pose_pb2.EstimateRequest(image=data, boxes=[pose_pb2.Box(
        x1=box[0], y1=box[1], x2=box[2], y2=box[3])]))
    [person] = response.persons
    assert person.source == "client" and person.box_score == 1.0
    assert [k.name for k in person.keypoints] == list(KEYPOINT_NAMES)
    assert (response.model.name, response.model.detector) == (server.core.models.default.name, "whole-image")
    assert {"decode", "detect", "pose", "total"} <= set(response.timings_ms)
    keypoints = points(person)
    width, height = box[2] - box[0], box[3] - box[1]  # inside the padded crop around the box
    assert np.all((keypoints[:, 0] >= box[0] - width) & (keypoints[:, 0] <= box[2] + width))
    assert np.all((keypoints[:, 1] >= box[1] - height) & (keypoints[:, 1] <= box[3] + height))

    image = decode_image(data, server.settings.max_image_pixels).pixels
    assert (response.width, response.height) == (image.shape[1], image.shape[0])
    estimator = PoseEstimator(server.settings.pose_model, decode=server.settings.decode)
    sent_box = np.float32(box).astype(np.float64)  # what the message carried: Box holds 32-bit floats
    [expected] = TopDownPipeline(estimator).estimate(image, [sent_box], flip=False)
    np.testing.assert_allclose(keypoints, expected.keypoints, atol=1e-2)
    assert server.count("OK") == ok_before + 2


def test_get_model(stub: pose_pb2_grpc.PoseServiceStub):
    model = stub.GetModel(pose_pb2.GetModelRequest())
    assert list(model.keypoint_names) == list(KEYPOINT_NAMES)
    assert [(edge.a, edge.b) for edge in model.skeleton] == [tuple(pair) for pair in SKELETON]
    assert (model.input_width, model.input_height, model.weights, model.detector) == (192, 256, "random-init",
                                                                                      "whole-image")


def test_reflection_lists_the_service(server: GrpcServer):
    with server.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(database.get_services())
        service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
        assert {"Estimate", "StreamEstimate", "GetModel"} <= set(service.methods_by_name)


def test_image_larger_than_grpc_default_limit(stub: pose_pb2_grpc.PoseServiceStub):
    data = noise_image(1400, 1100, fmt="png")
    assert len(data) > 4 * 1024 * 1024
    response = stub.Estimate(pose_pb2.EstimateRequest(image=data), timeout=60)
    assert (response.width, response.height, len(response.persons)) == (1400, 1100, 1)


@pytest.mark.parametrize(("image", "options", "message", "reason", "field"), [
    (b"GIF89a but not really", {}, "not a supported image", "NOT_AN_IMAGE", "image"),
    (b"", {}, "image is empty", "NOT_AN_IMAGE", "image"),
    (None, {"boxes": [pose_pb2.Box(x1=100, y1=10, x2=50, y2=90)]}, "x1 < x2", "BAD_REQUEST", "boxes[0]"),
    (None, {"det_threshold": 5.0}, "det_threshold must be in [0, 1]", "BAD_REQUEST", "det_threshold"),
    (None, {"max_persons": 0}, "max_persons must be in", "BAD_REQUEST", "max_persons"),
])
def test_bad_input_is_invalid_argument_with_details_and_the_server_goes_on(
    server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub, image: bytes | None, options: dict, message: str,
    reason: str, field: str | None
):
    before = server.count("INVALID_ARGUMENT")
    request = pose_pb2.EstimateRequest(image=noise_image(160, 120) if image is None else image, **options)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Estimate(request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()
    assert_rich_status(call_status(failure.value), grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    wait_until(lambda: server.count("INVALID_ARGUMENT") == before + 1)  # recorded as the handler unwinds
    assert len(stub.Estimate(pose_pb2.EstimateRequest(image=noise_image(160, 120))).persons) == 1


def test_too_short_deadline_is_deadline_exceeded_and_stops_the_work(
    server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub
):
    before, batches = server.count("DEADLINE_EXCEEDED"), server.sample("effpose_batch_size_count")
    with pytest.raises(grpc.RpcError) as failure:
        stub.Estimate(heavy_request(), timeout=0.2)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: server.core.in_flight == 0 and server.count("DEADLINE_EXCEEDED") == before + 1)
    assert server.sample("effpose_batch_size_count") - batches < 2 * HEAVY_BOXES / server.settings.max_batch_size


def test_client_cancel_cancels_the_work(server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub):
    before, batches = server.count("CANCELLED"), server.sample("effpose_batch_size_count")
    cancelled = server.sample("effpose_rejected_requests_total", reason="cancelled")
    call = stub.Estimate.future(heavy_request(), timeout=60)
    wait_until(lambda: server.core.in_flight == 1)
    assert call.cancel()
    wait_until(lambda: server.core.in_flight == 0 and server.count("CANCELLED") == before + 1)
    assert server.sample("effpose_rejected_requests_total", reason="cancelled") == cancelled + 1
    assert server.sample("effpose_batch_size_count") - batches < 2 * HEAVY_BOXES / server.settings.max_batch_size


def test_health_serving_then_not_serving_and_new_calls_unavailable_after_draining(random_onnx_a: Path):
    own = GrpcServer(pose_model=random_onnx_a)
    try:
        with own.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service)).status

            assert status("") == status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
            own.run(own.health.set_serving(False))  # what the process does on SIGTERM, then it drains
            own.run(own.core.drain(1.0))
            assert not own.core.serving
            assert status("") == status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
            pose = pose_pb2_grpc.PoseServiceStub(channel)  # calls that arrive while draining are refused
            with pytest.raises(grpc.RpcError) as refused:
                pose.Estimate(pose_pb2.EstimateRequest(image=noise_image(64, 64)))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
            details = assert_rich_status(call_status(refused.value), grpc.StatusCode.UNAVAILABLE, "DRAINING")
            assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == 1.0
    finally:
        own.close()


def test_overload_is_resource_exhausted_with_the_retry_delay(
    server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(server.core.admission, "max_in_flight", 0)  # every new request is over the limit
    with pytest.raises(grpc.RpcError) as refused:
        stub.Estimate(pose_pb2.EstimateRequest(image=noise_image(64, 64)))
    unary = assert_rich_status(call_status(refused.value), grpc.StatusCode.RESOURCE_EXHAUSTED, "IN_FLIGHT_LIMIT")
    [result] = stub.StreamEstimate(iter([frame(4, noise_image(64, 64))]), timeout=60)
    streamed = assert_rich_status(result.error, grpc.StatusCode.RESOURCE_EXHAUSTED, "IN_FLIGHT_LIMIT")
    for details in (unary, streamed):  # the time the work in flight needs: the service's cost per request
        delay = details["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
        assert delay == pytest.approx(server.core.admission.cost_s, abs=1e-6)


# --- streams ------------------------------------------------------------------------------------------------------


def frame(frame_id: int, image: bytes, **fields: Any) -> pose_pb2.Frame:
    boxes = fields.pop("boxes", ())
    return pose_pb2.Frame(frame_id=frame_id, request=pose_pb2.EstimateRequest(image=image, boxes=boxes), **fields)


def test_stream_in_order_with_per_frame_errors(stub: pose_pb2_grpc.PoseServiceStub):
    good = noise_image(160, 120)
    inverted = [pose_pb2.Box(x1=100, y1=10, x2=50, y2=90)]
    frames = [frame(7, good), frame(3, good), frame(11, b"garbage"), frame(5, good, boxes=inverted),
              frame(9, noise_image(200, 100, seed=1)), frame(2, good)]
    results = list(stub.StreamEstimate(iter(frames), timeout=60))
    assert [r.frame_id for r in results] == [7, 3, 11, 5, 9, 2]
    assert [r.WhichOneof("outcome") for r in results] == ["response", "response", "error", "error", "response",
                                                          "response"]
    assert_rich_status(results[2].error, grpc.StatusCode.INVALID_ARGUMENT, "NOT_AN_IMAGE", "request.image")
    assert_rich_status(results[3].error, grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST", "request.boxes[0]")
    assert "not a supported image" in results[2].error.message and "x1 < x2" in results[3].error.message
    assert results[4].response.width == 200 and len(results[5].response.persons[0].keypoints) == 17
    np.testing.assert_allclose(points(results[0].response.persons[0]), points(results[5].response.persons[0]), atol=1e-3)


def test_stream_smoothing_is_the_one_euro_tracker_and_reduces_jitter(stub: pose_pb2_grpc.PoseServiceStub):
    images = [noise_image(240, 320, seed=seed) for seed in range(12)]  # every frame differs: keypoints jitter
    box = [pose_pb2.Box(x1=20, y1=20, x2=220, y2=300)]
    smoothing = pose_pb2.Smoothing(enabled=True, min_cutoff=1.0, beta=0.0)

    def run(options: pose_pb2.StreamOptions | None) -> list[pose_pb2.FrameResult]:
        frames = [frame(i, image, boxes=box, timestamp_s=i / 30.0, options=options if i == 0 else None)
                  for i, image in enumerate(images)]
        return list(stub.StreamEstimate(iter(frames), timeout=60))

    raw = run(None)
    smoothed = run(pose_pb2.StreamOptions(smoothing=smoothing))
    raw_points = np.array([points(r.response.persons[0]) for r in raw])
    smooth_points = np.array([points(r.response.persons[0]) for r in smoothed])
    assert {r.response.persons[0].track_id for r in raw} == {0}
    assert {r.response.persons[0].track_id for r in smoothed} == {1}

    tracker = PoseTracker(OneEuroParams(min_cutoff=1.0, beta=0.0))
    expected = [tracker.update(i / 30.0, np.array([[20, 20, 220, 300]]), p[None])[0][0]
                for i, p in enumerate(raw_points)]
    np.testing.assert_allclose(smooth_points, expected, atol=1e-2)
    jitter = {name: np.abs(np.diff(p[..., :2], axis=0)).mean() for name, p in (("raw", raw_points),
                                                                                 ("smooth", smooth_points))}
    assert jitter["smooth"] < 0.5 * jitter["raw"]


def test_stream_bad_timestamps_and_options_fail_only_their_frame(stub: pose_pb2_grpc.PoseServiceStub):
    image = noise_image(160, 120)
    enable = pose_pb2.StreamOptions(smoothing=pose_pb2.Smoothing(enabled=True))
    broken = pose_pb2.StreamOptions(smoothing=pose_pb2.Smoothing(enabled=True, min_cutoff=-1.0))
    frames = [frame(0, image, timestamp_s=1.0, options=enable), frame(1, image, timestamp_s=1.0),
              frame(2, image, timestamp_s=1.1, options=broken), frame(3, image, timestamp_s=1.2)]
    results = list(stub.StreamEstimate(iter(frames), timeout=60))
    assert [r.WhichOneof("outcome") for r in results] == ["response", "error", "error", "response"]
    assert "must increase" in results[1].error.message and "min_cutoff" in results[2].error.message
    assert_rich_status(results[1].error, grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST", "timestamp_s")
    assert_rich_status(results[2].error, grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST", "options.smoothing")
    assert results[3].response.persons[0].track_id == 1  # the stream kept its smoothing state


def test_stream_cancel_cancels_the_work(server: GrpcServer, stub: pose_pb2_grpc.PoseServiceStub):
    batches = server.sample("effpose_batch_size_count")
    call = stub.StreamEstimate(iter([pose_pb2.Frame(frame_id=i, request=heavy_request()) for i in range(3)]),
                               timeout=60)
    wait_until(lambda: server.core.in_flight >= 1)
    assert call.cancel()
    wait_until(lambda: server.core.in_flight == 0)
    assert server.sample("effpose_batch_size_count") - batches < 2 * HEAVY_BOXES / server.settings.max_batch_size


@pytest.mark.slow
def test_slow_reader_does_not_make_the_server_hold_more_than_the_window(
    server: GrpcServer, monkeypatch: pytest.MonkeyPatch
):
    started = 0
    estimate = server.core.estimate

    async def counting(request: PoseRequest) -> PoseResult:
        nonlocal started
        started += 1
        return await estimate(request)

    monkeypatch.setattr(server.core, "estimate", counting)
    image, total = noise_image(64, 64), 30
    # A reader with a small HTTP/2 receive window, so that unread results fill it after one or two.
    with server.channel(("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)) as channel:
        results = pose_pb2_grpc.PoseServiceStub(channel).StreamEstimate(
            iter([frame(i, image) for i in range(total)]), timeout=120)
        first = next(results)
        time.sleep(1.5)  # the server has long finished whatever it was allowed to take in
        held = started
        rest = list(results)
    assert held <= WINDOW + 2, f"server took in {held} frames while the client read 1 (window {WINDOW})"
    assert [r.frame_id for r in [first, *rest]] == list(range(total)) and started == total


# --- the window on its own ----------------------------------------------------------------------------------------


async def numbers(count: int, log: list[str] | None = None, fail_after: int | None = None):
    for number in range(count):
        if number == fail_after:
            raise RuntimeError("source broke")
        if log is not None:
            log.append("read")
        yield number


def test_ordered_window_keeps_order_and_bounds_what_it_holds():
    async def scenario() -> None:
        log: list[str] = []
        running = peak = 0

        async def process(number: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.002 * (10 - number))  # later items finish first
            running -= 1
            return number * 10

        results = []
        async for result in ordered_window(numbers(10, log), process, window=3):
            log.append("taken")
            results.append(result)
            await asyncio.sleep(0.01)  # a slow consumer
        assert results == [n * 10 for n in range(10)]
        assert peak <= 3
        held = max(log[:i].count("read") - log[:i].count("taken") for i in range(len(log) + 1))
        assert held == 3

    asyncio.run(scenario())


def test_ordered_window_cancels_work_when_left_and_reports_source_errors():
    async def scenario() -> None:
        cancelled = 0

        async def stuck(number: int) -> int:
            nonlocal cancelled
            if number == 0:
                return 0
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return number

        results = ordered_window(numbers(10), stuck, window=4)
        assert await anext(results) == 0
        await asyncio.sleep(0.01)
        await results.aclose()
        await asyncio.sleep(0.01)
        assert cancelled == 3  # items 1..3 were read into the window with 0; none is left running

        async def echo(number: int) -> int:
            return number

        received = []
        with pytest.raises(RuntimeError, match="source broke"):
            async for number in ordered_window(numbers(10, fail_after=3), echo, window=2):
                received.append(number)
        assert received == [0, 1, 2]

    asyncio.run(scenario())


# --- the example client -------------------------------------------------------------------------------------------


def run_example(server: GrpcServer, *args: str | Path) -> subprocess.CompletedProcess:
    """``examples/grpc_client.py`` against the test server, as a user runs it."""
    return subprocess.run([sys.executable, str(REPO / "examples" / "grpc_client.py"),
                           "--target", f"127.0.0.1:{server.port}", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


@pytest.mark.slow
def test_example_client_prints_poses_and_rich_errors(server: GrpcServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    photo, junk = tmp_path / "photo.jpg", tmp_path / "junk.jpg"
    photo.write_bytes(noise_image(160, 120))
    junk.write_bytes(b"not an image at all")

    unary = run_example(server, photo, "--box", "10,10,150,110")
    assert unary.returncode == 0, unary.stderr
    lines = unary.stdout.splitlines()
    assert lines[0].startswith("person (client) score") and len(lines) == 1 + len(KEYPOINT_NAMES)

    refused = run_example(server, junk)
    assert refused.returncode == 1 and not refused.stdout
    assert refused.stderr.splitlines() == [f"INVALID_ARGUMENT: {UNSUPPORTED}", "  reason NOT_AN_IMAGE (effpose)",
                                           f"  field image: {UNSUPPORTED}"]

    streamed = run_example(server, "--stream", photo, junk, photo)
    assert streamed.returncode == 0, streamed.stderr
    frames = streamed.stdout.splitlines()
    assert frames[0].startswith("frame 0: 1 person(s)") and frames[-1].startswith("frame 2: 1 person(s)")
    assert frames[1:4] == [f"frame 1: INVALID_ARGUMENT: {UNSUPPORTED}", "  reason NOT_AN_IMAGE (effpose)",
                           f"  field request.image: {UNSUPPORTED}"]

    monkeypatch.setattr(server.core.admission, "max_in_flight", 0)
    overloaded = run_example(server, photo)
    assert overloaded.returncode == 1
    message, reason, retry = overloaded.stderr.splitlines()
    assert message.startswith("RESOURCE_EXHAUSTED: ") and reason == "  reason IN_FLIGHT_LIMIT (effpose)"
    assert retry.startswith("  retry after ") and float(retry.split()[2]) > 0
