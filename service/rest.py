"""REST frontend (FastAPI): thin handlers over the shared :class:`~service.core.InferenceCore`.

Two routers: ``/v1/pose`` and ``/v1/models`` (pose), ``/healthz``, ``/readyz`` and ``/metrics`` (operations). Handlers
get the core and the request's admission ticket as dependencies and return the pydantic models of
:mod:`service.schemas` (``response_model`` validates and documents the body); only rendered images and Prometheus
text are returned as plain responses. The app's lifespan hands the core to every request; the core's own lifecycle
(warm-up, drain, stop) spans both frontends and belongs to :class:`service.main.Service`. ASGI middlewares answer
what must be decided before routing (body limit, draining, admission, metrics, the last-resort 500), and every
non-2xx answer, whoever gives it, is the one envelope ``{"error": {"reason", "message"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any, TypedDict
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effpose import __version__
from service import v2_rest
from service.admission import Ticket, retry_after_header
from service.core import InferenceCore, PoseRequest, PoseResult
from service.errors import (
    BadRequest,
    InvalidParameters,
    NotAnImage,
    ServiceError,
    TooLarge,
    Unavailable,
)
from service.metrics import PROMETHEUS_CONTENT_TYPE, ServiceMetrics
from service.models import ServedModel
from service.schemas import (
    MAX_TIMEOUT_MS,
    CocoResult,
    ErrorBody,
    ErrorResponse,
    ImageSize,
    ModelRef,
    ModelsResponse,
    Person,
    PoseModelInfo,
    PoseParams,
    PoseResponse,
    StatusResponse,
    parse_boxes_field,
)
from service.v2_models import V2Models

log = logging.getLogger(__name__)
POSE_PATH = "/v1/pose"
TICKET = "ticket"  # the admission ticket's key in the request state

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
        (400, "parameters that do not fit the image or the service's limits (boxes outside the image, too many)"),
        (413, "body or image too large"), (415, "not an image"),
        (429, "overloaded: the work in flight would not let this request finish in time; retry after Retry-After "
              "seconds"),
        (500, "unexpected server error (never expected from any input)"),
        (503, "not ready, or shutting down (with Connection: close)"), (504, "deadline exceeded"))
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


class DrainMiddleware:
    """While the core drains: new pose requests get 503 at once (their body unread) and every answer, the
    in-flight ones' included, carries ``Connection: close``, so that kept-alive clients reconnect elsewhere."""

    def __init__(self, app: ASGIApp, core: InferenceCore):
        self.app, self.core = app, core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.core.draining:
            await self.app(scope, receive, send)
            return
        if scope["path"] == POSE_PATH:
            await error_response(Unavailable("the service is shutting down: retry on another instance",
                                              reason="draining"))(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


class AdmissionMiddleware:
    """Admit ``POST /v1/pose`` before anything else runs (routing, parameter validation, the body), so that a refusal
    costs the least the server can spend on it. The ticket travels to the handler in the scope's state and is
    released when the answer is done, whatever happened."""

    def __init__(self, app: ASGIApp, core: InferenceCore):
        self.app, self.core = app, core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != POSE_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            ticket = self.core.admit(requested_timeout_s(scope))
        except ServiceError as error:
            await error_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[TICKET] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()


def requested_timeout_s(scope: Scope) -> float | None:
    """The request's ``timeout_ms`` in seconds, read from the raw query string; None when absent or invalid (the
    parameter's validation then refuses the request, 422)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("timeout_ms")
    try:
        milliseconds = float(values[-1]) if values else math.nan
    except ValueError:
        return None
    return milliseconds / 1000.0 if 0 < milliseconds <= MAX_TIMEOUT_MS else None


class InternalErrorMiddleware:
    """The last resort: an unexpected exception becomes a 500 in the error envelope, logged, and the connection
    stays usable (Starlette's own handler re-raises, after which uvicorn drops the kept-alive connection)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer is on the wire: only closing the connection can end it
            await envelope(500, "internal", "unexpected server error; it has been logged")(scope, receive, send)


class MetricsMiddleware:
    """Count requests by route template, method and status code, and time them (answers and refusals apart)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]):
        self.app, self.metrics, self.routes = app, metrics, routes

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
            self.metrics.observe_answer(self._route(scope), scope["method"], str(status),
                                        time.perf_counter() - started, 200 <= status < 300)

    def _route(self, scope: Scope) -> str:
        """The route template; for answers given before routing (413, 503 while draining) the one the path matches."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", "unmatched")


def envelope(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body of every non-2xx answer: ``{"error": {"reason", "message"}}`` (:class:`ErrorResponse`)."""
    body = ErrorResponse(error=ErrorBody(reason=reason, message=message))
    return JSONResponse(body.model_dump(), status, headers)


def error_response(error: ServiceError) -> JSONResponse:
    """The error envelope of a :class:`ServiceError`, with Retry-After where retrying later helps (and
    ``Connection: close`` while draining: retry on another instance)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = retry_after_header(error.retry_after)
    if error.reason == "draining":
        headers["Connection"] = "close"
    return envelope(error.http_status, error.reason, error.message, headers)


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``query.det_threshold: Input should be ...; ...``."""
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in error.errors()[:5]]
    return "; ".join(parts) or "invalid request"


def http_reason(status: int) -> str:
    """A machine-readable reason for an HTTP status, e.g. 404 -> ``not_found``."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def read_image_body(request: Request) -> tuple[bytes, str | None]:
    """The image bytes (multipart field ``image`` or the raw body) and an optional multipart ``boxes`` field."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except StarletteHTTPException as error:  # malformed multipart: Starlette's 400
            raise BadRequest(f"multipart body could not be parsed: {error.detail}") from error
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart body needs a file field named 'image'")
        boxes = form.get("boxes")
        if boxes is not None and not isinstance(boxes, str):
            raise BadRequest("multipart field 'boxes' must be text (JSON), not a file")
        return await upload.read(), boxes
    if content_type.startswith(("application/json", "text/")):
        raise NotAnImage(f"content type {content_type!r} is not an image: send image bytes or multipart 'image'")
    return await request.body(), None


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def estimate_until_done_or_gone(core: InferenceCore, request: Request, pose: PoseRequest,
                                      ticket: Ticket) -> PoseResult | None:
    """The core's result, or None when the client went away first (its work is then cancelled)."""
    work = asyncio.ensure_future(core.estimate(pose, ticket))
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()  # the client went away: drop its queued work
    if not work.done() or work.cancelled():  # a cancelled task stays pending until it has unwound
        return None
    return work.result()


def pose_document(result: PoseResult, core: InferenceCore, keypoint_threshold: float) -> PoseResponse:
    """The JSON answer (``format=json``) of a core result."""
    info = result.model.info
    return PoseResponse(
        request_id=result.request_id,
        model=ModelRef(name=result.model.name, version=result.model.version, detector=core.detector.name),
        image=ImageSize(width=result.width, height=result.height),
        keypoint_names=list(info.keypoint_names),
        skeleton=[list(pair) for pair in info.skeleton],
        persons=[Person.model_validate(p.to_dict(info.keypoint_names, keypoint_threshold)) for p in result.persons],
        timings_ms={stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
    )


async def inference_core(request: Request) -> InferenceCore:
    """Dependency: the inference core, handed to every request by the app's :func:`serving` lifespan (``async``
    like every dependency here: FastAPI would run a plain function in its thread pool, a thread hop per request)."""
    return request.state.core


async def admission_ticket(request: Request) -> Ticket:
    """Dependency: the request's admission ticket, given by :class:`AdmissionMiddleware` before the body was read."""
    return getattr(request.state, TICKET)


Core = Annotated[InferenceCore, Depends(inference_core)]
AdmittedTicket = Annotated[Ticket, Depends(admission_ticket)]
pose_router = APIRouter(tags=["pose"])
operations_router = APIRouter(tags=["operations"])


@pose_router.post(POSE_PATH, response_model=PoseResponse | list[CocoResult], openapi_extra=IMAGE_BODY_DOC,
                  responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}, "image/jpeg": {}},
                                                      "description": "JSON (format=json), a COCO results list "
                                                                     "(format=coco) or the drawn image (render)"}})
async def estimate_pose(request: Request, response: Response, params: Annotated[PoseParams, Query()], core: Core,
                        ticket: AdmittedTicket) -> PoseResponse | list[CocoResult] | Response:
    """Every person's box and 17 keypoints in original-image pixels (after EXIF orientation)."""
    image, form_boxes = await read_image_body(request)
    pose = PoseRequest(  # the ticket carries the deadline
        image=image, boxes=params.boxes if form_boxes is None else parse_boxes_field(form_boxes),
        det_threshold=params.det_threshold, max_persons=params.max_persons, flip=params.flip,
        request_id=request.headers.get("x-request-id"), model=params.model, model_version=params.model_version)
    result = await estimate_until_done_or_gone(core, request, pose, ticket)
    if result is None:
        return Response(status_code=499)  # never delivered: the client is gone
    headers = {"X-Request-Id": result.request_id}
    if params.render != "none":
        return Response(await core.render(result, params.keypoint_threshold, params.render),
                        media_type=RENDER_MEDIA_TYPES[params.render], headers=headers)
    response.headers.update(headers)
    if params.format == "coco":
        return [CocoResult.model_validate(p.to_coco(params.image_id)) for p in result.persons]
    return pose_document(result, core, params.keypoint_threshold)


@pose_router.get("/v1/models", response_model=ModelsResponse)
async def models(core: Core) -> ModelsResponse:
    """The served models: every pose model's metadata (keypoint names, skeleton, input size, versions), the default
    one, and the detector."""
    return ModelsResponse(effpose_version=__version__, detector=core.detector.name,
                          pose=pose_model_info(core.models.default), models=[pose_model_info(m) for m in core.models])


def pose_model_info(model: ServedModel) -> PoseModelInfo:
    """The description of one served pose model."""
    info = model.info
    width, height = info.input_size
    return PoseModelInfo(name=model.name, architecture=info.name, version=info.version, weights=info.weights,
                         input_size=ImageSize(width=width, height=height), keypoint_names=list(info.keypoint_names),
                         skeleton=[list(pair) for pair in info.skeleton])


@operations_router.get("/healthz", response_model=StatusResponse)
async def healthz() -> StatusResponse:
    """Liveness: the process answers (at once: nothing here waits for the models or the CPU pool)."""
    return StatusResponse(status="ok")


@operations_router.get("/readyz", response_model=StatusResponse, responses={503: {"model": ErrorResponse}})
async def readyz(core: Core) -> StatusResponse:
    """Readiness: models loaded and warm, not draining."""
    if not core.serving:
        raise Unavailable("draining" if core.draining else "models loading",
                          reason="draining" if core.draining else "loading")
    return StatusResponse(status="ready")


@operations_router.get("/metrics", response_class=PlainTextResponse,
                       responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(core: Core) -> Response:
    """Prometheus metrics."""
    return Response(core.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the app does: every error (FastAPI's 422 included) is an
    :class:`ErrorResponse`, and every operation may answer any error status with it (``default``)."""
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    error_content = {"application/json": {"schema": error_ref}}
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "a parameter does not match its type or range",
                                    "content": error_content}
            responses["default"] = {"description": "any other error (404, 405, 413, 429, 500, 503, ...), with "
                                                   "Retry-After on 429 and 503", "content": error_content}
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec


async def on_service_error(_: Request, error: ServiceError) -> JSONResponse:
    """A :class:`ServiceError` raised while answering: its envelope."""
    return error_response(error)


async def on_invalid_parameters(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's request validation: 422 ``invalid_parameters`` in the envelope."""
    return error_response(InvalidParameters(validation_message(error)))


async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (404, 405, ...) in the envelope, their headers (e.g. ``Allow``) kept."""
    return envelope(error.status_code, http_reason(error.status_code), str(error.detail), error.headers)


async def on_client_gone(_: Request, __: ClientDisconnect) -> Response:
    """The client went away mid-upload: a 499 that is never delivered."""
    return Response(status_code=499)


EXCEPTION_HANDLERS = {ServiceError: on_service_error, RequestValidationError: on_invalid_parameters,
                      StarletteHTTPException: on_http_error, ClientDisconnect: on_client_gone}


class AppState(TypedDict):
    """The lifespan state every request sees as ``request.state``."""

    core: InferenceCore
    v2_models: V2Models


@asynccontextmanager
async def serving(core: InferenceCore, _: FastAPI) -> AsyncIterator[AppState]:
    """The app's lifespan: while the HTTP server runs, every request gets ``core`` (see :func:`inference_core`)
    and the Open Inference Protocol's models over it (:mod:`service.v2_rest`)."""
    yield {"core": core, "v2_models": V2Models(core)}


def create_app(core: InferenceCore) -> FastAPI:
    """The REST application over a core whose lifecycle the caller owns (see :mod:`service.main`).

    Building it reads only ``core.settings`` and ``core.metrics``; everything else is used per request. Run it with
    the lifespan on (it hands the core to the requests).
    """
    app = FastAPI(title="effpose", version=__version__,
                  description="Human pose estimation: every person's box and 17 COCO keypoints. Every error answers "
                              '`{"error": {"reason", "message"}}`.',
                  lifespan=functools.partial(serving, core), exception_handlers=EXCEPTION_HANDLERS)
    routers = (pose_router, operations_router, v2_rest.router)
    for router in routers:
        app.include_router(router)
    app.openapi = lambda: app.openapi_schema or _cached_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=core.settings.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, core=core)
    app.add_middleware(DrainMiddleware, core=core)
    app.add_middleware(InternalErrorMiddleware)
    # The routers' own routes first: recent FastAPI keeps an included router in app.routes as one opaque entry.
    routes = [route for router in routers for route in router.routes] + app.routes
    app.add_middleware(MetricsMiddleware, metrics=core.metrics, routes=routes)
    return app


def _cached_openapi(app: FastAPI) -> dict[str, Any]:
    app.openapi_schema = document_errors(get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes))
    return app.openapi_schema
