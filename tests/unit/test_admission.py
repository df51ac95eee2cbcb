"""Admission refuses what cannot meet its deadline or finds the queue full, and says which."""

from __future__ import annotations

import pytest

from gateway.admission import TierLoad, admit
from gateway.errors import QueueFull


def test_an_idle_tier_admits_with_no_wait() -> None:
    decision = admit("realtime", TierLoad(backlog=0, capacity_per_s=1000, service_ms=1), 100, deadline_ms=50)
    assert (decision.position, decision.wait_ms) == (0, 0.0)


def test_a_full_queue_is_refused_naming_the_limit() -> None:
    with pytest.raises(QueueFull) as info:
        admit("batch", TierLoad(backlog=10, capacity_per_s=2), max_queue=10, deadline_ms=10**6)
    assert info.value.message == "the batch queue is full (10 requests waiting, limit 10); retry later"
    assert info.value.retry_after_s == 1


def test_a_doomed_request_is_refused_naming_the_estimate() -> None:
    load = TierLoad(backlog=500, capacity_per_s=1000, service_ms=5)  # 500 ms of queue ahead
    with pytest.raises(QueueFull) as info:
        admit("interactive", load, max_queue=10_000, deadline_ms=200)
    assert "deadline of 200 ms cannot be met on the interactive tier" in info.value.message
    assert "about 500 ms of queue ahead (500 requests) plus 5.0 ms of service" in info.value.message
    assert info.value.status == 429 and info.value.retry_after_s >= 1


def test_a_request_that_fits_its_deadline_is_admitted_with_its_estimate() -> None:
    decision = admit("interactive", TierLoad(backlog=100, capacity_per_s=1000, service_ms=5), 10_000, deadline_ms=200)
    assert decision.position == 100 and decision.wait_ms == pytest.approx(100.0)


def test_unknown_capacity_only_applies_the_queue_limit() -> None:
    decision = admit("batch", TierLoad(backlog=5), max_queue=10, deadline_ms=1)
    assert decision.wait_ms is None
