"""One process serves both frontends: ``effpose serve`` runs REST (uvicorn) and gRPC over one inference core.

SIGTERM/SIGINT start a graceful shutdown at once: new requests are refused (REST 503 with ``Connection: close``,
gRPC UNAVAILABLE), readiness (``/readyz`` and gRPC health) goes false, admitted requests finish, then both servers
stop and the process exits, all within ``drain_timeout_s`` of the signal (what is still running then is cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import uvicorn

from service.core import InferenceCore
from service.grpc_server import build_grpc_server
from service.metrics import ServiceMetrics
from service.rest import create_app
from service.settings import Settings

log = logging.getLogger("effpose.service")
GIL_SWITCH_INTERVAL_S = 0.001


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: :class:`Service` owns shutdown (the app's lifespan only hands the
    core to the requests)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """The inference core with its REST and gRPC servers; ports are bound at construction (0 = any free port).

    Construct it on the event loop that runs it (grpc.aio binds its server to the current loop).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.core = InferenceCore(settings, self.metrics)
        self.http_socket = socket.create_server((settings.host, settings.http_port))
        # Accepted connections inherit TCP_NODELAY from the listener. asyncio only sets it itself on sockets whose
        # proto is IPPROTO_TCP, and create_server's is 0: without this, every response on a kept-alive connection
        # waited ~40 ms for the client's delayed ACK (Nagle), found by benchmarks/service_load.py.
        self.http_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.http_port: int = self.http_socket.getsockname()[1]
        self.grpc_server, self.grpc_health = build_grpc_server(self.core, settings, self.metrics)
        self.grpc_port: int = self.grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        config = uvicorn.Config(create_app(self.core), lifespan="on", log_level=settings.log_level,
                                timeout_graceful_shutdown=settings.drain_timeout_s, access_log=False,
                                limit_concurrency=settings.max_http_connections)
        self.http_server = _HttpServer(config)
        self._stop = asyncio.Event()
        self._stop_requested: float | None = None  # time.monotonic() of the signal

    async def run(self) -> None:
        """Serve until :meth:`request_stop` (or a signal), then shut down gracefully.

        Both servers listen at once, answering liveness while the models warm up; readiness (``/readyz``,
        gRPC health) turns true when they are warm.
        """
        await self.grpc_health.set_serving(False)
        await self.grpc_server.start()
        http = asyncio.create_task(self.http_server.serve(sockets=[self.http_socket]))
        await self.core.start()
        await self.grpc_health.set_serving(True)
        log.info("serving: HTTP on %s:%d, gRPC on %s:%d", self.settings.host, self.http_port, self.settings.host,
                 self.grpc_port)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({http, stop}, return_when=asyncio.FIRST_COMPLETED)
        await self.shutdown(http)

    def request_stop(self) -> None:
        """Begin the graceful shutdown (call it on the service's loop, e.g. from a signal handler): from this
        moment new requests are refused."""
        if self._stop_requested is None:
            self._stop_requested = time.monotonic()
        self.core.begin_drain()
        self._stop.set()

    def _left_s(self) -> float:
        """Seconds left of the drain timeout, counted from the signal."""
        started = self._stop_requested if self._stop_requested is not None else time.monotonic()
        return max(0.0, started + self.settings.drain_timeout_s - time.monotonic())

    async def shutdown(self, http: asyncio.Task) -> None:
        """Refuse new requests, readiness false, let admitted requests finish, stop gRPC and HTTP, release the
        models: all within ``drain_timeout_s`` of :meth:`request_stop`."""
        log.info("shutting down: refusing new requests, draining admitted ones")
        self.core.begin_drain()
        await self.grpc_health.set_serving(False)
        await self.core.drain(self._left_s())
        await self.grpc_server.stop(grace=min(1.0, self._left_s()))
        self.http_server.config.timeout_graceful_shutdown = min(1.0, self._left_s())
        self.http_server.should_exit = True
        await http
        await self.core.stop()
        log.info("stopped %.2f s after the stop request", self.settings.drain_timeout_s - self._left_s())


async def serve(settings: Settings) -> None:
    """Run :class:`Service` with SIGTERM and SIGINT wired to a graceful shutdown."""
    service = Service(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.request_stop)
    await service.run()


def main(settings: Settings | None = None) -> None:
    """Entry point of ``effpose serve``: settings from ``EFFPOSE_*`` variables, printed at start."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("settings: %s", settings.model_dump_json())
    # The work threads hold the GIL in short Python stretches (crops, heatmap decoding, detector post-processing);
    # a shorter switch interval than the default 5 ms lets the event loop (health, refusals, answers) in sooner.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    asyncio.run(serve(settings))
    # Everything admitted has been answered or cut by the drain timeout and the listeners are closed. Work threads
    # may still be computing for requests the drain cut (a crop batch, a model call): their results have nowhere to
    # go, so the process ends now instead of joining them at interpreter exit (seconds on a loaded machine).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
