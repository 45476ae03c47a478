"""The dynamic batcher's queue policy: batching across requests, bounded queue, deadlines, cancellation, faults.

Time is a :class:`FakeClock` that moves only when a test advances it, and a :class:`Model` can be held inside a
call until the test releases it: every scenario runs in one fixed order, with no sleeps and no timing margins.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pytest

from service.batcher import BatchStats, DynamicBatcher
from service.errors import DeadlineExceeded, Overloaded, Unavailable

T = TypeVar("T")
HANG_GUARD_S = 30.0  # turns a hang into a failure; a passing scenario never comes near it
WINDOW = 0.5  # the batching window in fake seconds: powers of two, so that fake times add up exactly
NEVER = 1e9  # a deadline that no scenario reaches


@dataclass
class FakeTimer:
    """A callback due at ``when`` on a :class:`FakeClock`."""

    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Call the timer off."""
        self.cancelled = True


class FakeClock:
    """Seconds that pass only in :meth:`advance`, which fires the timers that come due, in order of due time."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self._timers: list[FakeTimer] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        """Schedule ``callback`` ``delay`` fake seconds from now."""
        timer = FakeTimer(self.now + delay, callback)
        self._timers.append(timer)
        return timer

    def armed(self) -> list[float]:
        """Due times of the timers still to fire."""
        return sorted(timer.when for timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time on and fire what came due."""
        self.now += seconds
        due = sorted((t for t in self._timers if not t.cancelled and t.when <= self.now), key=lambda t: t.when)
        self._timers = [t for t in self._timers if not t.cancelled and t.when > self.now]
        for timer in due:
            timer.callback()


class Model:
    """Doubles its input and records every batch; a held model waits inside each call until the test releases it."""

    def __init__(self, hold: bool = False, fail_on: float | None = None):
        self.hold, self.fail_on = hold, fail_on
        self.batches: list[np.ndarray] = []
        self.threads: set[str] = set()
        self._entered = threading.Semaphore(0)
        self._released = threading.Semaphore(0)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(inputs.copy())
        if self.hold:
            self._entered.release()
            if not self._released.acquire(timeout=HANG_GUARD_S):
                raise TimeoutError("the test never released this model call")
        if self.fail_on is not None and np.any(inputs == self.fail_on):
            raise RuntimeError("model failure")
        return inputs * 2

    async def entered(self) -> None:
        """Return once a call is inside the (held) model."""
        assert await asyncio.to_thread(self._entered.acquire, timeout=HANG_GUARD_S), "the model was never called"

    def release(self, calls: int = 1) -> None:
        """Let ``calls`` held calls (present or future) return."""
        self._released.release(calls)

    def firsts(self) -> list[float]:
        """The first value of every batch, in call order."""
        return [float(batch.flat[0]) for batch in self.batches]


def items(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 3), value, np.float32)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a scenario on a fresh event loop; a hang fails it."""
    return asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD_S))


def started(model: Model, clock: FakeClock, **settings: Any) -> DynamicBatcher:
    """A running batcher on the fake clock."""
    batcher = DynamicBatcher(model, clock=clock, call_later=clock.call_later, **settings)
    batcher.start()
    return batcher


async def settle(condition: Callable[[], bool]) -> None:
    """Let the event loop turn until ``condition`` holds (for steps on the loop alone: a few turns suffice)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the batcher never reached the expected state")


async def enqueue(batcher: DynamicBatcher, inputs: np.ndarray, deadline: float = NEVER) -> asyncio.Task:
    """Submit as a task; return once the request is queued (the task then waits for its outputs)."""
    depth = batcher.depth
    request = asyncio.ensure_future(batcher.submit(inputs, deadline))
    await settle(lambda: batcher.depth > depth)
    return request


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=8, max_queue_delay_s=WINDOW)
        results = await asyncio.gather(*(batcher.submit(items(i, 2), NEVER) for i in range(4)))
        await batcher.stop()
        return model, results

    model, results = run(scenario)
    for index, (outputs, queue_seconds) in enumerate(results):
        np.testing.assert_array_equal(outputs, items(index, 2) * 2)
        assert queue_seconds == 0.0  # the batch was full: it did not wait for the window
    assert len(model.batches) == 1 and len(model.batches[0]) == 8
    assert model.threads and threading.main_thread().name not in model.threads  # off the event loop


def test_requests_within_the_window_share_a_batch_that_leaves_when_the_window_closes() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=8, max_queue_delay_s=WINDOW)
        opened = clock.now
        first = await enqueue(batcher, items(1))
        await settle(lambda: opened + WINDOW in clock.armed())  # the batch waits for company until then
        clock.advance(WINDOW / 2)
        second = await enqueue(batcher, items(2))
        await settle(lambda: batcher.depth == 0)  # taken into the waiting batch
        clock.advance(WINDOW / 2)
        shared = await asyncio.gather(first, second)
        late = await enqueue(batcher, items(3))  # after the window: a batch (and a window) of its own
        await settle(lambda: clock.now + WINDOW in clock.armed())
        clock.advance(WINDOW)
        alone = await late
        await batcher.stop()
        return model, shared, alone

    model, shared, alone = run(scenario)
    assert [queue_seconds for _, queue_seconds in shared] == [WINDOW, WINDOW / 2]
    assert [float(outputs[0, 0]) for outputs, _ in shared] == [2.0, 4.0]
    assert alone[1] == WINDOW
    assert [batch[:, 0].tolist() for batch in model.batches] == [[1.0, 2.0], [3.0]]


def test_a_batch_that_fills_up_leaves_before_its_window_closes() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=4, max_queue_delay_s=WINDOW)
        opened = clock.now
        first = await enqueue(batcher, items(1, 2))
        await settle(lambda: opened + WINDOW in clock.armed())  # half full, waiting in its window
        results = await asyncio.gather(first, batcher.submit(items(2, 2), NEVER))  # the clock never moves
        await batcher.stop()
        return model, results

    model, results = run(scenario)
    assert [queue_seconds for _, queue_seconds in results] == [0.0, 0.0]
    assert [batch[:, 0].tolist() for batch in model.batches] == [[1.0, 1.0, 2.0, 2.0]]


def test_batch_never_exceeds_max_size_and_big_requests_are_split() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=4, max_queue_delay_s=WINDOW)
        big = np.arange(10, dtype=np.float32).reshape(10, 1)
        request = await enqueue(batcher, big)
        clock.advance(WINDOW)  # the last, partial chunk need not wait for company
        outputs, _ = await request
        await batcher.stop()
        return model, big, outputs

    model, big, outputs = run(scenario)
    np.testing.assert_array_equal(outputs, big * 2)
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_batching_off_runs_every_request_alone() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=8, max_queue_delay_s=WINDOW, enabled=False)
        await asyncio.gather(*(batcher.submit(items(i), NEVER) for i in range(3)))
        await batcher.stop()
        return model

    assert [len(b) for b in run(scenario).batches] == [1, 1, 1]


def test_full_queue_refuses_at_once_and_keeps_serving_the_queued() -> None:
    async def scenario():
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=1, max_queue_delay_s=0.0, max_queue_length=2)
        first = asyncio.ensure_future(batcher.submit(items(0), NEVER))
        await model.entered()  # the first request is in the model; the queue is empty
        queued = [await enqueue(batcher, items(i)) for i in (1, 2)]
        with pytest.raises(Overloaded) as refused:
            batcher.submit(items(3), NEVER).send(None)  # refused in its first step: the caller never waits
        model.release(3)
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused.value, done

    refused, done = run(scenario)
    assert refused.retry_after >= 1.0
    assert [float(out[0, 0]) for out, _ in done] == [0.0, 2.0, 4.0]


def test_an_empty_queue_takes_a_request_larger_than_the_queue() -> None:
    async def scenario():
        batcher = started(Model(), FakeClock(), max_batch_size=1, max_queue_length=2)
        outputs, _ = await batcher.submit(items(1, 5), NEVER)
        await batcher.stop()
        return outputs

    assert len(run(scenario)) == 5


def test_requests_fail_when_their_deadline_passes_and_queued_ones_are_never_computed() -> None:
    async def scenario():
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=1, max_queue_delay_s=0.0)
        computing = asyncio.ensure_future(batcher.submit(items(0), clock.now + 2.0))
        await model.entered()
        expiring = await enqueue(batcher, items(7), clock.now + 1.0)
        clock.advance(1.0)  # passes while it waits behind the model call: it fails then and there
        with pytest.raises(DeadlineExceeded):
            await expiring
        clock.advance(1.0)  # passes while the model computes
        with pytest.raises(DeadlineExceeded):
            await computing
        model.release(2)
        after, _ = await batcher.submit(items(8), NEVER)
        await batcher.stop()
        return model, after

    model, after = run(scenario)
    assert model.firsts() == [0.0, 8.0] and float(after[0, 0]) == 16.0


def test_a_chunk_found_expired_when_its_batch_forms_is_dropped_not_computed() -> None:
    async def scenario():
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=1, max_queue_delay_s=0.0)
        blocker = asyncio.ensure_future(batcher.submit(items(0), NEVER))
        await model.entered()
        expiring = await enqueue(batcher, items(7), clock.now + 1.0)
        clock.now += 1.0  # its deadline has passed but its timer has not fired yet (timers run late)
        model.release(2)
        await blocker
        with pytest.raises(DeadlineExceeded, match="while queued$"):  # failed by the batch former
            await expiring
        after, _ = await batcher.submit(items(8), NEVER)
        await batcher.stop()
        return model, after

    model, after = run(scenario)
    assert model.firsts() == [0.0, 8.0] and float(after[0, 0]) == 16.0


def test_cancelled_caller_has_its_queued_work_dropped() -> None:
    async def scenario():
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=1, max_queue_delay_s=0.0, max_queue_length=1)
        blocker = asyncio.ensure_future(batcher.submit(items(0), NEVER))
        await model.entered()
        gone = await enqueue(batcher, items(5))
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.depth == 0  # gone from the queue's count at once, while the model is still busy
        after = await enqueue(batcher, items(6))  # so the one-chunk queue takes the next request
        model.release(2)
        await blocker
        outputs = await after
        await batcher.stop()
        return model, outputs

    model, (after, _) = run(scenario)
    assert float(after[0, 0]) == 12.0
    assert model.firsts() == [0.0, 6.0]


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    async def scenario():
        batcher = started(Model(fail_on=9), FakeClock(), max_batch_size=1, max_queue_delay_s=0.0)
        results = await asyncio.gather(batcher.submit(items(9), NEVER), batcher.submit(items(1), NEVER),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    failed, ok = run(scenario)
    assert isinstance(failed, RuntimeError)
    assert float(ok[0][0, 0]) == 2.0


def test_waits_at_most_the_queue_delay_for_a_partial_batch() -> None:
    async def scenario():
        clock = FakeClock()
        batcher = started(Model(), clock, max_batch_size=64, max_queue_delay_s=WINDOW)
        opened = clock.now
        request = await enqueue(batcher, items(1))
        await settle(lambda: opened + WINDOW in clock.armed())
        clock.advance(WINDOW)
        _, queue_seconds = await request
        await batcher.stop()
        return queue_seconds

    assert run(scenario) == WINDOW


def test_with_nothing_announced_a_partial_batch_runs_at_once() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=64, max_queue_delay_s=WINDOW, wait_only_when_announced=True)
        outputs, queue_seconds = await batcher.submit(items(1), NEVER)  # the clock never moves
        await batcher.stop()
        return outputs, queue_seconds, clock.armed()

    outputs, queue_seconds, armed = run(scenario)
    assert float(outputs[0, 0]) == 2.0 and queue_seconds == 0.0
    assert armed == []  # no window was opened


async def announced(batcher: DynamicBatcher, cpu_stage: asyncio.Event, inputs: np.ndarray | None) -> Any:
    """A request as the service core makes one: announced while its CPU stage (until ``cpu_stage`` is set) runs,
    then submitted at once, unless its stage found nothing to submit (``inputs`` None)."""
    with batcher.expecting():
        await cpu_stage.wait()
    return None if inputs is None else await batcher.submit(inputs, NEVER)


def test_a_partial_batch_waits_for_an_announced_request_and_takes_it() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=64, max_queue_delay_s=WINDOW, wait_only_when_announced=True)
        cpu_stage, opened = asyncio.Event(), clock.now
        second = asyncio.ensure_future(announced(batcher, cpu_stage, items(2)))
        first = await enqueue(batcher, items(1))
        await settle(lambda: opened + WINDOW in clock.armed())  # waits: a request is on its way
        clock.advance(WINDOW / 4)
        cpu_stage.set()
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return model, results

    model, results = run(scenario)
    assert [batch[:, 0].tolist() for batch in model.batches] == [[1.0, 2.0]]
    assert [queue_seconds for _, queue_seconds in results] == [WINDOW / 4, 0.0]


def test_a_waiting_batch_leaves_when_the_announced_request_brings_nothing() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=64, max_queue_delay_s=WINDOW, wait_only_when_announced=True)
        cpu_stage, opened = asyncio.Event(), clock.now
        empty = asyncio.ensure_future(announced(batcher, cpu_stage, None))  # e.g. an image with nobody in it
        first = await enqueue(batcher, items(1))
        await settle(lambda: opened + WINDOW in clock.armed())
        cpu_stage.set()
        outputs, queue_seconds = await first  # the clock never reaches the window's end
        await empty
        await batcher.stop()
        return outputs, queue_seconds

    outputs, queue_seconds = run(scenario)
    assert float(outputs[0, 0]) == 2.0 and queue_seconds == 0.0


def test_batch_stats_report_every_model_call() -> None:
    async def scenario():
        stats: list[BatchStats] = []
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=3, max_queue_delay_s=0.0, on_batch=stats.append)
        request = asyncio.ensure_future(batcher.submit(items(1, 5), NEVER))
        for _ in range(2):
            await model.entered()
            clock.advance(0.25)  # each model call takes a quarter of a (fake) second
            model.release()
        await request
        await batcher.stop()
        return stats

    assert run(scenario) == [BatchStats(size=3, seconds=0.25), BatchStats(size=2, seconds=0.25)]


def test_stop_fails_running_and_queued_requests_without_computing_the_queued() -> None:
    async def scenario():
        clock, model = FakeClock(), Model(hold=True)
        batcher = started(model, clock, max_batch_size=1, max_queue_delay_s=0.0)
        running_one = asyncio.ensure_future(batcher.submit(items(1), NEVER))
        await model.entered()
        queued = await enqueue(batcher, items(2))
        model.release()  # the running call may end (stop joins the model thread); stop cancels its batch first
        await batcher.stop()
        results = await asyncio.gather(running_one, queued, return_exceptions=True)
        with pytest.raises(Unavailable):
            await batcher.submit(items(3), NEVER)
        return model, results

    model, results = run(scenario)
    assert all(isinstance(r, Unavailable) for r in results)
    assert model.firsts() == [1.0]


def test_stop_fails_a_batch_that_waits_out_its_window() -> None:
    async def scenario():
        clock, model = FakeClock(), Model()
        batcher = started(model, clock, max_batch_size=8, max_queue_delay_s=WINDOW)
        waiting = await enqueue(batcher, items(1))
        await settle(lambda: batcher.depth == 0 and clock.armed())  # taken into a batch that waits for company
        await batcher.stop()
        return model, await asyncio.gather(waiting, return_exceptions=True)

    model, (result,) = run(scenario)
    assert isinstance(result, Unavailable) and model.batches == []


def test_rejects_absurd_settings() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), max_queue_delay_s=-1)
