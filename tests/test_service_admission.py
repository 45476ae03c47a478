"""Admission by work and the pixel budget: the policies on their own, then against the real service on loopback
(overload refused early, cheaply and with an honest Retry-After; health answered at once; big images queued for
memory, not refused)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.admission import PixelBudget, WorkAdmission, retry_after_header
from service.errors import DeadlineExceeded, DeadlineTooShort, Overloaded, TooLarge
from tests.service_support import encode, running_service

JPEG = encode(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
BOX = [40.0, 20.0, 200.0, 230.0]


# --- WorkAdmission --------------------------------------------------------------------------------------------------

def test_admission_refuses_what_would_not_finish_within_the_target() -> None:
    admission = WorkAdmission(latency_target_s=1.0, max_in_flight=100, initial_cost_s=0.3)
    tickets = [admission.admit(10.0) for _ in range(3)]  # expected latencies 0.3, 0.6, 0.9 s
    with pytest.raises(Overloaded) as refused:
        admission.admit(10.0)  # would take 1.2 s
    assert refused.value.reason == "overloaded" and refused.value.retry_after == pytest.approx(0.2)
    with pytest.raises(Overloaded):
        admission.admit(0.5)  # a shorter deadline is refused sooner
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert admission.in_flight == 2 and admission.admit(10.0)


def test_admission_hard_cap_and_impossible_deadlines() -> None:
    admission = WorkAdmission(latency_target_s=100.0, max_in_flight=2, initial_cost_s=0.1)
    admission.admit(10.0), admission.admit(10.0)
    with pytest.raises(Overloaded) as refused:
        admission.admit(10.0)
    assert refused.value.reason == "in_flight_limit"
    with pytest.raises(DeadlineTooShort, match="shorter than a request takes"):
        WorkAdmission(1.0, 10, initial_cost_s=0.1).admit(0.05)
    assert retry_after_header(0.2) == "1" and retry_after_header(2.1) == "3"


def test_cost_is_busy_time_per_answered_request(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("service.admission.time.monotonic", lambda: clock[0])
    admission = WorkAdmission(latency_target_s=10.0, max_in_flight=10, initial_cost_s=1.0, window=2)
    admission.record_solo_cost(0.5)
    for _ in range(3):
        failing = admission.admit(10.0)
        clock[0] += 0.01
        failing.release(succeeded=False)  # a cheap failure (a 415): charged to the next answer, not a sample
    answered = admission.admit(10.0)
    clock[0] += 0.2
    answered.release(succeeded=True)
    assert admission.cost_s == pytest.approx((0.5 + 0.23) / 2)
    first, second = admission.admit(10.0), admission.admit(10.0)  # two in parallel, answered 0.3 s and 0.4 s in
    clock[0] += 0.3
    first.release(succeeded=True)
    clock[0] += 0.1
    second.release(succeeded=True)
    assert admission.cost_s == pytest.approx(0.4 / 2)  # busy 0.4 s for the last two answers
    clock[0] += 5.0  # idle time is no one's cost
    third = admission.admit(10.0)
    clock[0] += 0.1
    third.release(succeeded=True)
    assert admission.cost_s == pytest.approx((0.1 + 0.1) / 2)


def test_latencies_longer_than_expected_make_admission_stricter(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("service.admission.time.monotonic", lambda: clock[0])
    admission = WorkAdmission(latency_target_s=1.0, max_in_flight=100, initial_cost_s=0.1, window=1000)
    for _ in range(40):  # every request takes 3x what was expected of it
        ticket = admission.admit(10.0)
        clock[0] += 3 * ticket.expected_s
        ticket.release(succeeded=True)
        admission.record_solo_cost(0.1)  # keep the cost itself fixed: only the calibration learns
    assert 2.5 < admission.calibration < 3.0
    admitted = [admission.admit(10.0) for _ in range(3)]  # 3 x 0.1 x ~2.8 < 1 s; a 4th would not fit
    with pytest.raises(Overloaded):
        admission.admit(10.0)
    assert len(admitted) == 3


# --- PixelBudget ----------------------------------------------------------------------------------------------------

def test_pixel_budget_queues_in_order_times_out_and_refuses_what_never_fits() -> None:
    async def scenario() -> list[str]:
        budget, order = PixelBudget(100), []
        await budget.acquire(60, time.monotonic() + 1)

        async def wait_for(name: str, pixels: int) -> None:
            await budget.acquire(pixels, time.monotonic() + 5)
            order.append(name)

        waiters = [asyncio.create_task(wait_for("big", 80)), asyncio.create_task(wait_for("small", 10))]
        await asyncio.sleep(0.01)
        assert budget.waiting == 2 and order == []  # small would fit, but waits behind big (no starvation)
        with pytest.raises(DeadlineExceeded):
            await budget.acquire(50, time.monotonic() + 0.01)
        with pytest.raises(TooLarge):
            await budget.acquire(101, time.monotonic() + 1)
        budget.release(60)
        await asyncio.gather(*waiters)
        assert budget.used == 90 and budget.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_cancelled_waiter_leaves_the_budget_intact() -> None:
    async def scenario() -> int:
        budget = PixelBudget(10)
        await budget.acquire(10, time.monotonic() + 1)
        waiter = asyncio.create_task(budget.acquire(5, time.monotonic() + 5))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        budget.release(10)
        return budget.used + budget.waiting

    assert asyncio.run(scenario()) == 0


# --- the real service -----------------------------------------------------------------------------------------------

def timed(function, *args):  # noqa: ANN001, ANN202 - a tiny test helper
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


@pytest.mark.slow
def test_overload_is_refused_early_and_health_answers_at_once(random_onnx_a: Path) -> None:
    with running_service(pose_model=random_onnx_a, latency_target_s=0.5, max_batch_size=4) as running, \
            httpx.Client(base_url=running.base_url, timeout=60) as http:
        boxes = json.dumps([BOX] * 12)

        def heavy(_: int) -> tuple[httpx.Response, float]:
            with httpx.Client(base_url=running.base_url, timeout=60) as own:
                return timed(lambda: own.post("/v1/pose", content=JPEG, params={"boxes": boxes, "flip": "true"},
                                              headers={"content-type": "image/jpeg"}))

        with ThreadPoolExecutor(16) as pool:
            flood = pool.map(heavy, range(48))
            health = [timed(http.get, "/healthz")[1] for _ in range(20)]
            answers = list(flood)
        refused = [(r, s) for r, s in answers if r.status_code == 429]
        served = [(r, s) for r, s in answers if r.status_code == 200]
        assert len(refused) + len(served) == len(answers) and refused and served
        reasons = {r.json()["error"]["reason"] for r, _ in refused}
        # the batcher's queue is the backstop while the first answers teach admission what these requests cost
        assert "overloaded" in reasons and reasons <= {"overloaded", "queue_full"}
        assert all(int(r.headers["retry-after"]) >= 1 for r, _ in refused)
        assert np.median([s for _, s in refused]) < np.median([s for _, s in served])  # refused before the work
        assert np.percentile(health, 90) < 0.5 and max(health) < 2.0, health  # liveness does not queue behind work
        text = http.get("/metrics").text
        assert 'effpose_rejected_requests_total{reason="overloaded"}' in text
        assert 'effpose_error_duration_seconds_count{code="429",route="/v1/pose"}' in text


def test_large_images_wait_for_the_pixel_budget_instead_of_being_refused(random_onnx_a: Path) -> None:
    side = 1000
    big = encode(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8), "PNG")
    with running_service(pose_model=random_onnx_a, max_image_pixels=side * side, pixel_budget=side * side,
                         latency_target_s=60) as running, httpx.Client(base_url=running.base_url, timeout=60) as http:
        def post(_: int) -> int:
            with httpx.Client(base_url=running.base_url, timeout=60) as own:
                return own.post("/v1/pose", content=big, headers={"content-type": "image/png"}).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(post, range(4))) == [200] * 4  # one at a time fits: nothing refused
        assert running.service.core.pixels.used == 0
        assert "effpose_decoded_pixels 0.0" in http.get("/metrics").text
