"""The gateway's Redis client under a burst larger than its connection pool, against a real Redis:
commands wait for a free connection instead of failing, so a load generator dropping all its
connections at once (which cancels every request it had in flight) costs no concurrent request.
"""

from __future__ import annotations

import asyncio

import pytest

from core import protocol, redis_client
from core.settings import RedisSettings
from gateway.queue import RequestQueue

pytestmark = pytest.mark.redis_server

LANE = protocol.lane_name("interactive", "default", ["pool"])


async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(redis_url: str) -> None:
    client = redis_client.single_node(RedisSettings(max_connections=2), redis_url)
    queue = RequestQueue(client)
    try:
        cancels = [
            protocol.Accepted(id=f"r{i}", model="m", tier="interactive", deadline_at_ms=10**13, lane=LANE)
            for i in range(40)
        ]
        outcomes = await asyncio.gather(
            *(queue.cancel(accepted) for accepted in cancels),
            queue.enqueue(protocol.stream_key(LANE), b"a request that must not be refused"),
            return_exceptions=True,
        )
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        assert await client.xlen(protocol.stream_key(LANE)) == 1
        stored = await client.mget([protocol.request_key(a.id) for a in cancels])
        assert all(protocol.stored_decoder.decode(raw).code == "cancelled" for raw in stored)
    finally:
        await queue.close()
        await client.aclose()
