"""A worker's advertised capacity: its measured busy rate, or its profile before it has run."""

from __future__ import annotations

import pytest

from gateway.settings import LatencyModel
from workers.capacity import CapacityMeter, expected_batch_ms


def test_profile_estimates_before_any_batch() -> None:
    fixed = LatencyModel(kind="fixed", min_ms=0.8)
    assert CapacityMeter(fixed, max_batch=1).snapshot(0.0) == (pytest.approx(1250.0), 0.8)
    variable = LatencyModel(kind="variable", min_ms=5, mode_ms=10, max_ms=45, per_item_ms=1)
    assert expected_batch_ms(variable, 1) == pytest.approx(20.0)
    assert expected_batch_ms(variable, 11) == pytest.approx(30.0)


def test_measured_rate_over_the_window() -> None:
    meter = CapacityMeter(LatencyModel(kind="fixed", min_ms=1), max_batch=8, window_s=10)
    meter.record(1.0, requests=8, busy_s=0.02)
    meter.record(2.0, requests=2, busy_s=0.005)
    rate, service_ms = meter.snapshot(3.0)
    assert rate == pytest.approx(10 / 0.025) and service_ms == pytest.approx(12.5)
    # Old batches leave the window: only the second one counts.
    rate, _ = meter.snapshot(11.5)
    assert rate == pytest.approx(2 / 0.005)
