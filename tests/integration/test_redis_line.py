"""Lines (core/redis_line.py), the request path's connections kept apart from the pool, against a
real Redis: replies in order with errors in place (of redis-py's classes), a reply larger than a
read and many replies at once parsed whole, a read cut short leaves nothing behind, a connection
the server closed is opened again, a server that stops answering fails in time, a batch on a line
goes as its commands, and the client's close closes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import redis_client, redis_line
from core.redis_line import Line, Lines, stream_reply
from core.redis_writes import ScriptedWrites
from core.settings import RedisSettings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.redis_server


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = redis_client.single_node(RedisSettings(), redis_url)
    await c.flushdb()
    yield c
    await c.aclose()


async def taken(lines: Lines) -> Line:
    line = await lines.take()
    assert line is not None
    return line


async def test_commands_sent_together_reply_in_order_with_an_error_in_its_place(client: Redis) -> None:
    line = await taken(Lines(client, 1))
    replies = await line.run([("SET", "k", "v"), ("INCR", "k"), ("SET", "n", 41), ("INCR", "n"), ("GET", "k")])
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    assert replies[2:] == [b"OK", 42, b"v"]  # the commands after the error ran


async def test_lines_are_limited_and_shared_only_when_given_back(client: Redis) -> None:
    lines = Lines(client, 2)
    first, second = await taken(lines), await taken(lines)
    assert await lines.take() is None  # every line in use: the caller uses the client instead
    lines.give(first)
    assert await lines.take() is first
    assert second is not first


async def test_lines_leave_three_quarters_of_a_small_pool_to_the_client(redis_url: str) -> None:
    client = redis_client.single_node(RedisSettings(max_connections=7), redis_url)
    try:
        lines = Lines(client, 4)
        assert await lines.take() is not None
        assert await lines.take() is None  # a quarter of 7: one line
        assert await Lines(client, 1).take() is not None  # another use's own quarter
        assert await client.ping()
        assert await Lines(redis_client.single_node(RedisSettings(max_connections=3), redis_url), 1).take() is None
    finally:
        await client.aclose()


async def test_a_read_cut_short_leaves_no_reply_for_the_next_command(client: Redis) -> None:
    lines = Lines(client, 1)
    line = await taken(lines)
    (line_id,) = await line.run([("CLIENT", "ID")])

    async def blocked() -> bool:
        listing = await client.client_list()
        return any(int(c["id"]) == line_id and c["cmd"] == "xread" for c in listing)

    read = asyncio.create_task(line.run([("XREAD", "BLOCK", 10_000, "STREAMS", "s", "$")], extra_s=10))
    await wait_until(blocked)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await client.xadd("s", {"f": "v"})  # what the cut read would have been answered with
    assert await line.run([("ECHO", "first")]) == [b"first"]
    assert await line.run([("ECHO", "second")]) == [b"second"]


@pytest.mark.parametrize("idle_check_s", [0.0, 3600.0], ids=["checked-when-idle", "seen-closed"])
async def test_a_connection_the_server_closed_is_opened_again(
    client: Redis, monkeypatch: pytest.MonkeyPatch, idle_check_s: float
) -> None:
    # Checked before every use, or never for idleness: then what tells is the connection's end seen.
    monkeypatch.setattr(redis_line, "IDLE_CHECK_S", idle_check_s)
    line = await taken(Lines(client, 1))
    (before,) = await line.run([("CLIENT", "ID")])
    assert await client.client_kill_filter(_id=before) == 1

    async def closed() -> bool:
        return all(int(c["id"]) != before for c in await client.client_list())

    await wait_until(closed)
    (after,) = await line.run([("CLIENT", "ID")])
    assert after != before
    assert await line.run([("ECHO", "still here")]) == [b"still here"]


async def test_a_server_that_stops_answering_fails_the_command_in_time(redis_url: str) -> None:
    client = redis_client.single_node(RedisSettings(socket_timeout_s=0.3), redis_url)
    pauser = redis_client.single_node(RedisSettings(), redis_url)
    try:
        line = await taken(Lines(client, 1))
        assert await line.run([("ECHO", "before")]) == [b"before"]
        await pauser.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the server answers no one meanwhile
        with pytest.raises(RedisTimeoutError):
            await line.run([("ECHO", "paused")])
        await pauser.execute_command("CLIENT", "UNPAUSE")
        assert await line.run([("ECHO", "after")]) == [b"after"]  # connected again
    finally:
        await pauser.aclose()
        await client.aclose()


async def test_stream_replies_take_the_shape_of_the_clients(client: Redis) -> None:
    for n in range(3):
        await client.xadd("a", {"payload": f"a{n}", "other": "x"})
    await client.xadd("b", {"payload": "b0"})
    line = await taken(Lines(client, 1))
    (raw,) = await line.run([("XREAD", "COUNT", 10, "STREAMS", "a", "b", "0", "0")])
    expected = await client.xread({"a": "0", "b": "0"}, count=10)
    assert stream_reply(raw) == [(stream, entries) for stream, entries in expected]
    (nothing,) = await line.run([("XREAD", "COUNT", 10, "STREAMS", "a", "$")])
    assert stream_reply(nothing) is None


async def test_replies_larger_than_one_read_and_many_at_once_are_parsed_whole(client: Redis) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: four reads of the socket
    line = await taken(Lines(client, 1))
    many = [("SET", f"k{n}", big if n == 7 else n) for n in range(500)]
    assert await line.run(many) == [b"OK"] * 500
    replies = await line.run([("GET", f"k{n}") for n in range(500)])
    assert replies == [big if n == 7 else str(n).encode() for n in range(500)]


async def test_a_false_reply_is_a_reply_not_a_wait_for_more(client: Redis) -> None:
    line = await taken(Lines(client, 1))
    false = "redis.setresp(3); return false"  # a RESP3 boolean, where the connection speaks RESP3
    replies = await line.run([("EVAL", false, 0), ("ECHO", "after")])
    assert replies == [await client.eval(false, 0), b"after"]


async def test_an_error_reply_is_the_exception_redis_py_raises_for_it(client: Redis) -> None:
    await client.set("k", "v")
    line = await taken(Lines(client, 1))
    missing, wrong = await line.run([("EVALSHA", "0" * 40, 0), ("XLEN", "k")])
    assert isinstance(missing, NoScriptError)  # what a caller tells apart by its class
    assert type(wrong) is ResponseError and "WRONGTYPE" in str(wrong)


async def test_an_argument_redis_cannot_take_is_named_and_nothing_is_sent(client: Redis) -> None:
    line = await taken(Lines(client, 1))
    with pytest.raises(DataError, match="bool"):
        await line.run([("SET", "a", "1"), ("SET", "b", True)])
    assert (await client.exists("a"), await line.run([("ECHO", "next")])) == (0, [b"next"])


async def test_a_batch_on_a_line_runs_as_its_commands_not_the_script(client: Redis) -> None:
    writes = ScriptedWrites(client, lines=1)
    await writes.load()
    await client.config_resetstat()
    batch = writes.batch()
    for n in range(200):  # a batch of any size
        batch.execute_command("SET", f"k{n}", n)
    batch.execute_command("INCR", "k7")
    assert await batch.execute() == [b"OK"] * 200 + [8]
    stats = await client.info("commandstats")
    assert ("cmdstat_evalsha" in stats, stats["cmdstat_set"]["calls"]) == (False, 200)


async def test_closing_the_client_closes_its_lines(redis_url: str) -> None:
    client = redis_client.single_node(RedisSettings(max_connections=4), redis_url)
    line = await taken(Lines(client, 1))
    (line_id,) = await line.run([("CLIENT", "ID")])
    await client.aclose()
    observer = redis_client.single_node(RedisSettings(), redis_url)
    try:

        async def gone() -> bool:
            return all(int(c["id"]) != line_id for c in await observer.client_list())

        await wait_until(gone)
    finally:
        await observer.aclose()
