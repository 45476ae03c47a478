"""Run the real service (REST + gRPC over one core) on loopback in a background thread, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from PIL import Image

from service.main import Service
from service.settings import Settings

ERROR_DETAIL_KINDS = (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest)


class RunningService:
    """A :class:`Service` running on its own event loop in a background thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.service: Service | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._constructed = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="effpose-test-service",
                                        daemon=True)

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self.service = Service(self.settings)  # on the loop that runs it, as grpc.aio requires
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._constructed.set()
        await self.service.run()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        self._constructed.wait(timeout)
        if self._error is not None:
            raise RuntimeError("service construction failed") from self._error
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            for _ in range(int(timeout / 0.1)):
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return
                if not self._thread.is_alive():
                    raise RuntimeError("service thread died during start-up")
                time.sleep(0.1)
        raise TimeoutError("service did not become ready")

    def stop(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self.service.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("service did not stop")


@contextlib.contextmanager
def running_service(**overrides: object) -> Iterator[RunningService]:
    """A service on free loopback ports with test-friendly settings (1 thread each, no detector model: the whole
    image is one person) plus ``overrides``."""
    options = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, "threads": 1, "cpu_workers": 2,
               "detector_model": None, "log_level": "warning", **overrides}
    service = RunningService(Settings(**options))
    service.start()
    try:
        yield service
    finally:
        service.stop()


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **save_options: object) -> bytes:
    """Encode an RGB array or PIL image to bytes."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **save_options)
    return buffer.getvalue()


def call_status(error: grpc.RpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` a failed call carries in ``grpc-status-details-bin`` (its code and message are
    checked against the call's by ``rpc_status``); fails the test when the server sent none."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status: {error.code()} {error.details()}"
    return status


def error_details(status: status_pb2.Status) -> dict[str, Message]:
    """The details of a ``google.rpc.Status`` by kind (``ErrorInfo``, ``RetryInfo``, ``BadRequest``), each at most
    once; any other kind fails the test."""
    found: dict[str, Message] = {}
    for detail in status.details:
        kind = next(kind for kind in ERROR_DETAIL_KINDS if detail.Is(kind.DESCRIPTOR))
        assert kind.DESCRIPTOR.name not in found, f"{kind.DESCRIPTOR.name} twice"
        message = kind()
        detail.Unpack(message)
        found[kind.DESCRIPTOR.name] = message
    return found


def assert_rich_status(status: status_pb2.Status, code: grpc.StatusCode, reason: str,
                       field: str | None = None) -> dict[str, Message]:
    """Check a service error's ``google.rpc.Status``: its code, an ``ErrorInfo`` with ``reason`` (domain effpose),
    a ``RetryInfo`` exactly when retrying later may help (RESOURCE_EXHAUSTED, UNAVAILABLE) and a ``BadRequest``
    naming ``field`` exactly when one is given. Returns the details by kind."""
    details = error_details(status)
    assert status.code == code.value[0] and status.message, status
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == (reason, "effpose"), details
    assert ("RetryInfo" in details) == (code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE))
    bad_request = details.get("BadRequest", error_details_pb2.BadRequest())
    violations = [(v.field, v.description) for v in bad_request.field_violations]
    assert violations == ([(field, status.message)] if field else []), violations
    return details
