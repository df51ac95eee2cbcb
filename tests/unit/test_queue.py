"""The gateway's enqueue path: one round trip per event-loop tick, with the stream lengths sampled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import fakeredis
import pytest

from core import protocol
from core.redis_line import Line
from gateway.queue import RequestQueue
from tests.conftest import default_lane

LANE = protocol.lane_name("batch", "default", ["cerebras-batch"])
STREAM = protocol.stream_key(LANE)


async def test_requests_of_one_tick_share_one_round_trip_and_sample_the_length(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[Any]] = []
    run = Line.run

    async def counted(line: Line, commands: Iterable[Any], extra_s: float = 0.0) -> list[Any]:
        sent.append(list(commands))
        return await run(line, sent[-1], extra_s)

    monkeypatch.setattr(Line, "run", counted)
    redis = fakeredis.aioredis.FakeRedis()
    queue = RequestQueue(redis)
    ids = await asyncio.gather(*(queue.enqueue(STREAM, b"%d" % i) for i in range(10)))
    assert [[command[0] for command in commands] for commands in sent] == [["XADD"] * 10 + ["XLEN"]]
    assert len(set(ids)) == 10
    assert queue.lengths == {STREAM: 10}
    entries = await redis.xrange(STREAM)
    assert [fields[b"m"] for _, fields in entries] == [b"%d" % i for i in range(10)]
    await redis.aclose()


async def test_a_restated_key_rides_with_the_next_tick_and_keeps_its_ttl() -> None:
    redis = fakeredis.aioredis.FakeRedis()
    queue = RequestQueue(redis)
    await queue.enqueue(STREAM, b"first", (("tg:{req.a}:accepted", b"without id", 60),))
    queue.restate("tg:{req.a}:accepted", b"with id")
    queue.restate("tg:{req.gone}:accepted", b"never written")  # only a key that exists is rewritten
    await queue.enqueue(STREAM, b"second")
    assert await redis.get("tg:{req.a}:accepted") == b"with id"
    assert 0 < await redis.ttl("tg:{req.a}:accepted") <= 60
    assert await redis.exists("tg:{req.gone}:accepted") == 0
    await queue.close()
    await redis.aclose()


def _queued(entry_id: bytes = b"", reply_to: str = "") -> protocol.Accepted:
    return protocol.Accepted(
        id="r1", model="sim-echo", tier="batch", deadline_at_ms=10**13, region="default",
        reply_to=reply_to, entry_id=entry_id.decode(), lane=LANE,
    )  # fmt: skip


async def test_cancel_deletes_the_entry_stores_cancelled_and_tells_the_accepting_gateway() -> None:
    redis = fakeredis.aioredis.FakeRedis()
    queue = RequestQueue(redis)
    entry_id = await queue.enqueue(STREAM, b"payload")
    stored = await queue.cancel(_queued(entry_id, reply_to="gw1"))
    assert isinstance(stored, protocol.Failure) and stored.code == "cancelled"
    assert await redis.xlen(STREAM) == 0
    ((_, fields),) = await redis.xrange(protocol.reply_key("gw1"))
    assert protocol.reply_decoder.decode(fields[protocol.PAYLOAD_FIELD]) == stored
    assert await redis.pttl(protocol.reply_key("gw1")) > 0
    assert await queue.cancel(_queued()) == stored  # again: still cancelled
    await redis.aclose()


async def test_cancel_after_the_answer_keeps_the_answer() -> None:
    redis = fakeredis.aioredis.FakeRedis()
    queue = RequestQueue(redis)
    answer = protocol.Failure(id="r1", code="worker_error", message="boom")
    await redis.set(protocol.request_key("r1"), protocol.encoder.encode(answer))
    assert await queue.cancel(_queued()) == answer
    await redis.aclose()


async def test_a_cancel_after_a_hang_up_waits_for_the_entry_id() -> None:
    redis = fakeredis.aioredis.FakeRedis()
    queue = RequestQueue(redis)
    enqueued = queue.enqueue(STREAM, b"payload")
    queue.cancel_soon(_queued(), enqueued)  # before the XADD answered
    await queue.close()
    assert await redis.xlen(STREAM) == 0
    stored = await queue.stored("r1")
    assert isinstance(stored, protocol.Failure) and stored.code == "cancelled"
    await redis.aclose()


async def test_one_sample_reads_lengths_heartbeats_and_group_lag_in_one_pipeline() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.aioredis.FakeRedis(server=server)
    stream, beats = (
        default_lane("batch", "default").stream,
        protocol.heartbeat_key(default_lane("batch", "default").name),
    )
    await redis.xgroup_create(stream, protocol.GROUP, id="0", mkstream=True)
    for n in range(3):
        await redis.xadd(stream, {protocol.PAYLOAD_FIELD: b"x%d" % n})
    await redis.xreadgroup(protocol.GROUP, "w1", {stream: ">"}, count=1)  # one delivered, pending
    beat = protocol.Heartbeat(worker="w1", pool="p", at_ms=1, capacity_per_s=10.0, service_ms=5.0)
    await redis.hset(beats, "w1", protocol.encoder.encode(beat))
    queue = RequestQueue(redis)
    sampled = await queue.sample({stream: beats}, [stream])
    assert queue.lengths[stream] == 3
    assert sampled.beats[stream] == [beat]
    assert sampled.groups[stream] == (2, 1)  # two never delivered, one pending
    assert (await queue.sample({stream: beats})).groups == {}  # groups only when asked
    await redis.aclose()
