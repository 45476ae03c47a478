"""Errors the inference core raises, each with the HTTP status and gRPC code that the frontends answer with."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be answered; ``reason`` is a short machine-readable label (also a metrics label)."""

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """Parameters that make no sense (bad boxes, thresholds out of range, ...)."""

    http_status, grpc_code, reason = 400, "INVALID_ARGUMENT", "bad_request"


class NotAnImage(ServiceError):
    """Bytes that are not a decodable image (empty, truncated, another format)."""

    http_status, grpc_code, reason = 415, "INVALID_ARGUMENT", "not_an_image"


class TooLarge(ServiceError):
    """A body over the byte limit or an image over the pixel limit."""

    http_status, grpc_code, reason = 413, "INVALID_ARGUMENT", "too_large"


class Overloaded(ServiceError):
    """No room: refused at once instead of waiting; retry after ``retry_after`` seconds.

    ``reason`` says which limit: ``queue_full`` (the batcher's queue) or ``in_flight_limit`` (admitted requests).
    """

    http_status, grpc_code, reason = 429, "RESOURCE_EXHAUSTED", "queue_full"

    def __init__(self, message: str, retry_after: float = 1.0, reason: str = "queue_full"):
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its work ran."""

    http_status, grpc_code, reason = 504, "DEADLINE_EXCEEDED", "deadline"


class Unavailable(ServiceError):
    """The service is not ready or is shutting down."""

    http_status, grpc_code, reason = 503, "UNAVAILABLE", "unavailable"
