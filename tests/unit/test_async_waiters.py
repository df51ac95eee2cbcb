"""The gateway's memory of requests accepted with `wait: false`: each reply is handed over once,
and ids with no reply are forgotten (and reported) after their deadline plus the grace."""

from __future__ import annotations

import time

import pytest

from gateway import results
from gateway.results import ASYNC_GRACE_S, Waiters


def test_an_async_reply_is_taken_once_and_a_waited_id_is_not_async() -> None:
    waiters = Waiters()
    assert waiters.accept("a1", "batch", deadline_s=120.0)
    assert waiters.take_async("a1") == "batch"
    assert waiters.take_async("a1") is None  # the same reply read twice
    assert waiters.take_async("never-accepted") is None
    assert waiters.sweep_async(time.monotonic() + 1e6) == []  # nothing left to forget


def test_unanswered_async_requests_are_swept_after_their_deadline_and_grace() -> None:
    waiters = Waiters()
    now = time.monotonic()
    waiters.accept("fast-1", "realtime", deadline_s=1.0)
    waiters.accept("slow", "batch", deadline_s=120.0)
    waiters.accept("fast-2", "realtime", deadline_s=1.0)
    waiters.accept("answered", "realtime", deadline_s=1.0)
    assert waiters.take_async("answered") == "realtime"
    assert waiters.sweep_async(now + 1.0 + ASYNC_GRACE_S - 0.5) == []  # still within the grace
    assert waiters.sweep_async(now + 1.0 + ASYNC_GRACE_S + 1.5) == ["realtime", "realtime"]
    assert waiters.take_async("fast-1") is None  # a reply after the sweep is not counted again
    assert waiters.take_async("slow") == "batch"


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "ASYNC_LIMIT", 2)
    waiters = Waiters()
    assert [waiters.accept(f"r{i}", "batch", 60.0) for i in range(3)] == [True, True, False]
    assert waiters.take_async("r2") is None
