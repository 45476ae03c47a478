"""Errors the inference core raises, each with the HTTP status and gRPC code that the frontends answer with."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be answered; ``reason`` is a short machine-readable label (also a metrics label).

    ``retry_after``: seconds after which the same request may succeed (REST ``Retry-After``, gRPC ``RetryInfo``),
    None when retrying does not help. ``field``: the request field at fault, when there is one (gRPC ``BadRequest``
    field violation), e.g. ``image`` or ``timestamp_s``.
    """

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "internal"
    retry_after: float | None = None
    field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field


class BadRequest(ServiceError):
    """Parameters that make no sense (bad boxes, thresholds out of range, ...)."""

    http_status, grpc_code, reason = 400, "INVALID_ARGUMENT", "bad_request"


class InvalidParameters(ServiceError):
    """A parameter that does not fit its declared type or range (the same answer as FastAPI's request validation)."""

    http_status, grpc_code, reason = 422, "INVALID_ARGUMENT", "invalid_parameters"


class NotAnImage(ServiceError):
    """Bytes that are not a decodable image (empty, truncated, another format)."""

    http_status, grpc_code, reason, field = 415, "INVALID_ARGUMENT", "not_an_image", "image"


class ModelNotFound(ServiceError):
    """A request names a model (or version) the service does not serve."""

    http_status, grpc_code, reason, field = 404, "NOT_FOUND", "model_not_found", "model"


class TooLarge(ServiceError):
    """A body over the byte limit or an image over the pixel limit."""

    http_status, grpc_code, reason, field = 413, "INVALID_ARGUMENT", "too_large", "image"


class Overloaded(ServiceError):
    """No room: refused at once instead of waiting; retry after ``retry_after`` seconds.

    ``reason`` says which limit: ``overloaded`` (the work already admitted would not finish in time for this one),
    ``in_flight_limit`` (admitted requests) or ``queue_full`` (the batcher's queue).
    """

    http_status, grpc_code, reason = 429, "RESOURCE_EXHAUSTED", "queue_full"

    def __init__(self, message: str, retry_after: float = 1.0, reason: str = "queue_full"):
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its work ran."""

    http_status, grpc_code, reason = 504, "DEADLINE_EXCEEDED", "deadline"


class DeadlineTooShort(ServiceError):
    """A deadline shorter than one request takes on this service even when idle: refused before any work.

    A client mistake over REST (400); over gRPC the call's own deadline, so DEADLINE_EXCEEDED."""

    http_status, grpc_code, reason = 400, "DEADLINE_EXCEEDED", "deadline_too_short"


class Unavailable(ServiceError):
    """The service is not ready or is shutting down (``draining``: retry on another instance)."""

    http_status, grpc_code, reason, retry_after = 503, "UNAVAILABLE", "unavailable", 1.0

    def __init__(self, message: str, reason: str = "unavailable"):
        super().__init__(message)
        self.reason = reason
