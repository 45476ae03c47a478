"""Conversions between the ``effpose.v1`` protobuf messages and the inference core's requests, results and errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

import effpose
from effpose.v1 import pose_pb2
from service.core import PoseRequest, PoseResult
from service.errors import NotAnImage, ServiceError
from service.models import ServedModel

ERROR_DOMAIN = "effpose"  # google.rpc.ErrorInfo.domain of every error this service answers


def pose_request(message: pose_pb2.EstimateRequest, timeout_s: float | None) -> PoseRequest:
    """The core's request for an ``EstimateRequest``: no boxes means "detect"; unset options take the defaults."""
    if not message.image:
        raise NotAnImage("EstimateRequest.image is empty: send the encoded image bytes (JPEG, PNG, WebP, ...)")
    return PoseRequest(
        image=message.image,
        boxes=[[box.x1, box.y1, box.x2, box.y2] for box in message.boxes] or None,
        det_threshold=message.det_threshold if message.HasField("det_threshold") else None,
        max_persons=message.max_persons if message.HasField("max_persons") else None,
        flip=message.flip if message.HasField("flip") else None,
        timeout_s=timeout_s,
        request_id=message.request_id or None,
        model=message.model or None,
        model_version=message.model_version or None,
    )


def estimate_response(result: PoseResult, detector: str, track_ids: Sequence[int] = ()) -> pose_pb2.EstimateResponse:
    """The ``EstimateResponse`` of a core result; ``track_ids`` (one per person) when the stream tracks persons."""
    keypoint_names = result.model.info.keypoint_names
    model = pose_pb2.ModelRef(name=result.model.name, version=result.model.version, detector=detector)
    persons = []
    for index, person in enumerate(result.persons):
        x1, y1, x2, y2 = (float(v) for v in person.box)
        persons.append(pose_pb2.Person(
            box=pose_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
            box_score=float(person.box_score),
            source=person.source,
            score=float(person.score),
            keypoints=[pose_pb2.Keypoint(name=name, x=float(x), y=float(y), score=float(s))
                       for name, (x, y, s) in zip(keypoint_names, person.keypoints)],
            track_id=track_ids[index] if track_ids else 0,
        ))
    return pose_pb2.EstimateResponse(request_id=result.request_id, model=model, width=result.width,
                                     height=result.height, persons=persons, timings_ms=result.timings_ms)


def model_description(model: ServedModel, detector: str) -> pose_pb2.ModelDescription:
    """What ``GetModel`` answers: a served pose model's metadata, the detector and the package version."""
    info = model.info
    width, height = info.input_size
    return pose_pb2.ModelDescription(
        name=model.name, architecture=info.name, version=info.version, weights=info.weights, detector=detector,
        input_width=width, input_height=height, keypoint_names=list(info.keypoint_names),
        skeleton=[pose_pb2.Edge(a=a, b=b) for a, b in info.skeleton], service_version=effpose.__version__,
    )


def rich_status(error: ServiceError, parent: str = "") -> status_pb2.Status:
    """A service error as a ``google.rpc.Status``: its code, message and details.

    Details: an ``ErrorInfo`` always (the error's reason in upper case, domain :data:`ERROR_DOMAIN`), a
    ``RetryInfo`` when retrying later may succeed, a ``BadRequest`` when a request field is at fault (its path,
    under ``parent`` when the request is nested, e.g. ``request`` in a stream's ``Frame``).
    """
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=error.reason.upper(), domain=ERROR_DOMAIN)]
    if error.retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=timedelta(seconds=error.retry_after)))
    if error.field is not None:
        field = f"{parent}.{error.field}" if parent else error.field
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=error.message)]))
    status = status_pb2.Status(code=grpc.StatusCode[error.grpc_code].value[0], message=error.message)
    for detail in details:
        status.details.add().Pack(detail)
    return status
