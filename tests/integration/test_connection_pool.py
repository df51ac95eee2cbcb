"""The gateway's Redis client under a burst larger than its connection pool, against a real Redis:
commands wait for a free connection instead of failing, so a load generator dropping all its
connections at once (which cancels every request it had in flight) costs no concurrent request.
Small and large commands reach Redis whole, and a server that stops answering fails them in time.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

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


async def test_writes_small_and_large_each_reach_redis_whole(redis_url: str) -> None:
    """Many small commands at once and one larger than any write buffer: every answer is its own
    command's."""
    client = redis_client.single_node(RedisSettings(max_connections=8), redis_url)
    try:
        large = bytes(range(256)) * 4096  # 1 MiB: beyond any transport's high-water mark
        values = {f"k{i}": f"value {i}".encode() * (i % 7 + 1) for i in range(300)}
        await asyncio.gather(client.set("large", large), *(client.set(k, v) for k, v in values.items()))
        got = await asyncio.gather(client.get("large"), *(client.get(k) for k in values))
        assert got == [large, *values.values()]
    finally:
        await client.aclose()


async def test_a_server_that_stops_answering_fails_small_and_large_commands_in_time() -> None:
    """A server that accepts and never reads nor answers: a small command and a large one each
    fail with redis's TimeoutError after `socket_timeout_s`; none hangs."""
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.pause_reading()
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_client.single_node(RedisSettings(socket_timeout_s=0.3), f"redis://127.0.0.1:{port}/0")
    try:
        async with asyncio.timeout(10):
            with pytest.raises(RedisTimeoutError):
                await client.execute_command("GET", "small")
            with pytest.raises(RedisTimeoutError):
                await client.execute_command("SET", "large", b"x" * (64 << 20))
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
