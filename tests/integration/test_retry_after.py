"""Retry-After tells the truth when the wait is long: a slow pool (its heartbeat says half a request
a second) with a backlog that takes many seconds to drain gets a Retry-After of those seconds, the
first whole second at which a retry would be admitted, not 1.

The pool is its heartbeat, written by the test into the tier's worker hash: the capacity the
gateway sees is then exactly known, and no worker drains the backlog while the test looks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from gateway.admission import DEADLINE_SHARE, Capacity
from gateway.state import STATE
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until

StartStack = Callable[..., Any]
PER_S, SERVICE_MS, DEADLINE_MS, BACKLOG = 0.5, 2000.0, 4000, 8
STREAM = default_lane("batch", "default").stream


async def beat(client: aioredis.Redis) -> None:
    """The slow pool's heartbeat, fresh on Redis's clock."""
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    heartbeat = protocol.Heartbeat("slow-0", "cerebras-batch", now_ms, capacity_per_s=PER_S, service_ms=SERVICE_MS)
    await client.hset(
        protocol.heartbeat_key(default_lane("batch", "default").name), "slow-0", protocol.encoder.encode(heartbeat)
    )


def admitted_after(retry_s: int, backlog: int) -> bool:
    """Would a retry `retry_s` later be admitted, once the pool has finished whole requests meanwhile?"""
    left = backlog - math.floor(PER_S * retry_s)
    return left / PER_S * 1000.0 + SERVICE_MS <= DEADLINE_MS * DEADLINE_SHARE


async def test_retry_after_is_when_the_backlog_will_have_drained_enough(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    s: Stack = await stack(settings=make_settings(), pools=[])
    for i in range(BACKLOG):  # no live worker yet: only the queue limit applies, and they queue
        status, _ = await s.infer(model="sim-echo", input=f"filler {i}", tier="batch", wait=False)
        assert status == 202
    client = aioredis.Redis.from_url(redis_url)
    state = s.server.app[STATE]
    try:
        await beat(client)
        await wait_until(lambda: state.capacity.get(STREAM) == Capacity(PER_S, SERVICE_MS, 1))
        await beat(client)
        body = {"model": "sim-echo", "input": "late", "tier": "batch", "deadline_ms": DEADLINE_MS}
        async with s.http.post(f"{s.url}/v1/infer", json=body) as response:
            refused = await response.json()
            retry_after = response.headers["Retry-After"]
        assert response.status == 429 and refused["error"]["type"] == "queue_full"
    finally:
        await client.aclose()
    said = re.fullmatch(
        rf"deadline of {DEADLINE_MS} ms cannot be met on the batch tier: about (\d+) ms of queue ahead "
        rf"\((\d+) requests\) plus {SERVICE_MS:.1f} ms of service",
        refused["error"]["message"],
    )
    assert said is not None, refused
    wait_ms, backlog = int(said[1]), int(said[2])
    assert backlog == BACKLOG and wait_ms == BACKLOG / PER_S * 1000  # what the gateway saw: 8 requests, 16 s
    # The drain estimate's ceiling: the whole requests beyond what the deadline allows, at 0.5 a second.
    excess = math.ceil((wait_ms + SERVICE_MS - DEADLINE_MS * DEADLINE_SHARE) / 1000.0 * PER_S)
    assert int(retry_after) == math.ceil(excess / PER_S) == 16
    # Its meaning: a retry that late is admitted, one a second sooner is not.
    assert admitted_after(int(retry_after), backlog) and not admitted_after(int(retry_after) - 1, backlog)
