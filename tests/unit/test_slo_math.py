"""The SLO window math with plain values: percentiles from log buckets, attainment, error budget,
burn rates and the multi-window alerts, and the Redis hash fields round trip."""

from __future__ import annotations

import pytest

from core.buckets import latency_buckets_s
from core.settings import SLO
from gateway import slo

REALTIME = SLO(latency_ms=10, percentile=99.0, objective=99.9)


def cells_with(latencies_ms: list[float], tier: str = "realtime", processor: str = "groq-lpu", failures: int = 0):  # type: ignore[no-untyped-def]
    acc = slo.Accumulator()
    for ms in latencies_ms:
        acc.result(100, tier, processor, ms, ms <= REALTIME.latency_ms, 1.0, 1, 0.5, 0.001)
    for _ in range(failures):
        acc.failure(100, tier)
    return acc.drain()[100]


def test_bucketed_quantiles_are_within_four_percent() -> None:
    latencies = [0.5 + i * 0.01 for i in range(1000)]  # 0.5 .. 10.49 ms
    cell = cells_with(latencies)[("realtime", "groq-lpu")]
    for q in (0.5, 0.95, 0.99):
        exact = sorted(latencies)[int(q * 1000) - 1]
        assert exact <= slo.quantile_ms(cell.hist, q, cell.max_ms) <= exact * 1.04 + 1e-3  # type: ignore[operator]
    assert slo.quantile_ms(cell.hist, 1.0, cell.max_ms) == pytest.approx(10.49)  # capped at the maximum
    assert slo.quantile_ms({}, 0.5, 0.0) is None


def test_bucket_bounds_hold_their_values() -> None:
    for ms in (0.0005, 0.001, 0.8, 1.0, 10.0, 250.0, 30000.0, 120000.0):
        index = slo.bucket_index(ms)
        assert slo.bucket_upper_ms(index) >= ms * (1 - 1e-9)
        assert index == 0 or slo.bucket_upper_ms(index - 1) < ms


def test_burn_rate_and_budget() -> None:
    assert slo.burn_rate(0, 0, 99.9) == 0.0
    assert slo.burn_rate(1000, 999, 99.9) == pytest.approx(1.0)  # exactly on budget
    assert slo.burn_rate(1000, 990, 99.9) == pytest.approx(10.0)
    assert slo.burn_rate(100, 99, 99.0) == pytest.approx(1.0)
    report = slo.summary(cells_with([1.0] * 990 + [50.0] * 10)[("realtime", "groq-lpu")], 60, REALTIME)
    assert report["attainment"] == 0.99
    assert report["burn_rate"] == pytest.approx(10.0)
    assert report["error_budget_remaining"] == pytest.approx(-9.0)
    assert report["throughput_rps"] == pytest.approx(1000 / 60, abs=1e-3)
    assert report["energy_j_per_1k"] == pytest.approx(500.0)
    assert report["cost_per_1k"] == pytest.approx(1.0)


def test_failures_count_as_bad_events_without_a_latency() -> None:
    cells = cells_with([1.0] * 6, failures=2)
    total = slo.tier_totals(cells, "realtime")
    assert (total.n, total.ok, total.met) == (8, 6, 6)
    report = slo.summary(total, 60, REALTIME)
    assert report["errors"] == 2 and report["attainment"] == 0.75
    assert set(cells) == {("realtime", "groq-lpu"), ("realtime", slo.NO_PROCESSOR)}


@pytest.mark.parametrize(
    ("burn", "fast", "slow"),
    [
        ({"1h": 15.0, "5m": 15.0, "6h": 1.0, "30m": 1.0}, True, False),
        ({"1h": 15.0, "5m": 2.0, "6h": 7.0, "30m": 7.0}, False, True),  # the fast burn has stopped
        ({"1h": 2.0, "5m": 30.0, "6h": 2.0, "30m": 30.0}, False, False),  # a short spike only
        ({"1h": 14.4, "5m": 14.4, "6h": 6.0, "30m": 6.0}, False, False),  # thresholds are strict
    ],
)
def test_multi_window_alerts(burn: dict[str, float], fast: bool, slow: bool) -> None:
    assert slo.alerts(burn) == {"fast_burn": fast, "slow_burn": slow}


def test_hash_fields_round_trip_and_merge_across_gateways() -> None:
    one = cells_with([1.0, 2.0, 20.0])[("realtime", "groq-lpu")]
    ints, floats = slo.increments(one)
    fields = {f"realtime|groq-lpu|{k}".encode(): str(v).encode() for k, v in {**ints, **floats}.items()}
    fields[b"realtime|*|n"] = b"3"  # per-tier totals beside the cells are not double counted
    merged = slo.merge([fields, fields])  # two gateways wrote the same counts
    cell = merged[("realtime", "groq-lpu")]
    assert (cell.n, cell.ok, cell.met) == (6, 6, 4)
    assert cell.sum_ms == pytest.approx(46.0)
    assert sum(cell.hist.values()) == 6
    assert set(merged) == {("realtime", "groq-lpu")}


def test_report_windows_from_a_snapshot() -> None:
    now = 10_000 * 60
    recent = cells_with([1.0] * 10)  # 30 s ago: in every window
    older = cells_with([50.0] * 10)  # 4 min ago: in 5m and 1h, not in 1m
    snap = slo.Snapshot(
        now_s=now,
        seconds={now - 30: recent, now - 240: older},
        minutes={now // 60: recent, (now - 240) // 60: older},
        tier_counts_6h={"realtime": (1020, 1010)},
    )
    report = slo.report(snap, {"realtime": REALTIME}, {"groq-lpu": 1})
    windows = report["tiers"]["realtime"]["windows"]
    assert [windows[w]["count"] for w in ("1m", "5m", "1h")] == [10, 20, 20]
    assert windows["1m"]["attainment"] == 1.0 and windows["5m"]["attainment"] == 0.5
    burn = report["tiers"]["realtime"]["burn_rate"]
    assert burn["1m"] == 0.0 and burn["5m"] == pytest.approx(500.0) and burn["1h"] == pytest.approx(500.0)
    assert burn["6h"] == pytest.approx(10 / 1020 / 0.001, rel=1e-3)
    assert report["tiers"]["realtime"]["alerts"] == {"fast_burn": True, "slow_burn": True}
    series = report["series"]["realtime"]
    assert len(series["count"]) == 60 and sum(series["count"]) == 10
    assert report["processors"]["groq-lpu"]["1m"]["utilisation"] == pytest.approx(10 * 1.0 / 1000 / 60, abs=1e-4)


def test_latency_buckets_include_each_objective() -> None:
    buckets = latency_buckets_s([10, 250, 30000, 12.5])
    assert {0.01, 0.25, 30.0, 0.0125} <= set(buckets)
    assert buckets == tuple(sorted(buckets)) and buckets[0] == 0.0001 and buckets[-1] == 300.0
