"""The inference core shared by the REST and gRPC frontends.

image bytes -> bounded decode -> detector stage (or client boxes) -> affine crops -> dynamic batcher ->
pose model -> keypoints in original-image pixels. CPU work (decode, detection, cropping) runs in a thread
pool and model work in the batcher's thread, so the event loop only coordinates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from effpose.detectors import PersonDetector, build_detector
from effpose.runtime import ModelInfo, PersonPose, PoseEstimator, person_score
from service.batcher import BatchStats, DynamicBatcher
from service.errors import BadRequest, DeadlineExceeded, Overloaded, ServiceError, Unavailable
from service.imaging import decode_image
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class PoseRequest:
    """One image to analyse. ``None`` options take the service defaults; ``timeout_s`` bounds the whole request."""

    image: bytes
    boxes: Sequence[Sequence[float]] | None = None
    det_threshold: float | None = None
    max_persons: int | None = None
    flip: bool | None = None
    timeout_s: float | None = None
    request_id: str | None = None


@dataclass
class PoseResult:
    """Everything a frontend needs to answer: persons in original-image pixels, sizes, per-stage timings."""

    request_id: str
    width: int
    height: int
    persons: list[PersonPose]
    timings_ms: dict[str, float]
    image: np.ndarray = field(repr=False)  # decoded BGR image (after EXIF orientation), for rendering


def validate_boxes(boxes: Sequence[Sequence[float]], width: int, height: int, limit: int) -> np.ndarray:
    """Client boxes as an (N, 4) float array; each must be finite, x1 < x2, y1 < y2 and overlap the image."""
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BadRequest(f"boxes must be a list of [x1, y1, x2, y2] numbers: {error}") from error
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise BadRequest(f"boxes must be a list of [x1, y1, x2, y2], got shape {list(array.shape)}")
    if len(array) > limit:
        raise BadRequest(f"{len(array)} boxes sent; at most {limit} per request")
    for index, (x1, y1, x2, y2) in enumerate(array):
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            raise BadRequest(f"box {index} has a non-finite coordinate")
        if not (x2 > x1 and y2 > y1):
            raise BadRequest(f"box {index} [{x1}, {y1}, {x2}, {y2}] must have x1 < x2 and y1 < y2")
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise BadRequest(f"box {index} [{x1}, {y1}, {x2}, {y2}] lies outside the {width}x{height} image")
    return array


class InferenceCore:
    """Pose model, detector stage and batcher behind one ``estimate`` coroutine."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self.estimator = PoseEstimator(settings.pose_model, providers=settings.providers,
                                       intra_op_threads=settings.threads, decode=settings.decode)
        self.detector: PersonDetector = build_detector(
            settings.detector_kind, settings.detector_model, layout=settings.detector_layout, nms_iou=settings.nms_iou,
            providers=settings.providers, intra_op_threads=settings.threads,
        )
        self.batcher = DynamicBatcher(
            self.estimator.run, max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0, max_queue_length=settings.max_queue_length,
            enabled=settings.batching, on_batch=self._record_batch,
        )
        self._cpu = ThreadPoolExecutor(max_workers=settings.cpu_workers, thread_name_prefix="effpose-cpu")
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.model.info({"pose_model": self.info.name, "pose_version": self.info.version,
                                 "pose_weights": self.info.weights, "detector": self.detector.name})

    @property
    def info(self) -> ModelInfo:
        """Metadata of the served pose model."""
        return self.estimator.info

    async def start(self) -> None:
        """Start the batcher and warm the models up (first ONNX Runtime calls allocate); then ready."""
        self.batcher.start()
        width, height = self.info.input_size
        blank = np.zeros((max(height, 64), max(width, 64), 3), np.uint8)
        await self._in_cpu(self.detector.detect, blank, 1.0, 1)
        await self.batcher.submit(np.zeros((1, 3, height, width), np.float32), time.monotonic() + 60.0)
        self.ready = True
        log.info("inference core ready: pose %s %s, detector %s", self.info.name, self.info.version, self.detector.name)

    async def stop(self) -> None:
        """Stop the batcher and the CPU pool (after :meth:`drain`)."""
        self.ready = False
        await self.batcher.stop()
        self._cpu.shutdown(wait=True)

    async def drain(self, timeout_s: float) -> None:
        """Readiness goes false, then wait (at most ``timeout_s``) for in-flight requests to finish."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained: %d request(s) still in flight", self.in_flight)

    @property
    def serving(self) -> bool:
        """Ready for traffic: models loaded and warm, not draining."""
        return self.ready and not self.draining

    async def estimate(self, request: PoseRequest) -> PoseResult:
        """Poses of every person in the request's image (client boxes when given, else the detector's)."""
        if not self.ready:
            raise Unavailable("models are still loading")
        if self.in_flight >= self.settings.max_in_flight:
            self.metrics.rejected.labels("in_flight_limit").inc()
            raise Overloaded(f"{self.in_flight} requests in flight, the limit is {self.settings.max_in_flight}",
                             retry_after=self.batcher.retry_after(), reason="in_flight_limit")
        started = time.perf_counter()
        timeout = self.settings.request_timeout_s if request.timeout_s is None else request.timeout_s
        deadline = time.monotonic() + timeout
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            return await self._estimate(request, started, deadline)
        except ServiceError as error:
            self.metrics.rejected.labels(error.reason).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.rejected.labels("cancelled").inc()
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def _estimate(self, request: PoseRequest, started: float, deadline: float) -> PoseResult:
        settings = self.settings
        det_threshold = settings.det_threshold if request.det_threshold is None else request.det_threshold
        max_persons = settings.max_persons if request.max_persons is None else request.max_persons
        flip = settings.flip if request.flip is None else request.flip
        if not (0.0 <= det_threshold <= 1.0) or math.isnan(det_threshold):
            raise BadRequest(f"det_threshold must be in [0, 1], got {det_threshold}")
        if not (1 <= max_persons <= settings.max_persons):
            raise BadRequest(f"max_persons must be in [1, {settings.max_persons}], got {max_persons}")
        timings: dict[str, float] = {}

        clock = time.perf_counter()
        image = await self._in_cpu(decode_image, request.image, settings.max_image_pixels)
        height, width = image.shape[:2]
        timings["decode"] = _ms_since(clock)

        clock = time.perf_counter()
        if request.boxes is not None:
            boxes = validate_boxes(request.boxes, width, height, settings.max_client_boxes)
            box_scores, source = np.ones(len(boxes)), "client"
        else:
            detections = await self._in_cpu(self.detector.detect, image, det_threshold, max_persons)
            boxes = np.asarray([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
            box_scores, source = np.asarray([d.score for d in detections]), "detector"
        timings["detect"] = _ms_since(clock)
        self._check_deadline(deadline)

        clock = time.perf_counter()
        prepared = await self._in_cpu(self.estimator.prepare, image, boxes)
        inputs = self.estimator.with_mirrored(prepared.tensor) if flip and len(boxes) else prepared.tensor
        heatmaps, queue_s = await self.batcher.submit(inputs, deadline) if len(inputs) else (self.estimator.run(inputs), 0.0)
        if flip and len(boxes):
            heatmaps = self.estimator.merge_mirrored(heatmaps)
        keypoints = self.estimator.decode(heatmaps, prepared.matrices)
        timings["queue"] = queue_s * 1000.0
        timings["pose"] = _ms_since(clock) - timings["queue"]

        persons = [
            PersonPose(box, float(score), kps, person_score(kps[:, 2], float(score)), source)
            for box, score, kps in zip(boxes, box_scores, keypoints)
        ]
        timings["total"] = _ms_since(started)
        self.metrics.observe_stages(timings)
        self.metrics.persons.observe(len(persons))
        return PoseResult(request.request_id or uuid.uuid4().hex, width, height, persons, timings, image)

    def _record_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.size)

    @staticmethod
    def _check_deadline(deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before pose estimation")

    async def _in_cpu(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, function, *args)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
