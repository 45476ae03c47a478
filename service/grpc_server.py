"""gRPC frontend: ``effpose.v1.PoseService`` over the inference core, with standard health checking and reflection.

Handlers are thin: convert the message, ``await core.estimate``, convert the result. A :class:`ServiceError`
becomes the call's status in the standard rich error model: its ``grpc_code`` and message, and a
``google.rpc.Status`` with ErrorInfo / RetryInfo / BadRequest details in ``grpc-status-details-bin`` (a failed
frame of a stream carries the same ``google.rpc.Status`` in its ``FrameResult``). The client's deadline bounds the
core's work and a cancelled or expired call cancels it. Every answer (each frame, for streams) is counted under the
method's full name.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from effpose.v1 import pose_pb2, pose_pb2_grpc
from service.core import InferenceCore, PoseResult
from service.errors import ServiceError
from service.grpc_messages import estimate_response, model_description, pose_request, rich_status
from service.grpc_stream import StreamSmoother, ordered_window
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.v2_grpc import InferenceServicer, add_inference_service

SERVICE_NAME = pose_pb2.DESCRIPTOR.services_by_name["PoseService"].full_name  # "effpose.v1.PoseService"

_Received = tuple[pose_pb2.Frame, float]  # a frame and when it was read (time.monotonic)
_FrameOutcome = tuple[pose_pb2.Frame, float, PoseResult | ServiceError]


def route(method: str) -> str:
    """The metrics route of a PoseService method: its full gRPC name, e.g. ``/effpose.v1.PoseService/Estimate``."""
    return f"/{SERVICE_NAME}/{method}"


class PoseServicer(pose_pb2_grpc.PoseServiceServicer):
    """``PoseService`` on top of an :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, settings: Settings, metrics: ServiceMetrics):
        self.core = core
        self.settings = settings
        self.metrics = metrics

    async def Estimate(
        self, request: pose_pb2.EstimateRequest, context: grpc.aio.ServicerContext
    ) -> pose_pb2.EstimateResponse:
        """Poses of one image; errors abort the call with the error's rich status (code, message, details)."""
        started, code = time.monotonic(), "UNKNOWN"
        try:
            response = self._response(await self.core.estimate(pose_request(request, context.time_remaining())))
            code = "OK"
            return response
        except ServiceError as error:
            code = error.grpc_code
            await context.abort_with_status(rpc_status.to_status(rich_status(error)))
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        finally:
            self._record("Estimate", code, started)

    async def StreamEstimate(
        self, request_iterator: AsyncIterable[pose_pb2.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pose_pb2.FrameResult]:
        """Frames in, results out in order; at most ``settings.stream_window`` frames of the stream held at once."""
        smoother = StreamSmoother()
        run = functools.partial(self._run_frame, context)
        async for frame, received, outcome in ordered_window(_received(request_iterator), run,
                                                             self.settings.stream_window):
            yield self._frame_result(frame, received, outcome, smoother)

    async def GetModel(
        self, request: pose_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pose_pb2.ModelDescription:
        """Metadata of a served model (the default when the request names none) and the detector."""
        started = time.monotonic()
        try:
            model = self.core.models.get(request.model, request.model_version)
        except ServiceError as error:
            self._record("GetModel", error.grpc_code, started)
            await context.abort_with_status(rpc_status.to_status(rich_status(error)))
        self._record("GetModel", "OK", started)
        return model_description(model, self.core.detector.name)

    async def ListModels(
        self, request: pose_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pose_pb2.ListModelsResponse:
        """Every served pose model and the name of the default one."""
        self._record("ListModels", "OK", time.monotonic())
        return pose_pb2.ListModelsResponse(
            models=[model_description(model, self.core.detector.name) for model in self.core.models],
            default_model=self.core.models.default.name)

    async def _run_frame(self, context: grpc.aio.ServicerContext, item: _Received) -> _FrameOutcome:
        """Estimate one frame; its deadline is the service default, cut short by the stream's deadline."""
        frame, received = item
        remaining = context.time_remaining()
        timeout = self.settings.request_timeout_s if remaining is None else min(remaining,
                                                                                 self.settings.request_timeout_s)
        try:
            return frame, received, await self.core.estimate(pose_request(frame.request, timeout))
        except ServiceError as error:
            return frame, received, error

    def _frame_result(
        self, frame: pose_pb2.Frame, received: float, outcome: PoseResult | ServiceError, smoother: StreamSmoother
    ) -> pose_pb2.FrameResult:
        """The frame's result in stream order: options applied, smoothing (if on) run, the error if any (field
        paths of the request's errors under ``request``, the frame's own at the top)."""
        try:
            if frame.HasField("options"):
                smoother.configure(frame.options.smoothing)
            if isinstance(outcome, ServiceError):
                return self._frame_error(frame, received, outcome, parent="request")
            timestamp = frame.timestamp_s if frame.HasField("timestamp_s") else received
            track_ids = smoother.apply(outcome.persons, timestamp)
        except ServiceError as error:
            return self._frame_error(frame, received, error)
        self._record("StreamEstimate", "OK", received)
        return pose_pb2.FrameResult(frame_id=frame.frame_id, response=self._response(outcome, track_ids))

    def _frame_error(self, frame: pose_pb2.Frame, received: float, error: ServiceError,
                     parent: str = "") -> pose_pb2.FrameResult:
        self._record("StreamEstimate", error.grpc_code, received)
        return pose_pb2.FrameResult(frame_id=frame.frame_id, error=rich_status(error, parent))

    def _response(self, result: PoseResult, track_ids: list[int] | None = None) -> pose_pb2.EstimateResponse:
        return estimate_response(result, self.core.detector.name, track_ids or ())

    def _record(self, method: str, code: str, started: float) -> None:
        self.metrics.observe_answer(route(method), "grpc", code, time.monotonic() - started, code == "OK")


async def _received(frames: AsyncIterable[pose_pb2.Frame]) -> AsyncIterator[_Received]:
    async for frame in frames:
        yield frame, time.monotonic()


class GrpcHealth:
    """Standard gRPC health checking of this server: the server as a whole ("") and ``effpose.v1.PoseService``."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING (e.g. ``core.serving``); NOT_SERVING before draining, so that load
        balancers and probes stop sending. Call it before ``server.start()``: until then the library reports
        its default (SERVING for "")."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (OVERALL_HEALTH, SERVICE_NAME):
            await self.servicer.set(service, status)


def build_grpc_server(
    core: InferenceCore, settings: Settings, metrics: ServiceMetrics
) -> tuple[grpc.aio.Server, GrpcHealth]:
    """A gRPC server (not started, no port bound) with PoseService, the Open Inference Protocol's
    GRPCInferenceService (:mod:`service.v2_grpc`), health checking and reflection, and its health.

    Build it on the event loop that will run it (grpc.aio binds the server to the loop it is created on). Messages
    may be as large as ``settings.max_body_bytes`` both ways (gRPC's own default is 4 MiB); larger requests are
    refused by gRPC with RESOURCE_EXHAUSTED. The caller binds the port (``add_insecure_port`` returns the one
    bound) and reports readiness with :meth:`GrpcHealth.set_serving`.
    """
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", 0),
    ])
    health = GrpcHealth()
    pose_pb2_grpc.add_PoseServiceServicer_to_server(PoseServicer(core, settings, metrics), server)
    add_inference_service(InferenceServicer(core, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health
