"""The gateway's reply reader against a real Redis and a Redis Cluster: every waiting request gets
its own reply, the strictest tier's first among those read together, and what was read is trimmed
from the reply stream (approximately: whole nodes) by the read after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from core import protocol, redis_client
from core.redis_client import Client
from core.settings import Settings
from gateway.queue import RequestQueue
from gateway.results import ResultReader, Waiters
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.redis_server

GATEWAY = "gw-reader"


@pytest.fixture
async def client(redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    c = await redis_client.connect(make_settings().redis, redis_url)
    yield c
    await c.delete(protocol.reply_key(GATEWAY))
    await c.aclose()


def failure(request_id: str) -> protocol.Failure:
    return protocol.Failure(id=request_id, code="worker_error", message=f"for {request_id}", tier="batch")


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_each_reply_reaches_its_request_and_read_replies_are_trimmed(client: Client) -> None:
    waiters, key, stop = Waiters(), protocol.reply_key(GATEWAY), asyncio.Event()
    reader = ResultReader(RequestQueue(client), GATEWAY, waiters, block_ms=50)
    running = asyncio.create_task(reader.run(stop))
    try:
        for batch in ([f"a{n}" for n in range(250)], ["b"]):
            waiting = {request_id: waiters.add(request_id, 10.0) for request_id in batch}
            for request_id in batch:
                await client.xadd(key, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(failure(request_id))})
            for request_id, future in waiting.items():
                reply = await asyncio.wait_for(future, 5.0)
                assert (reply.id, reply.message) == (request_id, f"for {request_id}")

        async def trimmed() -> bool:
            return await client.xlen(key) < 150  # MINID ~ drops whole nodes of 100 entries

        await wait_until(trimmed, timeout_s=5.0)
        assert len(waiters) == 0
    finally:
        stop.set()
        await running


async def test_the_strictest_tiers_replies_are_handed_over_first_within_a_read(client: Client) -> None:
    """Batch answers and one realtime answer read together: the realtime request's waiter is
    resolved first (its handler resumes first); the rest keep the order they were read in."""
    waiters, key, stop = Waiters(), protocol.reply_key(GATEWAY), asyncio.Event()
    read = [("b1", "batch"), ("i1", "interactive"), ("b2", "batch"), ("r1", "realtime"), ("b3", "batch")]
    resolved: list[str] = []
    for request_id, _ in read:
        waiters.add(request_id, 10.0).add_done_callback(lambda f: resolved.append(f.result().id))
    for request_id, tier in read:  # all in the stream before the reader's first read
        reply = protocol.Failure(id=request_id, code="worker_error", message="m", tier=tier)
        await client.xadd(key, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(reply)})
    reader = ResultReader(RequestQueue(client), GATEWAY, waiters, block_ms=50)
    running = asyncio.create_task(reader.run(stop))
    try:
        await wait_until(lambda: len(resolved) == len(read), timeout_s=5.0)
        assert resolved == ["r1", "i1", "b1", "b2", "b3"]
    finally:
        stop.set()
        await running
