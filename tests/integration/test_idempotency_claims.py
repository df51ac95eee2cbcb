"""An idempotency key's claim in a real Redis: it lasts only as long as it is asked to until the
request's XADD, whose tick also writes the SET that keeps it; a release frees the key only while
the request that claimed it still holds it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core import protocol, redis_client
from core.settings import Settings
from gateway.queue import RequestQueue

pytestmark = pytest.mark.redis_server

STREAM = protocol.stream_key(protocol.lane_name("realtime", "default", ["groq-realtime"]))


async def test_a_claim_is_kept_by_its_xadd_and_released_only_by_its_holder(
    redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    client = await redis_client.connect(make_settings().redis, redis_url)
    queue = RequestQueue(client)
    name = protocol.idempotency_key("order-7")
    try:
        assert await queue.claim_idempotency("order-7", "r1", 3) is None
        assert await queue.claim_idempotency("order-7", "r2", 3) == "r1"
        assert 0 < await client.ttl(name) <= 3  # until the XADD: just past the deadline

        await queue.enqueue(STREAM, b"payload", ((name, b"r1", 3600),))
        assert await client.get(name) == b"r1" and await client.ttl(name) > 3000  # as long as the answer
        assert await client.xlen(STREAM) == 1

        queue.release_idempotency_soon("order-7", "r2")  # not its holder: nothing happens
        await queue.close()  # waits for what runs in the background
        assert await client.get(name) == b"r1"
        queue.release_idempotency_soon("order-7", "r1")
        await queue.close()
        assert await client.exists(name) == 0
        assert await queue.claim_idempotency("order-7", "r3", 3) is None  # free for a retry
    finally:
        await client.delete(name, STREAM)
        await client.aclose()
