"""Per-stream machinery of ``StreamEstimate``: ordered processing within a bounded window, optional smoothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from effpose.pipeline import PersonPose
from effpose.processing.smoothing import OneEuroParams, PoseTracker
from effpose.v1 import pose_pb2
from service.errors import BadRequest

T = TypeVar("T")
R = TypeVar("R")


async def ordered_window(
    items: AsyncIterable[T], process: Callable[[T], Awaitable[R]], window: int
) -> AsyncIterator[R]:
    """``process(item)`` of every item, run concurrently, yielded in input order, with at most ``window`` items held.

    An item holds its slot from the moment it is read until the consumer asks for the result after it (for a
    gRPC handler: until its result has been written). While all slots are taken no further item is read, so a
    fast producer or a slow consumer is pushed back instead of buffered. An error reading ``items`` is raised
    after the results of the items read before it; leaving early cancels the work still running.
    """
    slots = asyncio.Semaphore(window)
    started: asyncio.Queue[asyncio.Task[R] | None] = asyncio.Queue()

    async def read() -> None:
        source = aiter(items)
        try:
            while True:
                await slots.acquire()  # before reading: an item waiting for a slot would be one more held
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    return
                started.put_nowait(asyncio.ensure_future(process(item)))
        finally:
            started.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await started.get()) is not None:
            yield await task
            slots.release()
        await reader
    finally:
        reader.cancel()
        while not started.empty():
            if (task := started.get_nowait()) is not None:
                task.cancel()


class StreamSmoother:
    """Smoothing state of one stream: off until a frame's options enable it; (re)configuring starts afresh."""

    def __init__(self) -> None:
        self.tracker: PoseTracker | None = None

    def configure(self, options: pose_pb2.Smoothing) -> None:
        """Apply a frame's smoothing options; invalid parameters raise :class:`BadRequest` and change nothing."""
        if not options.enabled:
            self.tracker = None
            return
        given = {name: getattr(options, name) for name in ("min_cutoff", "beta", "d_cutoff") if options.HasField(name)}
        try:
            self.tracker = PoseTracker(OneEuroParams(**given))
        except ValueError as error:
            raise BadRequest(f"smoothing options: {error}", field="options.smoothing") from error

    def apply(self, persons: Sequence[PersonPose], timestamp: float) -> list[int]:
        """Smooth the persons' keypoints in place; returns their track ids (empty when smoothing is off)."""
        if self.tracker is None:
            return []
        boxes = np.array([person.box for person in persons])
        keypoints = np.array([person.keypoints for person in persons])
        try:
            smoothed, ids = self.tracker.update(timestamp, boxes, keypoints)
        except ValueError as error:
            raise BadRequest(f"timestamp_s: {error}", field="timestamp_s") from error
        for person, points in zip(persons, smoothed):
            person.keypoints = points.astype(person.keypoints.dtype)
        return ids
