"""A batch of writes as one script run on a real Redis: every command runs, in order, even after
one that failed, whose error is raised as a pipeline's would be; a flushed script is loaded
again; a user Redis will not let run scripts gets pipelines, and a worker's batches still land."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ResponseError

from core import protocol, redis_client
from core.redis_client import Client
from core.redis_writes import ScriptedWrites, Writes
from core.settings import RedisSettings, Settings
from gateway.queue import RequestQueue
from tests.integration.test_publish import STREAM, delivered, result
from workers.consumer import Consumer

pytestmark = pytest.mark.redis_server


@pytest.fixture
async def client(redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Redis]:
    c = await redis_client.connect(make_settings().redis, redis_url)
    assert isinstance(c, Redis)
    yield c
    await c.aclose()


@pytest.fixture
async def no_scripts(client: Redis, redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    """A client of an ACL user that may run every command but scripts."""
    await client.acl_setuser(
        "noscripts", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-@scripting"]
    )
    limited = await redis_client.connect(
        make_settings().redis, redis_url.replace("redis://", "redis://noscripts:pw@", 1)
    )
    yield limited
    await limited.aclose()
    await client.acl_deluser("noscripts")


async def test_every_command_runs_in_order_and_the_first_error_is_raised(client: Redis) -> None:
    writes = ScriptedWrites(client)
    await writes.load()
    batch = writes.batch()
    assert isinstance(batch, Writes)
    await client.set("a-string", "x")
    batch.execute_command("XADD", "s", "*", "n", 1)
    batch.execute_command("XADD", "a-string", "*", "n", 2)  # WRONGTYPE
    batch.execute_command("SET", "after", "yes", "EX", 60, "NX")
    batch.execute_command("SET", "after", "no", "EX", 60, "NX")  # NX: the first stays
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await batch.execute()
    assert [f[b"n"] for _, f in await client.xrange("s")] == [b"1"]
    assert (await client.get("after"), 0 < await client.ttl("after") <= 60) == (b"yes", True)


async def test_each_commands_reply_comes_back_in_its_place(client: Redis) -> None:
    writes = ScriptedWrites(client)
    await writes.load()
    batch = writes.batch()
    await client.set("a-string", "x")
    batch.execute_command("XADD", "s", "*", "n", 1)
    batch.execute_command("XADD", "a-string", "*", "n", 2)
    batch.execute_command("SET", "k", "v", "XX")  # no such key: nil
    batch.execute_command("XLEN", "s")
    entry_id, error, nothing, length = await batch.execute(raise_on_error=False)
    assert [entry_id] == [i for i, _ in await client.xrange("s")]
    assert (isinstance(error, ResponseError), nothing, length) == (True, None, 1)


async def test_a_script_flushed_from_redis_is_loaded_again(client: Redis) -> None:
    writes = ScriptedWrites(client)
    await writes.load()
    await client.script_flush()
    batch = writes.batch()
    batch.execute_command("SET", "k", "v")
    await batch.execute()
    assert await client.get("k") == b"v"


async def test_a_user_without_scripts_gets_pipelines_and_a_workers_batch_still_lands(
    client: Redis, no_scripts: Client, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.redis_writes")
    consumer = Consumer(no_scripts, make_settings(), "h100-interactive", "w")
    await consumer.setup()
    assert [r.getMessage() for r in caplog.records] == ["Redis refused the batch script: commands go as pipelines"]
    assert isinstance(ScriptedWrites(no_scripts).batch(), Writes)  # until a load is refused
    deliveries = await delivered(consumer, no_scripts, ["acme"] * 2)
    replies = [(d, result(d.envelope, 2)) for d in deliveries]
    await consumer.publish(replies)
    got = [
        protocol.reply_decoder.decode(f[protocol.PAYLOAD_FIELD])
        for _, f in await client.xrange(protocol.reply_key("gw-a"))
    ]
    assert got == [reply for _, reply in replies]
    assert (await client.xpending(STREAM, protocol.GROUP))["pending"] == 0


async def test_a_script_refused_when_first_run_is_sent_again_as_a_pipeline(
    client: Redis, no_scripts: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.redis_writes")
    writes = ScriptedWrites(no_scripts)  # never loaded, and no line: the first batch asks for the script
    for attempt in range(2):
        batch = writes.batch()
        batch.execute_command("XADD", STREAM, "*", "n", attempt)
        batch.execute_command("XLEN", STREAM)
        (entry_id, length) = await batch.execute()
        assert ((await client.xrevrange(STREAM, count=1))[0][0], length) == (entry_id, attempt + 1)
    assert [r.getMessage() for r in caplog.records] == ["Redis refused the batch script: commands go as pipelines"]


async def test_a_tick_of_many_requests_goes_on_a_line_as_its_commands_without_the_script(
    client: Redis, no_scripts: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.redis_writes")
    queue = RequestQueue(no_scripts)  # a user refused scripts: a tick on a line never asks for one
    entry_ids = await asyncio.gather(*(queue.enqueue(STREAM, f"request {n}".encode()) for n in range(100)))
    assert [i for i, _ in await client.xrange(STREAM)] == entry_ids
    assert caplog.records == []


def test_a_cluster_client_gets_pipelines() -> None:
    writes = ScriptedWrites(redis_client.cluster_client(RedisSettings(), "redis://127.0.0.1:7000/0"))
    assert (writes.script, type(writes.batch())) == (None, ClusterPipeline)
