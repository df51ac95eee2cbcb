"""Admission refuses what cannot meet its deadline or finds the queue full, and says which."""

from __future__ import annotations

import pytest

from core.errors import QueueFull
from core.protocol import Heartbeat
from gateway.admission import DEADLINE_SHARE, Capacity, admit, capacity_from, projected_backlog


def test_an_idle_tier_admits_with_no_wait() -> None:
    decision = admit("realtime", 0, Capacity(per_s=1000, service_ms=1, workers=1), 100, deadline_ms=50)
    assert (decision.position, decision.wait_ms) == (0, 0.0)


def test_a_full_queue_is_refused_naming_the_limit() -> None:
    with pytest.raises(QueueFull) as info:
        admit("batch", 10, Capacity(per_s=2, service_ms=1, workers=1), max_queue=10, deadline_ms=10**6)
    assert info.value.message == "the batch queue is full (10 requests waiting, limit 10); retry later"
    assert info.value.retry_after_s == 1


def test_a_doomed_request_is_refused_naming_the_estimate() -> None:
    capacity = Capacity(per_s=1000, service_ms=5, workers=2)  # 500 requests ahead: 500 ms of queue
    with pytest.raises(QueueFull) as info:
        admit("interactive", 500, capacity, max_queue=10_000, deadline_ms=200)
    assert "deadline of 200 ms cannot be met on the interactive tier" in info.value.message
    assert "about 500 ms of queue ahead (500 requests) plus 5.0 ms of service" in info.value.message
    assert info.value.status == 429 and info.value.retry_after_s == 1


def test_a_request_that_fits_its_deadline_is_admitted_with_its_estimate() -> None:
    decision = admit("interactive", 100, Capacity(per_s=1000, service_ms=5, workers=1), 10_000, deadline_ms=200)
    assert decision.position == 100 and decision.wait_ms == pytest.approx(100.0)


def test_unknown_capacity_only_applies_the_queue_limit() -> None:
    decision = admit("batch", 5, None, max_queue=10, deadline_ms=1)
    assert decision.wait_ms is None


def test_capacity_sums_fresh_heartbeats_and_ignores_stale_ones() -> None:
    beats = [
        Heartbeat(worker="a", pool="p", at_ms=10_000, capacity_per_s=300, service_ms=4),
        Heartbeat(worker="b", pool="q", at_ms=9_500, capacity_per_s=200, service_ms=9),
        Heartbeat(worker="dead", pool="p", at_ms=1_000, capacity_per_s=5000, service_ms=1),
    ]
    assert capacity_from(beats, now_ms=10_200) == Capacity(per_s=500, service_ms=9, workers=2)
    assert capacity_from(beats[2:], now_ms=10_200) is None


def test_admission_keeps_a_share_of_the_deadline_for_what_the_estimate_cannot_see() -> None:
    capacity = Capacity(per_s=100, service_ms=50, workers=1)  # 10 ms of queue a request
    fits = int((1000 * DEADLINE_SHARE - 50) / 10)
    assert admit("batch", fits, capacity, 10_000, deadline_ms=1000).wait_ms == pytest.approx(fits * 10.0)
    with pytest.raises(QueueFull) as info:
        admit("batch", fits + 1, capacity, 10_000, deadline_ms=1000)
    assert info.value.retry_after_s == 1


def test_retry_after_is_the_time_the_excess_takes_to_drain() -> None:
    capacity = Capacity(per_s=10, service_ms=0, workers=1)  # 100 requests: 10 s of queue
    with pytest.raises(QueueFull) as info:
        admit("batch", 100, capacity, 10_000, deadline_ms=5000)  # 4 s budget: 60 too many, 6 s to drain
    assert info.value.retry_after_s == 6


def test_the_backlog_drains_at_capacity_between_samples() -> None:
    capacity = Capacity(per_s=100, service_ms=5, workers=1)
    assert projected_backlog(40, capacity, elapsed_s=0.25) == pytest.approx(15.0)
    assert projected_backlog(40, capacity, elapsed_s=2.0) == 0.0
    assert projected_backlog(40, None, elapsed_s=2.0) == 40  # no live worker: nothing drains
