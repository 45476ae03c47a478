"""Thread priorities: the work threads (CPU pool, model thread, ONNX Runtime's pools) run at a lower priority than
the event loop, so that the loop (health probes, admission, refusals, answers) gets a CPU at once when the
container's CPUs are saturated by inference. Linux only (per-thread nice values); elsewhere nothing changes."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_NICE = 19
TASKS = Path("/proc/self/task")


def _renice(thread_id: int, niceness: int) -> None:
    """Raise the nice value of one thread of this process by ``niceness`` (never lowers it; errors ignored)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(MAX_NICE, current + niceness))
    except OSError as error:  # the thread ended, or the platform refuses: priorities are an optimisation
        log.debug("could not renice thread %d: %s", thread_id, error)


def lower_current_thread(niceness: int) -> Callable[[], None]:
    """A thread initializer (for ``ThreadPoolExecutor``) that lowers its thread's priority by ``niceness``."""
    def initializer() -> None:
        _renice(threading.get_native_id(), niceness)
    return initializer


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir(TASKS)}
    except OSError:
        return set()


def lowering_new_threads(niceness: int, build: Callable[[], T]) -> T:
    """``build()``, with every thread it starts (e.g. ONNX Runtime's intra-op pool) lowered by ``niceness``."""
    before = _thread_ids()
    built = build()
    for thread_id in _thread_ids() - before:
        _renice(thread_id, niceness)
    return built
