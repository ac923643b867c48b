"""The API's background dispatch (tasks/dispatch.py `dispatch_in_background`): admissions that
come while a pass runs are covered by one more pass, and the dispatch thread's passes for one
queue start at least BACKGROUND_SPACING_SECONDS apart.

The pass itself (a transaction and a publish, tested against PostgreSQL and Redis in
tests/integration) is replaced by a recorder: what is tested here is the scheduling."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from db.dispatch import QueueKey
from tasks import dispatch
from tests.fixtures.processes import wait_until


def test_a_burst_is_covered_by_few_spaced_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[float] = []
    admitted_before: list[int] = []
    admitted = 0

    def one_pass(url: str, keys: list[QueueKey], ahead: int) -> int:
        starts.append(time.monotonic())
        admitted_before.append(admitted)
        time.sleep(0.002)  # a pass's round trips
        return 0

    monkeypatch.setattr(dispatch, "dispatch_queues", one_pass)
    key = QueueKey("tone", "default", "interactive")
    token = ("postgresql://coalescing-test", key, 2)
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # an admission every 0.5 ms for 100 ms
        admitted += 1
        dispatch.dispatch_in_background(token[0], key, token[2])
        time.sleep(0.0005)

    def finished() -> bool:
        with dispatch._lock:
            return token not in dispatch._running

    wait_until(finished, timeout=10, what="the dispatch thread to finish its passes")
    # Every admission is covered: a pass started after the last one was admitted.
    assert admitted_before[-1] == admitted
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= dispatch.BACKGROUND_SPACING_SECONDS * 0.95 for g in gaps), gaps
    # About one pass per 10 ms of admissions, not one per admission (~200 here).
    assert 2 <= len(starts) <= 0.1 / dispatch.BACKGROUND_SPACING_SECONDS + 3, len(starts)


def test_a_lone_admission_is_dispatched_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue with no recent pass is filled at once: the dispatch thread does not sleep."""
    ran = threading.Event()
    slept: list[float] = []

    def one_pass(url: str, keys: list[QueueKey], ahead: int) -> int:
        ran.set()
        return 1

    monkeypatch.setattr(dispatch, "dispatch_queues", one_pass)
    monkeypatch.setattr(time, "sleep", slept.append)  # the module dispatch calls
    dispatch.dispatch_in_background(
        "postgresql://coalescing-test", QueueKey("tone", "lone", "batch"), 2
    )
    assert ran.wait(10)
    assert slept == []
