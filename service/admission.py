"""Admission control: requests are admitted by the work ahead of them, and decoded pixels by a memory budget.

:class:`WorkAdmission` decides, in microseconds and before a request's body is read or its image decoded, whether
it can finish in time: the service's cost per request is measured as busy seconds per completed request (the
inverse of its throughput while it has work, over the last answers), so a new request is expected to
finish after ``(in_flight + 1) * cost`` seconds, times a calibration learnt from the latencies really seen. It is
refused at once (429, with ``Retry-After`` the time the work ahead needs to shrink enough) when that exceeds its
deadline or the service's latency target, whichever is sooner: queueing stays bounded, as in Envoy's adaptive
concurrency filter or Netflix's concurrency-limits, instead of timing out late after decode and detection have
already been spent on it.

:class:`PixelBudget` bounds the pixels decoded at once: a request waits (in arrival order, until its deadline) for
room for its image's pixels, read from the header before decoding, so that memory stays within the budget whatever
arrives; an image larger than the whole budget is refused with 413.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field

from service.errors import DeadlineExceeded, DeadlineTooShort, Overloaded, TooLarge

CALIBRATION_SMOOTHING = 0.05  # weight of one answered request in the latency calibration


@dataclass
class Ticket:
    """An admitted request: its deadline (``time.monotonic()``) and its place in the in-flight count until released."""

    deadline: float
    admitted: float
    expected_s: float = 0.0  # the latency admission expected for it
    _owner: WorkAdmission | None = field(default=None, repr=False)

    def release(self, succeeded: bool = False) -> None:
        """Leave the in-flight count (idempotent); ``succeeded``: the request was answered (a cost sample)."""
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner._finished(self, succeeded)


class WorkAdmission:
    """Admit a request only when the work already admitted leaves it time to finish (see the module docstring).

    ``latency_target_s`` bounds the expected latency of an admitted request (deadlines bound it too);
    ``max_in_flight`` is a hard cap on the count; ``initial_cost_s`` is the cost per request until measured; the
    cost is the busy time of the last ``window`` answered requests over their number. (A per-answer moving average
    would be biased low: batched answers arrive in bursts, one long sample then many near zero, and admission
    decisions fall mostly after the bursts, when such an average is at its lowest.)
    """

    def __init__(self, latency_target_s: float, max_in_flight: int, initial_cost_s: float = 0.2, window: int = 32):
        self.latency_target_s = latency_target_s
        self.max_in_flight = max_in_flight
        self._samples: collections.deque[float] = collections.deque([initial_cost_s], maxlen=window)
        self.calibration = 1.0  # moving average of (actual / expected latency) of answered requests
        self.in_flight = 0
        self._busy_since: float | None = None  # start of the current busy stretch, while in_flight > 0
        self._busy_s = 0.0  # busy seconds not yet charged to an answered request

    @property
    def cost_s(self) -> float:
        """Busy seconds per answered request, over the last ``window`` answers."""
        return sum(self._samples) / len(self._samples)

    def expected_latency_s(self) -> float:
        """Seconds a request admitted now is expected to take: the work ahead of it plus its own, times the
        calibration learnt from how long answered requests really took against what was expected for them (the
        cost fluctuates, and admissions fill every dip in it: uncorrected, latencies overshoot the target)."""
        return (self.in_flight + 1) * self.cost_s * self.calibration

    def admit(self, timeout_s: float) -> Ticket:
        """A :class:`Ticket` for a request with ``timeout_s`` to live, or :class:`Overloaded` at once."""
        now = time.monotonic()
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.in_flight} requests in flight, the limit is {self.max_in_flight}",
                             retry_after=self.cost_s, reason="in_flight_limit")
        if timeout_s < self.cost_s:
            raise DeadlineTooShort(f"a deadline of {timeout_s * 1000:.1f} ms is shorter than a request takes here "
                                   f"(about {self.cost_s * 1000:.0f} ms)")
        budget = min(timeout_s, self.latency_target_s)
        expected = self.expected_latency_s()
        if expected > budget and self.in_flight > 0:
            raise Overloaded(
                f"the {self.in_flight} requests in flight need about {expected - self.cost_s:.2f} s; this one would "
                f"not finish within {budget:.2f} s", retry_after=expected - budget, reason="overloaded")
        if self.in_flight == 0:
            self._busy_since = now
        self.in_flight += 1
        return Ticket(now + timeout_s, now, expected, self)

    def _finished(self, ticket: Ticket, succeeded: bool) -> None:
        """Busy time is charged to answered requests only: failures that cost little (a 415) must not make the
        service look faster than it is for real work; what they did cost is charged to the next answer."""
        now = time.monotonic()
        if self._busy_since is not None:
            self._busy_s += now - self._busy_since
        if succeeded:
            self._samples.append(self._busy_s)
            self._busy_s = 0.0
            if ticket.expected_s > 0:
                ratio = (now - ticket.admitted) / ticket.expected_s
                self.calibration += CALIBRATION_SMOOTHING * (min(max(ratio, 0.25), 4.0) - self.calibration)
        self.in_flight -= 1
        self._busy_since = now if self.in_flight else None

    def record_solo_cost(self, seconds: float) -> None:
        """Seed the cost per request with a measured one (e.g. the warm-up's), forgetting earlier samples."""
        self._samples.clear()
        self._samples.append(max(seconds, 1e-3))


@dataclass
class _Waiter:
    pixels: int
    future: asyncio.Future = field(repr=False)


class PixelBudget:
    """At most ``capacity`` decoded pixels at once; requests wait in arrival order until their deadline."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiters)

    async def acquire(self, pixels: int, deadline: float) -> None:
        """Reserve ``pixels``; waits for room (first come, first served) at most until ``deadline``.

        Raises :class:`TooLarge` when ``pixels`` exceeds the whole budget and :class:`DeadlineExceeded` when the
        deadline (``time.monotonic()``) passes first.
        """
        if pixels > self.capacity:
            raise TooLarge(f"image decodes to {pixels} pixels; the service's pixel budget is {self.capacity}")
        if not self._waiters and self.used + pixels <= self.capacity:
            self.used += pixels
            return
        waiter = _Waiter(pixels, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if not waiter.future.done():
                raise DeadlineExceeded("deadline passed while waiting for memory to decode the image") from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(pixels)  # granted just as the caller went away
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
                self._waiters.remove(waiter)
                self._grant()

    def release(self, pixels: int) -> None:
        """Return ``pixels`` to the budget and let waiters in."""
        self.used -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0].pixels <= self.capacity:
            waiter = self._waiters.popleft()
            self.used += waiter.pixels
            waiter.future.set_result(None)


def retry_after_header(seconds: float) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) for a wait of ``seconds``."""
    return str(max(1, math.ceil(seconds)))
