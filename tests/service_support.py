"""Run the real service (REST + gRPC over one core) on loopback in a background thread, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
from PIL import Image

from service.main import Service
from service.settings import Settings


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
