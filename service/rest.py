"""REST frontend (FastAPI): thin handlers over the shared :class:`~service.core.InferenceCore`."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effpose import __version__
from effpose.draw import draw_poses
from service.core import InferenceCore, PoseRequest, PoseResult
from service.errors import BadRequest, NotAnImage, Overloaded, ServiceError, TooLarge, Unavailable
from service.imaging import encode_image
from service.metrics import PROMETHEUS_CONTENT_TYPE, ServiceMetrics
from service.schemas import ErrorResponse, ModelsResponse, PoseParams, PoseResponse

IMAGE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "the image: multipart field `image`, or the raw bytes with an image/* content type",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"},
                "boxes": {"type": "string", "description": "optional client boxes as JSON (as the query parameter)"},
            }}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "bad parameters"), (413, "body or image too large"), (415, "not an image"),
        (429, "queue full: retry after Retry-After seconds"), (503, "not ready or shutting down"),
        (504, "deadline exceeded"))
}
RENDER_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413: at once from Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(TooLarge(f"body of {int(declared)} bytes; the limit is {self.max_bytes}"))(
                scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge(f"body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Count requests by route template, method and status code, and time them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - started)


def error_response(error: ServiceError) -> JSONResponse:
    """The JSON error body of a :class:`ServiceError`, with Retry-After where retrying later helps."""
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    elif isinstance(error, Unavailable):
        headers["Retry-After"] = "1"
    return JSONResponse({"error": {"reason": error.reason, "message": error.message}}, error.http_status, headers)


async def read_image_body(request: Request) -> tuple[bytes, str | None]:
    """The image bytes (multipart field ``image`` or the raw body) and an optional multipart ``boxes`` field."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart body needs a file field named 'image'")
        boxes = form.get("boxes")
        return await upload.read(), boxes if isinstance(boxes, str) else None
    if content_type.startswith(("application/json", "text/")):
        raise NotAnImage(f"content type {content_type!r} is not an image: send image bytes or multipart 'image'")
    return await request.body(), None


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def pose_response(result: PoseResult, core: InferenceCore, params: PoseParams) -> Response:
    """Answer in the requested form: the JSON document, COCO results, or the rendered image."""
    names = core.info.keypoint_names
    if params.render != "none":
        drawn = draw_poses(result.image, [{"box": p.box, "keypoints": p.keypoints} for p in result.persons],
                           params.keypoint_threshold)
        return Response(encode_image(drawn, params.render), media_type=RENDER_MEDIA_TYPES[params.render],
                        headers={"X-Request-Id": result.request_id})
    if params.format == "coco":
        return JSONResponse([p.to_coco(params.image_id) for p in result.persons],
                            headers={"X-Request-Id": result.request_id})
    body = {
        "request_id": result.request_id,
        "model": {"name": core.info.name, "version": core.info.version, "detector": core.detector.name},
        "image": {"width": result.width, "height": result.height},
        "keypoint_names": list(names),
        "skeleton": [list(pair) for pair in core.info.skeleton],
        "persons": [p.to_dict(names, params.keypoint_threshold) for p in result.persons],
        "timings_ms": {stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
    }
    return JSONResponse(body, headers={"X-Request-Id": result.request_id})


def create_app(core: InferenceCore) -> FastAPI:
    """The REST application over a core whose lifecycle the caller owns (see :mod:`service.main`)."""
    app = FastAPI(title="effpose", version=__version__,
                  description="Human pose estimation: every person's box and 17 COCO keypoints.")
    app.state.core = core

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=499)  # never delivered: the client went away mid-upload

    @app.post("/v1/pose", response_model=PoseResponse, openapi_extra=IMAGE_BODY_DOC,
              responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}, "image/jpeg": {}},
                                                  "description": "JSON (format=json), a COCO results list "
                                                                 "(format=coco) or the drawn image (render)"}})
    async def estimate_pose(request: Request, params: Annotated[PoseParams, Query()]) -> Response:
        """Every person's box and 17 keypoints in original-image pixels (after EXIF orientation)."""
        image, form_boxes = await read_image_body(request)
        boxes = params.boxes if form_boxes is None else PoseParams(boxes=form_boxes).boxes
        work = asyncio.ensure_future(core.estimate(PoseRequest(
            image=image, boxes=boxes, det_threshold=params.det_threshold, max_persons=params.max_persons,
            flip=params.flip, timeout_s=None if params.timeout_ms is None else params.timeout_ms / 1000.0,
            request_id=request.headers.get("x-request-id"),
        )))
        watcher = asyncio.ensure_future(until_disconnected(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()  # the client went away: drop its queued work
        if not work.done() or work.cancelled():  # a cancelled task stays pending until it has unwound
            return Response(status_code=499)  # never delivered: the client is gone
        return pose_response(work.result(), core, params)

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models() -> dict[str, Any]:
        """The served models: pose model metadata (keypoint names, skeleton, input size, versions) and detector."""
        info = core.info
        return {"effpose_version": __version__, "detector": core.detector.name, "pose": {
            "name": info.name, "version": info.version, "weights": info.weights,
            "input_size": {"width": info.input_size[0], "height": info.input_size[1]},
            "keypoint_names": list(info.keypoint_names), "skeleton": [list(p) for p in info.skeleton]}}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> Response:
        """Readiness: models loaded and warm, not draining."""
        if core.serving:
            return JSONResponse({"status": "ready"})
        return error_response(Unavailable("draining" if core.draining else "models loading"))

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(core.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    app.add_middleware(BodyLimitMiddleware, max_bytes=core.settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=core.metrics)
    return app

