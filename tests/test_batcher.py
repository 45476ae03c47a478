"""The dynamic batcher's queue policy: batching across requests, bounded queue, deadlines, cancellation, faults."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import BatchStats, DynamicBatcher
from service.errors import DeadlineExceeded, Overloaded, Unavailable


class RecordingModel:
    """Doubles its input; records every batch; can be slowed down or made to fail on a marked input."""

    def __init__(self, seconds: float = 0.0, fail_on: float | None = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[np.ndarray] = []
        self.threads: set[str] = set()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(inputs.copy())
        time.sleep(self.seconds)
        if self.fail_on is not None and np.any(inputs == self.fail_on):
            raise RuntimeError("model failure")
        return inputs * 2


def items(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 3), value, np.float32)


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def running(batcher: DynamicBatcher) -> DynamicBatcher:
    batcher.start()
    return batcher


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    async def scenario():
        model = RecordingModel()
        batcher = await running(DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0.05))
        results = await asyncio.gather(*(batcher.submit(items(i, 2), later()) for i in range(4)))
        await batcher.stop()
        return model, results

    model, results = asyncio.run(scenario())
    for index, (outputs, queue_seconds) in enumerate(results):
        np.testing.assert_array_equal(outputs, items(index, 2) * 2)
        assert 0.0 <= queue_seconds < 1.0
    assert len(model.batches) == 1 and len(model.batches[0]) == 8
    assert model.threads and threading.main_thread().name not in model.threads  # off the event loop


def test_batch_never_exceeds_max_size_and_big_requests_are_split():
    async def scenario():
        model = RecordingModel()
        batcher = await running(DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.02))
        big = np.arange(10, dtype=np.float32).reshape(10, 1)
        outputs, _ = await batcher.submit(big, later())
        await batcher.stop()
        return model, big, outputs

    model, big, outputs = asyncio.run(scenario())
    np.testing.assert_array_equal(outputs, big * 2)
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_batching_off_runs_every_request_alone():
    async def scenario():
        model = RecordingModel()
        batcher = await running(DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0.05, enabled=False))
        await asyncio.gather(*(batcher.submit(items(i), later()) for i in range(3)))
        await batcher.stop()
        return model

    assert [len(b) for b in asyncio.run(scenario()).batches] == [1, 1, 1]


def test_full_queue_refuses_at_once_and_keeps_serving_the_queued():
    async def scenario():
        model = RecordingModel(seconds=0.2)
        batcher = await running(DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0, max_queue_length=2))
        first = asyncio.ensure_future(batcher.submit(items(0), later()))
        await asyncio.sleep(0.05)  # the first request is now in the model; the queue is empty
        queued = [asyncio.ensure_future(batcher.submit(items(i), later())) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(items(3), later())
        refusal_seconds = time.perf_counter() - started
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused.value, refusal_seconds, done

    refused, refusal_seconds, done = asyncio.run(scenario())
    assert refusal_seconds < 0.05 and refused.retry_after >= 1.0
    assert [float(out[0, 0]) for out, _ in done] == [0.0, 2.0, 4.0]


def test_an_empty_queue_takes_a_request_larger_than_the_queue():
    async def scenario():
        batcher = await running(DynamicBatcher(RecordingModel(), max_batch_size=1, max_queue_length=2))
        outputs, _ = await batcher.submit(items(1, 5), later())
        await batcher.stop()
        return outputs

    assert len(asyncio.run(scenario())) == 5


def test_expired_requests_are_dropped_not_computed():
    async def scenario():
        model = RecordingModel(seconds=0.3)
        batcher = await running(DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0))
        blocker = asyncio.ensure_future(batcher.submit(items(0), later()))
        await asyncio.sleep(0.05)
        expiring = asyncio.ensure_future(batcher.submit(items(7), time.monotonic() + 0.1))
        with pytest.raises(DeadlineExceeded):
            await expiring
        await blocker
        await asyncio.sleep(0.05)
        await batcher.stop()
        return model

    model = asyncio.run(scenario())
    assert all(not np.any(batch == 7) for batch in model.batches)


def test_cancelled_caller_has_its_queued_work_dropped():
    async def scenario():
        model = RecordingModel(seconds=0.2)
        batcher = await running(DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0))
        blocker = asyncio.ensure_future(batcher.submit(items(0), later()))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(items(5), later()))
        await asyncio.sleep(0.01)
        gone.cancel()
        after = await batcher.submit(items(6), later())
        await blocker
        await batcher.stop()
        return model, after

    model, (after, _) = asyncio.run(scenario())
    assert float(after[0, 0]) == 12.0
    assert all(not np.any(batch == 5) for batch in model.batches)


def test_a_failing_batch_fails_only_its_own_requests():
    async def scenario():
        model = RecordingModel(fail_on=9)
        batcher = await running(DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0.0))
        results = await asyncio.gather(batcher.submit(items(9), later()), batcher.submit(items(1), later()),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    failed, ok = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError)
    assert float(ok[0][0, 0]) == 2.0


def test_waits_at_most_the_queue_delay_for_a_partial_batch():
    async def scenario():
        batcher = await running(DynamicBatcher(RecordingModel(), max_batch_size=64, max_queue_delay_s=0.05))
        started = time.perf_counter()
        await batcher.submit(items(1), later())
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    assert 0.04 <= asyncio.run(scenario()) < 1.0


def test_batch_stats_report_every_model_call():
    async def scenario():
        stats: list[BatchStats] = []
        batcher = await running(DynamicBatcher(RecordingModel(seconds=0.01), max_batch_size=3, max_queue_delay_s=0.0,
                                               on_batch=stats.append))
        await batcher.submit(items(1, 5), later())
        await batcher.stop()
        return stats

    stats = asyncio.run(scenario())
    assert [s.size for s in stats] == [3, 2] and all(s.seconds >= 0.01 for s in stats)


def test_stop_fails_running_and_queued_requests_promptly():
    async def scenario():
        batcher = await running(DynamicBatcher(RecordingModel(seconds=0.3), max_batch_size=1, max_queue_delay_s=0.0))
        running_one = asyncio.ensure_future(batcher.submit(items(1), later()))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(items(2), later()))
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        await batcher.stop()
        results = await asyncio.gather(running_one, queued, return_exceptions=True)
        with pytest.raises(Unavailable):
            await batcher.submit(items(3), later())
        return results, time.perf_counter() - started

    results, seconds = asyncio.run(scenario())
    assert all(isinstance(r, Unavailable) for r in results)
    assert seconds < 2.0


def test_rejects_absurd_settings():
    with pytest.raises(ValueError):
        DynamicBatcher(RecordingModel(), max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(RecordingModel(), max_queue_delay_s=-1)
