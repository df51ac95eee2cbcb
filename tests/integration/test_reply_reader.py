"""The gateway's reply reader against a real Redis and a Redis Cluster: every waiting request gets
its own reply, and what was read is trimmed from the reply stream (approximately: whole nodes) by
the read after it."""

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
