"""Dynamic batcher (asyncio): crops of concurrent requests share model batches, with Triton's queue policy.

- ``max_batch_size`` crops per model call; a request with more crops is split into chunks of that size.
- A batch is formed from the oldest queued chunk plus whatever else arrives within ``max_queue_delay_s``
  of it (or until the batch is full). With batching off, every chunk runs alone at once.
- With ``wait_only_when_announced``, a partial batch waits for company only while callers have announced work on
  its way (:meth:`DynamicBatcher.expecting`, around a request's CPU stage): with none announced nothing can join
  it, and it runs at once instead of idling out the window (a lone request at low load saves the whole window).
- The queue holds at most ``max_queue_length`` chunks; a request that does not fit is refused at once
  (:class:`~service.errors.Overloaded`) instead of growing latency without bound. An empty queue takes any
  request, so one larger than the whole queue is still served.
- A chunk whose deadline passed, or whose requester went away (cancelled), is dropped when the batch is
  formed, never computed; an exception in one batch fails only that batch's requests.
- Model work runs in a single worker thread, off the event loop (ONNX Runtime uses its own thread pool).
- Time comes from an injected ``clock`` (``time.monotonic`` by default) and every wait from an injected
  ``call_later`` (the event loop's by default), so tests can drive the batching window and deadlines with a fake.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded, Overloaded, Unavailable

RunBatch = Callable[[np.ndarray], np.ndarray]
Clock = Callable[[], float]


class Timer(Protocol):
    """A scheduled callback that can be called off (:class:`asyncio.TimerHandle` is one)."""

    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Timer]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Timer:
    """Run ``callback`` after ``delay`` seconds of the running event loop's clock (``time.monotonic``)."""
    return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(eq=False)  # chunks are compared by identity
class _Chunk:
    inputs: np.ndarray
    deadline: float  # on the batcher's clock
    enqueued: float
    future: asyncio.Future = field(repr=False)
    started: float = 0.0  # when its batch went to the model


@dataclass(frozen=True)
class BatchStats:
    """What one model call did: its crops and its wall time."""

    size: int
    seconds: float


class DynamicBatcher:
    """Pools crop tensors of concurrent requests into model batches; see the module docstring for the policy."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int = 16,
        max_queue_delay_s: float = 0.004,
        max_queue_length: int = 64,
        enabled: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
        thread_initializer: Callable[[], None] | None = None,
        wait_only_when_announced: bool = False,
        clock: Clock = time.monotonic,
        call_later: CallLater = _loop_call_later,
    ):
        if max_batch_size < 1 or max_queue_length < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size and max_queue_length must be >= 1 and max_queue_delay_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s if enabled else 0.0
        self.max_queue_length = max_queue_length
        self.enabled = enabled
        self.on_batch = on_batch
        self.wait_only_when_announced = wait_only_when_announced
        self._announced = 0  # requests announced by expecting() and not yet through it
        self.clock = clock  # seconds; deadlines passed to submit count on it
        self.call_later = call_later  # must count seconds as clock does
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="effpose-model",
                                            initializer=thread_initializer)
        self._worker: asyncio.Task | None = None
        self._last_batch_seconds = 0.05

    @property
    def depth(self) -> int:
        """Chunks waiting in the queue."""
        return len(self._queue)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce, for the duration of the block, a request that will submit soon (see the module docstring);
        submit after leaving the block, with no ``await`` in between."""
        self._announced += 1
        try:
            yield
        finally:
            self._announced -= 1
            self._wakeup.set()  # a batch waiting for company re-checks whether any is still on its way

    def start(self) -> None:
        """Start the batch-forming task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="effpose-batcher")

    async def stop(self) -> None:
        """Stop forming batches; queued requests fail with :class:`Unavailable`."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        _fail(self._queue, Unavailable("service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: np.ndarray, deadline: float) -> tuple[np.ndarray, float]:
        """Outputs of ``run_batch`` for ``inputs`` (N, ...), computed in shared batches before ``deadline``,
        and the seconds the request waited in the queue.

        Raises :class:`Overloaded` at once when the queue cannot take the request, and
        :class:`DeadlineExceeded` when the deadline (on :attr:`clock`) passes first.
        Cancelling the caller drops its queued chunks.
        """
        if self._worker is None:
            raise Unavailable("batcher is not running")
        chunks = [inputs[i:i + self.max_batch_size] for i in range(0, len(inputs), self.max_batch_size)]
        if self._queue and len(self._queue) + len(chunks) > self.max_queue_length:
            raise Overloaded(f"queue full ({len(self._queue)} of {self.max_queue_length} chunks queued)",
                             retry_after=self.retry_after())
        loop, now = asyncio.get_running_loop(), self.clock()
        queued = [_Chunk(c, deadline, now, loop.create_future()) for c in chunks]
        self._queue.extend(queued)
        self._wakeup.set()
        futures = [chunk.future for chunk in queued]
        expiry = self.call_later(max(deadline - now, 0.0), partial(_expire, queued))
        try:  # asyncio.wait, not wait_for(gather): no wrapper future whose error could go unretrieved
            await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
            for error in [future.exception() for future in futures if future.done()]:  # none left unretrieved
                if error is not None:
                    raise error
            outputs = [future.result() for future in futures]
        finally:
            expiry.cancel()
            for future in futures:
                future.cancel()  # no-op for finished ones; drops still-queued chunks of a cancelled caller
            if any(chunk in self._queue for chunk in queued):  # a failed or cancelled caller: its chunks leave the
                self._queue = collections.deque(c for c in self._queue if c not in queued)  # queue's count now
        return np.concatenate(outputs, axis=0), max(chunk.started - chunk.enqueued for chunk in queued)

    def retry_after(self) -> float:
        """Seconds after which the queue is likely to have room: the time to drain it at the last batch speed."""
        batches = max(1, len(self._queue))
        return max(1.0, round(batches * self._last_batch_seconds, 1))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [chunk for chunk in await self._form_batch() if not chunk.future.done()]
            if not batch:  # every caller went away while the batch filled
                continue
            inputs = np.concatenate([chunk.inputs for chunk in batch], axis=0)
            started = self.clock()
            for chunk in batch:
                chunk.started = started
            try:
                outputs = await loop.run_in_executor(self._executor, self.run_batch, inputs)
            except asyncio.CancelledError:  # stopped mid-batch
                _fail(batch, Unavailable("service is shutting down"))
                raise
            except Exception as error:  # noqa: BLE001 - one failed batch fails only its own requests
                _fail(batch, error)
                continue
            finally:
                self._last_batch_seconds = self.clock() - started
            offset = 0
            for chunk in batch:
                if not chunk.future.done():
                    chunk.future.set_result(outputs[offset:offset + len(chunk.inputs)])
                offset += len(chunk.inputs)
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(inputs), self._last_batch_seconds))

    async def _form_batch(self) -> list[_Chunk]:
        """Take live chunks from the queue head until the batch is full or the oldest has waited long enough.

        Chunks of callers that went away are skipped and chunks past their deadline are failed, uncomputed.
        """
        batch: list[_Chunk] = []
        size = 0
        while True:
            while self._queue:
                chunk = self._queue[0]
                if chunk.future.done():
                    self._queue.popleft()
                    continue
                if chunk.deadline <= self.clock():
                    self._queue.popleft()
                    chunk.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                    continue
                if batch and (size + len(chunk.inputs) > self.max_batch_size or not self.enabled):
                    return batch
                batch.append(self._queue.popleft())
                size += len(chunk.inputs)
            if not batch or size >= self.max_batch_size or not self.enabled or not self._company_possible():
                return batch
            remaining = batch[0].enqueued + self.max_queue_delay_s - self.clock()
            if remaining <= 0:
                return batch
            self._wakeup.clear()  # set by the next submit, an announcement's end or the window's close
            window = self.call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            except asyncio.CancelledError:  # stopped while the batch waited for company: it will never run
                _fail(batch, Unavailable("service is shutting down"))
                raise
            finally:
                window.cancel()

    def _company_possible(self) -> bool:
        """Whether a partial batch may still get company by waiting."""
        return not self.wait_only_when_announced or self._announced > 0


def _fail(chunks: Iterable[_Chunk], error: BaseException) -> None:
    for chunk in chunks:
        if not chunk.future.done():
            chunk.future.set_exception(error)


def _expire(chunks: Iterable[_Chunk]) -> None:
    _fail(chunks, DeadlineExceeded("deadline passed while queued or computing"))
