"""`GET /v1/slo` merges every gateway's counts through Redis: two gateway applications on one
Redis each report the sum of both, and the figures agree with what the clients were answered."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from core.settings import Settings
from tests.integration.conftest import Stack, wait_until

StartStack = Callable[..., Any]
TIERS = ("realtime", "interactive", "batch")


async def load(s: Stack, per_tier: int, label: str) -> list[dict[str, Any]]:
    requests = [(tier, f"{label} {tier} {i}") for tier in TIERS for i in range(per_tier)]
    answers = await asyncio.gather(*(s.infer(model="sim-echo", input=text, tier=tier) for tier, text in requests))
    assert [status for status, _ in answers] == [200] * len(requests)
    return [body for _, body in answers]


async def test_slo_report_sums_every_gateway(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(metrics__slo_flush_interval_s=0.05, metrics__slo_cache_s=0)
    a: Stack = await stack(settings)
    b: Stack = await stack(settings, pools=[])  # a second gateway on the same Redis and workers
    bodies = await load(a, 7, "via a") + await load(b, 5, "via b")
    per_tier = 12

    async def merged(s: Stack) -> dict[str, Any] | None:
        status, report = await s.get("/v1/slo")
        assert status == 200
        counts = [report["tiers"][t]["windows"]["1m"]["count"] for t in TIERS]
        return report if counts == [per_tier] * 3 else None

    await wait_until(lambda: merged(a))
    report = await merged(b)
    assert report is not None, "the second gateway sees the same merged counts"
    for tier in TIERS:
        mine = [x for x in bodies if x["tier"] == tier]
        latencies = [x["timings"]["total_ms"] for x in mine]
        t = report["tiers"][tier]
        for window in ("1m", "5m", "1h"):
            w = t["windows"][window]
            assert (w["count"], w["ok"], w["errors"]) == (per_tier, per_tier, 0)
            assert w["met"] == sum(x["slo_met"] for x in mine)
            assert w["attainment"] == pytest.approx(w["met"] / per_tier, abs=1e-6)
            assert w["max_ms"] == pytest.approx(max(latencies), abs=1e-3)
            assert w["p50_ms"] <= w["p95_ms"] <= w["p99_ms"] <= w["max_ms"]
            # bucketed percentiles are within 4 % of the true order statistic
            assert w["p50_ms"] >= sorted(latencies)[5] * 0.96 - 1e-3
            objective = t["slo"]["objective"] / 100
            burn = (1 - w["attainment"]) / (1 - objective)
            assert w["burn_rate"] == pytest.approx(burn, abs=1e-3)
            assert w["error_budget_remaining"] == pytest.approx(1 - burn, abs=1e-3)
            assert w["energy_j_per_1k"] == pytest.approx(1000 * sum(x["energy_j"] for x in mine) / per_tier)
            by_processor = Counter(x["processor"] for x in mine)
            assert {p: v["count"] for p, v in w["processors"].items()} == dict(by_processor)
        assert set(t["burn_rate"]) == {"1m", "5m", "30m", "1h", "6h"}
        assert t["alerts"] == {
            "fast_burn": t["burn_rate"]["1h"] > 14.4 and t["burn_rate"]["5m"] > 14.4,
            "slow_burn": t["burn_rate"]["6h"] > 6 and t["burn_rate"]["30m"] > 6,
        }
    processors = Counter(x["processor"] for x in bodies)
    for processor, count in processors.items():
        p = report["processors"][processor]["5m"]
        assert p["count"] == count
        assert p["mean_batch_size"] == pytest.approx(
            count / sum(1 / x["batch_size"] for x in bodies if x["processor"] == processor), rel=1e-3
        )
        assert 0 < p["utilisation"] <= 1

    async def in_series() -> bool:  # once the current second is over, the per-second series has them all
        _, report = await a.get("/v1/slo")
        return all(sum(report["series"][tier]["count"]) == per_tier for tier in TIERS)

    await wait_until(in_series, timeout_s=5)


async def test_failures_spend_the_error_budget(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(metrics__slo_flush_interval_s=0.05, metrics__slo_cache_s=0)
    s: Stack = await stack(settings, pools=[])  # nobody serves: every request reaches its deadline
    answers = [await s.infer(model="sim-echo", input=f"late {i}", tier="realtime", deadline_ms=20) for i in range(4)]
    assert [status for status, _ in answers] == [504] * 4

    async def counted() -> bool:
        _, report = await s.get("/v1/slo")
        return bool(report["tiers"]["realtime"]["windows"]["1m"]["count"] == 4)

    await wait_until(counted)
    _, report = await s.get("/v1/slo")
    t = report["tiers"]["realtime"]
    w = t["windows"]["5m"]
    assert (w["ok"], w["errors"], w["attainment"], w["p99_ms"]) == (0, 4, 0.0, None)
    assert t["burn_rate"]["5m"] == t["burn_rate"]["1h"] == pytest.approx(1000.0)  # objective 99.9 %
    assert t["alerts"] == {"fast_burn": True, "slow_burn": True}
    assert w["error_budget_remaining"] < 0
