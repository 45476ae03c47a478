"""The inference core shared by the REST and gRPC frontends.

admission (by the work in flight) -> the requested model -> image header -> pixel budget -> bounded decode (large
JPEGs reduced) -> detector stage (or client boxes, clipped to the image) -> affine crops -> the model's dynamic
batcher -> pose model -> keypoints in original-image pixels. CPU work (decode, detection, cropping, heatmap
decoding, rendering) runs in a thread pool (heatmap decoding in a thread of its own, so that answers are not held
up behind new requests) and model work in the batchers' threads, so the event loop only coordinates and answers at
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from effpose.detectors import PersonDetector, build_detector
from effpose.draw import draw_poses
from effpose.pipeline import PersonPose, PreparedImage, TopDownPipeline
from effpose.runtime import NotAPoseModel, PoseEstimator
from service.admission import PixelBudget, Ticket, WorkAdmission
from service.batcher import BatchStats, DynamicBatcher
from service.errors import BadRequest, DeadlineExceeded, ServiceError, Unavailable
from service.imaging import DecodedImage, decode_image, encode_image, probe_image
from service.metrics import ServiceMetrics
from service.models import ServedModel, ServedModels, model_files
from service.settings import Settings
from service.threads import lower_current_thread, lowering_new_threads

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
    model: str | None = None  # a served model's name; None: the default model
    model_version: str | None = None  # when given, the model's version must be this


@dataclass
class PoseResult:
    """Everything a frontend needs to answer: persons in original-image pixels, sizes, per-stage timings."""

    request_id: str
    width: int
    height: int
    persons: list[PersonPose]
    timings_ms: dict[str, float]
    model: ServedModel = field(repr=False)  # the model that answered
    image: DecodedImage = field(repr=False)  # the decoded image (upright, maybe reduced), for rendering


def validate_boxes(boxes: Sequence[Sequence[float]], width: int, height: int, limit: int) -> np.ndarray:
    """Client boxes as an (N, 4) float array clipped to the image.

    Each must be four finite numbers with x1 < x2 and y1 < y2 that overlap the image by at least one pixel each
    way; anything else raises :class:`BadRequest`. Clipping bounds every coordinate the service computes with (a
    box of 1e300 pixels is the whole image, not an overflow).
    """
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise BadRequest(f"boxes must be a list of [x1, y1, x2, y2] numbers: {error}", field="boxes") from error
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise BadRequest(f"boxes must be a list of [x1, y1, x2, y2], got shape {list(array.shape)}", field="boxes")
    if len(array) > limit:
        raise BadRequest(f"{len(array)} boxes sent; at most {limit} per request", field="boxes")
    clipped = np.clip(array, 0.0, [width, height, width, height])
    for index, ((x1, y1, x2, y2), (cx1, cy1, cx2, cy2)) in enumerate(zip(array, clipped)):
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            raise BadRequest(f"box {index} has a non-finite coordinate", field=f"boxes[{index}]")
        if not (x2 > x1 and y2 > y1):
            raise BadRequest(f"box {index} [{x1}, {y1}, {x2}, {y2}] must have x1 < x2 and y1 < y2",
                             field=f"boxes[{index}]")
        if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
            raise BadRequest(f"box {index} [{x1}, {y1}, {x2}, {y2}] does not cover a pixel of the {width}x{height} "
                             "image", field=f"boxes[{index}]")
    return clipped


def boxes_to_original(boxes: np.ndarray, image: DecodedImage) -> np.ndarray:
    """Boxes (x1, y1, x2, y2: pixel edges) of the decoded, possibly reduced, image in original-image pixels."""
    return boxes * [image.scale_x, image.scale_y, image.scale_x, image.scale_y]


def boxes_to_decoded(boxes: np.ndarray, image: DecodedImage) -> np.ndarray:
    """Original-image boxes in the pixels of the decoded, possibly reduced, image."""
    return boxes / [image.scale_x, image.scale_y, image.scale_x, image.scale_y]


def keypoints_to_original(keypoints: np.ndarray, image: DecodedImage) -> np.ndarray:
    """Keypoints (N, J, 3: x, y at pixel centres, score) of the decoded image in original-image pixels."""
    if not image.reduced:
        return keypoints
    scaled = keypoints.copy()
    scaled[..., 0] = (keypoints[..., 0] + 0.5) * image.scale_x - 0.5
    scaled[..., 1] = (keypoints[..., 1] + 0.5) * image.scale_y - 0.5
    return scaled


class InferenceCore:
    """Pose models (:mod:`service.models`), detector stage and batchers behind :meth:`admit` and the ``estimate``
    coroutine. The admission, the pixel budget and the CPU pool are shared by all models."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        nice = settings.worker_niceness
        self.detector: PersonDetector = lowering_new_threads(nice, lambda: build_detector(
            settings.detector_kind, settings.detector_model, layout=settings.detector_layout, nms_iou=settings.nms_iou,
            providers=settings.providers, intra_op_threads=settings.threads,
        ))
        self.models = ServedModels(self._load_models(), settings.default_model, settings.pose_model)
        self.admission = WorkAdmission(settings.latency_target_s, settings.max_in_flight)
        self.pixels = PixelBudget(settings.pixel_budget)
        self._cpu = ThreadPoolExecutor(max_workers=settings.cpu_workers, thread_name_prefix="effpose-cpu",
                                       initializer=lower_current_thread(nice))
        # Requests whose heatmaps are back finish on a thread of their own instead of queueing behind the CPU stages
        # of newer requests: at saturation that wait was the tail of the latency (C=16 p99 +15%, docs/benchmarks.md).
        self._finishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="effpose-finish",
                                             initializer=lower_current_thread(nice))
        self.ready = False
        self.draining = False
        self.metrics.queue_depth.set_function(lambda: sum(model.batcher.depth for model in self.models))
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.metrics.decoded_pixels.set_function(lambda: self.pixels.used)
        self.metrics.request_cost.set_function(lambda: self.admission.cost_s)
        self.metrics.admission_calibration.set_function(lambda: self.admission.calibration)
        default = self.models.default
        self.metrics.model.info({"pose_model": default.name, "pose_version": default.version,
                                 "pose_weights": default.info.weights, "models": ",".join(m.name for m in self.models),
                                 "detector": self.detector.name})

    def _load_models(self) -> list[ServedModel]:
        """A pipeline and a batcher for every model file (:func:`~service.models.model_files`); a repository's
        files that are not pose models (its person detector) are skipped."""
        settings, nice = self.settings, self.settings.worker_niceness
        models = []
        for name, path in model_files(settings).items():
            try:
                estimator = lowering_new_threads(nice, lambda: PoseEstimator(
                    path, providers=settings.providers, intra_op_threads=settings.threads, decode=settings.decode))
            except NotAPoseModel as error:
                if settings.model_repository is None:
                    raise ValueError(f"{path}: {error}") from error
                log.info("model repository: skipping %s (%s)", path.name, error)
                continue
            pipeline = TopDownPipeline(estimator, self.detector)
            batcher = DynamicBatcher(
                pipeline.run, max_batch_size=settings.max_batch_size,
                max_queue_delay_s=settings.max_queue_delay_ms / 1000.0, max_queue_length=settings.max_queue_length,
                enabled=settings.batching, on_batch=self._record_batch, thread_initializer=lower_current_thread(nice),
                wait_only_when_announced=True,
            )
            models.append(ServedModel(name, path, pipeline, batcher))
        return models

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self.admission.in_flight

    async def start(self) -> None:
        """Start the batchers and warm the models up (first ONNX Runtime calls allocate); then ready.

        The second warm-up round is timed: the slowest model's seeds the admission's cost per request until real
        ones are measured.
        """
        solo_cost = 0.0
        for model in self.models:
            model.batcher.start()
            width, height = model.info.input_size
            blank = np.zeros((max(height, 64), max(width, 64), 3), np.uint8)
            for _ in range(2):
                started = time.perf_counter()
                await self._in_cpu(self.detector.detect, blank, 1.0, 1)
                await model.batcher.submit(np.zeros((1, 3, height, width), np.float32), time.monotonic() + 60.0)
            solo_cost = max(solo_cost, time.perf_counter() - started)
        self.admission.record_solo_cost(solo_cost)
        self.ready = True
        log.info("inference core ready: pose %s (default %s), detector %s",
                 ", ".join(f"{m.name} {m.version}" for m in self.models), self.models.default.name, self.detector.name)

    async def stop(self) -> None:
        """Stop the batchers and the CPU pool (after :meth:`drain`)."""
        self.ready = False
        for model in self.models:
            await model.batcher.stop()
        for pool in (self._cpu, self._finishing):
            pool.shutdown(wait=False, cancel_futures=True)  # queued CPU work of cut requests never starts

    def begin_drain(self) -> None:
        """From now on refuse new requests (503 / UNAVAILABLE) and report not ready; admitted ones go on."""
        self.draining = True

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests, then wait (at most ``timeout_s``) for the admitted ones to finish."""
        self.begin_drain()
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.info("drained: %d request(s) still in flight", self.in_flight)

    @property
    def serving(self) -> bool:
        """Ready for traffic: models loaded and warm, not draining."""
        return self.ready and not self.draining

    def admit(self, timeout_s: float | None = None) -> Ticket:
        """Admit one request (cheap: nothing is read or decoded), or refuse it at once.

        Raises :class:`Unavailable` while loading or draining and :class:`Overloaded` when the work in flight
        would not let it finish within its deadline and the latency target. ``timeout_s`` defaults to the
        service's request timeout. Release the ticket, or pass it to :meth:`estimate`, which releases it.
        """
        try:
            if self.draining:
                raise Unavailable("the service is shutting down: retry on another instance", reason="draining")
            if not self.ready:
                raise Unavailable("models are still loading", reason="loading")
            return self.admission.admit(self.settings.request_timeout_s if timeout_s is None else timeout_s)
        except ServiceError as error:
            self.metrics.rejected.labels(error.reason).inc()
            raise

    async def estimate(self, request: PoseRequest, ticket: Ticket | None = None) -> PoseResult:
        """Poses of every person in the request's image (client boxes when given, else the detector's).

        Without a ``ticket`` the request is admitted first (see :meth:`admit`); the ticket is released when done.
        """
        ticket = ticket or self.admit(request.timeout_s)
        return await self._admitted(ticket, self._estimate(request, ticket.deadline))

    async def run_network(self, model: ServedModel, crops: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """A served model's raw output (heatmaps) for a batch of normalised crops (B, 3, H, W) float32, computed in
        the model's batches; admitted like :meth:`estimate` (``timeout_s`` defaults to the request timeout)."""
        limit = self.settings.max_client_boxes
        if len(crops) > limit:
            raise BadRequest(f"{len(crops)} crops sent; at most {limit} per request", field="input")
        ticket = self.admit(timeout_s)
        if not len(crops):
            return await self._admitted(ticket, self._in_cpu(model.pipeline.run, crops))
        work = model.batcher.submit(np.ascontiguousarray(crops, np.float32), ticket.deadline)
        heatmaps, _ = await self._admitted(ticket, work)
        return heatmaps

    async def _admitted(self, ticket: Ticket, work: Awaitable[T]) -> T:
        """Await ``work`` under ``ticket`` (released when done, as a success when it is) and count refusals and
        cancellations."""
        try:
            result = await work
            ticket.release(succeeded=True)
            return result
        except ServiceError as error:
            self.metrics.rejected.labels(error.reason).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.rejected.labels("cancelled").inc()
            raise
        finally:
            ticket.release()

    async def _estimate(self, request: PoseRequest, deadline: float) -> PoseResult:
        started = time.perf_counter()
        model = self.models.get(request.model, request.model_version)
        det_threshold, max_persons, flip = self._options(request)
        timings: dict[str, float] = {}

        header = probe_image(request.image, self.settings.max_image_pixels, self.settings.jpeg_draft_pixels)
        await self.pixels.acquire(header.decoded_pixels, deadline)
        try:
            self._check_deadline(deadline)
            with model.batcher.expecting():  # a batch forming meanwhile may wait for this request's crops
                image, prepared = await self._in_cpu(self._cpu_stage, model.pipeline, request, det_threshold,
                                                     max_persons, flip, timings)
            self._check_deadline(deadline)
            clock = time.perf_counter()
            heatmaps, queue_s = (await model.batcher.submit(prepared.tensor, deadline) if len(prepared)
                                 else (prepared.tensor, 0.0))
            persons = (await self._in_cpu(self._finish, model.pipeline, prepared, heatmaps, image,
                                          pool=self._finishing) if len(prepared) else [])
        finally:
            self.pixels.release(header.decoded_pixels)
        timings["queue"] = queue_s * 1000.0
        timings["pose"] += _ms_since(clock) - timings["queue"]
        timings["total"] = _ms_since(started)
        self.metrics.observe_stages(timings)
        self.metrics.persons.observe(len(persons))
        return PoseResult(request.request_id or uuid.uuid4().hex, image.width, image.height, persons, timings, model,
                          image)

    def _options(self, request: PoseRequest) -> tuple[float, int, bool]:
        """The request's detector threshold, person cap and flip test, defaults filled in and checked."""
        settings = self.settings
        det_threshold = next(value for value in (request.det_threshold, settings.det_threshold,
                                                 self.detector.default_threshold) if value is not None)
        max_persons = settings.max_persons if request.max_persons is None else request.max_persons
        if not (0.0 <= det_threshold <= 1.0):  # also refuses NaN
            raise BadRequest(f"det_threshold must be in [0, 1], got {det_threshold}", field="det_threshold")
        if not (1 <= max_persons <= settings.max_persons):
            raise BadRequest(f"max_persons must be in [1, {settings.max_persons}], got {max_persons}",
                             field="max_persons")
        return det_threshold, max_persons, settings.flip if request.flip is None else request.flip

    def _cpu_stage(self, pipeline: TopDownPipeline, request: PoseRequest, det_threshold: float, max_persons: int,
                   flip: bool, timings: dict[str, float]) -> tuple[DecodedImage, PreparedImage]:
        """Everything before the model, in one trip to the CPU pool: decode, the boxes (the client's, clipped to
        the image, or the detector's), the crops. Boxes and crops are in the pixels of the decoded image."""
        clock = time.perf_counter()
        image = decode_image(request.image, self.settings.max_image_pixels, self.settings.jpeg_draft_pixels)
        timings["decode"] = _ms_since(clock)
        clock = time.perf_counter()
        if request.boxes is not None:
            client = validate_boxes(request.boxes, image.width, image.height, self.settings.max_client_boxes)
            boxes, scores, source = boxes_to_decoded(client, image), np.ones(len(client)), "client"
        else:
            (boxes, scores), source = pipeline.locate(image.pixels, det_threshold, max_persons), "detector"
        timings["detect"] = _ms_since(clock)
        clock = time.perf_counter()
        prepared = pipeline.prepare(image.pixels, boxes, scores, flip=flip, source=source)
        timings["pose"] = _ms_since(clock)
        return image, prepared

    @staticmethod
    def _finish(pipeline: TopDownPipeline, prepared: PreparedImage, heatmaps: np.ndarray,
                image: DecodedImage) -> list[PersonPose]:
        """The persons, boxes and keypoints mapped from the decoded image's pixels to the original image's."""
        return [replace(person, box=boxes_to_original(person.box, image),
                        keypoints=keypoints_to_original(person.keypoints, image))
                for person in pipeline.finish(prepared, heatmaps)]

    async def render(self, result: PoseResult, keypoint_threshold: float, fmt: str) -> bytes:
        """The image with the result's skeletons drawn, encoded as ``png`` or ``jpeg`` (in the CPU pool).

        A large JPEG decoded reduced is drawn at its decoded size."""
        return await self._in_cpu(_render, result, keypoint_threshold, fmt)

    def _record_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.size)

    @staticmethod
    def _check_deadline(deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before pose estimation")

    async def _in_cpu(self, function: Callable[..., T], *args: object, pool: ThreadPoolExecutor | None = None) -> T:
        """``function(*args)`` on the CPU pool (or ``pool``), awaited."""
        return await asyncio.get_running_loop().run_in_executor(pool or self._cpu, function, *args)


def _render(result: PoseResult, keypoint_threshold: float, fmt: str) -> bytes:
    image = result.image
    scale = np.array([image.scale_x, image.scale_y, image.scale_x, image.scale_y])
    persons = [{"box": np.asarray(p.box) / scale,
                "keypoints": np.column_stack([(p.keypoints[:, 0] + 0.5) / image.scale_x - 0.5,
                                              (p.keypoints[:, 1] + 0.5) / image.scale_y - 0.5, p.keypoints[:, 2]])}
               for p in result.persons]
    return encode_image(draw_poses(image.pixels, persons, keypoint_threshold), fmt)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
