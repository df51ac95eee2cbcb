"""A worker's advertised capacity: the rate at which it drains a backlog, from the batches that
ran (full-batch time), per tier when a pool serves several, else from its profile."""

from __future__ import annotations

import pytest

from core.settings import LatencyModel
from workers.capacity import PROFILE_TOKENS, CapacityMeter, expected_batch_ms


def test_profile_estimates_before_any_batch_assume_some_generation() -> None:
    fixed = LatencyModel(kind="fixed", min_ms=0.8, per_token_ms=0.05)
    snapshot = CapacityMeter(fixed, max_batch=1).snapshot(0.0)
    full_ms = 0.8 + 0.05 * (PROFILE_TOKENS - 1)
    assert snapshot.service_ms == pytest.approx(full_ms)
    assert snapshot.per_s == (pytest.approx(1000.0 / full_ms),)
    variable = LatencyModel(kind="variable", min_ms=5, mode_ms=10, max_ms=45, per_item_ms=1)
    assert expected_batch_ms(variable, 1) == pytest.approx(20.0)
    assert expected_batch_ms(variable, 11) == pytest.approx(30.0)


def test_rate_is_max_batch_per_full_batch_time_whatever_the_recent_sizes() -> None:
    meter = CapacityMeter(LatencyModel(kind="fixed", min_ms=40, per_item_ms=1), max_batch=4, window_s=10)
    meter.record(1.0, ran=[4], busy_s=0.050)
    meter.record(2.0, ran=[2], busy_s=0.048)  # a half-full batch: 2 more items would add 2 ms
    snapshot = meter.snapshot(3.0)
    full_ms = (50 + 48) / 2 + 1 * (4 - 3)
    assert snapshot.service_ms == pytest.approx(full_ms)
    assert snapshot.per_s[0] == pytest.approx(4000.0 / full_ms)


def test_requests_answered_unrun_do_not_count() -> None:
    meter = CapacityMeter(LatencyModel(kind="fixed", min_ms=40), max_batch=4, window_s=10)
    meter.record(1.0, ran=[4], busy_s=0.040)
    meter.record(1.1, ran=[0], busy_s=0.001)  # every member was late: nothing ran
    assert meter.snapshot(2.0).per_s[0] == pytest.approx(100.0)


def test_the_last_measurement_outlives_the_window() -> None:
    meter = CapacityMeter(LatencyModel(kind="fixed", min_ms=1), max_batch=1, window_s=10)
    meter.record(1.0, ran=[1], busy_s=0.020)
    assert meter.snapshot(30.0).per_s[0] == pytest.approx(50.0)


def test_a_lower_tier_gets_what_the_stricter_one_leaves_and_at_least_its_share() -> None:
    meter = CapacityMeter(LatencyModel(kind="fixed", min_ms=40), max_batch=4, priorities=2, min_share=0.1, window_s=10)
    for n in range(10):  # full batches of 40 ms: 100 req/s; over 10 s, 30 interactive requests and 10 batch ones
        meter.record(float(n + 1), ran=[3, 1], busy_s=0.040)
    stricter, lower = meter.snapshot(11.0).per_s
    assert stricter == pytest.approx(100.0)
    assert lower == pytest.approx(100.0 - 3.0)
    for n in range(1000):  # then the stricter tier keeps it busy
        meter.record(11.0 + n * 0.01, ran=[4, 0], busy_s=0.040)
    stricter, lower = meter.snapshot(21.0).per_s
    assert lower == pytest.approx(0.1 * stricter)
