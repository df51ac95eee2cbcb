"""Cost-aware placement against a real Redis and real workers: with the interactive pools idle,
a `cheapest` tier's requests all run on its cheapest pool (the gateway's per-pool metrics show
it); change which pool is cheapest and the work follows; overload the cheapest pool and the
others take what it cannot, so nothing waits for it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from core.settings import Settings, parse_settings
from tests.conftest import default_raw
from tests.integration.conftest import Stack
from tests.integration.test_sovereignty import forget_streams

pytestmark = pytest.mark.redis_server

POOLS = ["h100-interactive", "tpu-interactive", "inferentia-mixed"]
SEQUENTIAL = 30
BURST = 400


def cheapest(**costs: float) -> Settings:
    raw = default_raw()
    raw["tiers"]["interactive"]["placement"] = "cheapest"
    # The pools behind poll the stream once a second or less: on a loaded machine, the cheapest
    # pool is back waiting on it long before one of them looks.
    raw["tiers"]["interactive"]["placement_hold_ms"] = 1000
    for processor, cost in costs.items():
        raw["processors"][processor]["cost_per_flop"] = cost
    return parse_settings(raw)


async def answered_by_pool(s: Stack) -> dict[str, float]:
    """The gateway's `tiergate_requests_total` of answered interactive requests, per pool."""
    async with s.http.get(f"{s.url}/metrics") as response:
        text = await response.text()
    pattern = r'tiergate_requests_total\{outcome="ok",pool="([^"]+)",processor="[^"]+",tier="interactive"\} (\S+)'
    return {pool: float(n) for pool, n in re.findall(pattern, text) if float(n)}


async def one_at_a_time(s: Stack, count: int) -> list[str]:
    pools = []
    for i in range(count):
        status, answer = await s.infer(model="sim-echo", input=f"request {i}")
        assert status == 200, answer
        pools.append(answer["pool"])
    return pools


async def test_idle_pools_leave_a_cheapest_tier_to_its_cheapest_pool(stack: Callable[..., Any], redis_url: str) -> None:
    await forget_streams(redis_url, cheapest())  # nothing an earlier test left keeps a pool busy
    s: Stack = await stack(cheapest(), pools=POOLS)
    assert set(await one_at_a_time(s, SEQUENTIAL)) == {"inferentia-mixed"}  # cost 0.5, the others 0.8 and 1.0
    assert await answered_by_pool(s) == {"inferentia-mixed": SEQUENTIAL}


async def test_the_work_follows_the_cheapest_pool(stack: Callable[..., Any], redis_url: str) -> None:
    await forget_streams(redis_url, cheapest())
    s: Stack = await stack(cheapest(h100=0.2), pools=POOLS)
    assert set(await one_at_a_time(s, SEQUENTIAL)) == {"h100-interactive"}
    assert await answered_by_pool(s) == {"h100-interactive": SEQUENTIAL}


async def test_an_overloaded_cheapest_pool_shares_its_backlog(stack: Callable[..., Any]) -> None:
    raw = default_raw()
    raw["tiers"]["interactive"]["placement"] = "cheapest"
    raw["pools"]["inferentia-mixed"]["max_batch"] = 4  # far below the burst
    s: Stack = await stack(parse_settings(raw), pools=POOLS)
    answers = await asyncio.gather(*(s.infer(model="sim-echo", input=f"burst {i}") for i in range(BURST)))
    assert [status for status, _ in answers] == [200] * BURST
    assert [answer["output"] for _, answer in answers] == [f"burst {i}"[::-1] for i in range(BURST)]
    by_pool = await answered_by_pool(s)
    assert sum(by_pool.values()) == BURST
    assert len(by_pool) > 1, by_pool  # the pools behind it took what it could not
