"""Crash recovery against a real Redis: entries of a worker that stopped heartbeating are
reclaimed and answered, a live worker's are left alone, entries delivered too often become dead
letters whose clients are told, and a request executed twice keeps its first answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from gateway.results import Waiters
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until
from workers.consumer import Consumer, Delivery
from workers.process import claim_idle_ms

pytestmark = pytest.mark.redis_server  # XPENDING IDLE, XCLAIM and Lua's cmsgpack need a real Redis

StartStack = Callable[..., Any]
STREAM = default_lane("interactive", "default").stream
HEARTBEATS = protocol.heartbeat_key(default_lane("interactive", "default").name)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Settings:
    """Reclaim after 50 ms idle, checked every 50 ms, dead-letter after 3 deliveries."""
    return make_settings(
        delivery__claim_idle_min_ms=50,
        delivery__claim_service_multiple=0.001,
        delivery__claim_interval_s=0.05,
        delivery__max_deliveries=3,
    )


async def now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def heartbeat(client: aioredis.Redis, worker: str, at_ms: int) -> None:
    beat = protocol.Heartbeat(worker=worker, pool="h100-interactive", at_ms=at_ms, capacity_per_s=1.0, service_ms=1.0)
    await client.hset(HEARTBEATS, worker, protocol.encoder.encode(beat))


async def accept(s: Stack, text: str) -> str:
    """Queue an async request through the gateway; its id."""
    async with s.http.post(f"{s.url}/v1/infer", json={"model": "sim-echo", "input": text, "wait": False}) as r:
        assert r.status == 202
        return str((await r.json())["id"])


async def take_as(client: aioredis.Redis, worker: str, times: int = 1) -> bytes:
    """Read the one waiting entry as `worker` (as if it started running it); its entry id.
    `times` > 1 records that many deliveries, as if earlier owners had died with it too."""
    await client.xgroup_create(STREAM, protocol.GROUP, id="0", mkstream=True)
    reply = await client.xreadgroup(protocol.GROUP, worker, {STREAM: ">"}, count=1)
    entry_id: bytes = reply[0][1][0][0]
    if times > 1:
        await client.xclaim(STREAM, protocol.GROUP, worker, 0, [entry_id], retrycount=times)
    return entry_id


async def status_of(s: Stack, request_id: str) -> dict[str, Any]:
    code, body = await s.get(f"/v1/requests/{request_id}")
    assert code == 200
    return body


async def test_a_dead_workers_entry_is_reclaimed_and_answered(
    stack: StartStack, client: aioredis.Redis, fast: Settings
):
    s: Stack = await stack(fast, pools=[])
    request_id = await accept(s, "lost and found")
    await take_as(client, "ghost")
    await heartbeat(client, "ghost", await now_ms(client) - protocol.HEARTBEAT_STALE_MS - 1000)  # silent for 6 s
    await s.start_workers(["h100-interactive"])

    await wait_until(lambda: _done(s, request_id), timeout_s=10)
    body = await status_of(s, request_id)
    assert (body["status"], body["output"]) == ("done", "dnuof dna tsol")
    assert await client.xpending(STREAM, protocol.GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip
    assert await client.xlen(STREAM) == 0


async def _done(s: Stack, request_id: str) -> bool:
    return (await status_of(s, request_id))["status"] != "queued"


async def test_a_live_workers_entry_is_left_alone_until_its_heartbeat_stops(
    client: aioredis.Redis, fast: Settings, redis_url: str
) -> None:
    await client.xadd(STREAM, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(_envelope("slow"))})
    entry_id = await take_as(client, "busy")
    consumer = Consumer(client, fast, "h100-interactive", "rescuer")
    await wait_until(lambda: _idle_at_least(client, 100))

    await heartbeat(client, "busy", await now_ms(client))  # a long batch, but alive
    assert await consumer.reclaim(50, 10, await now_ms(client)) == []
    owners = await client.xpending_range(STREAM, protocol.GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in owners] == [(entry_id, b"busy")]

    await heartbeat(client, "busy", await now_ms(client) - protocol.HEARTBEAT_STALE_MS)  # went silent
    (delivery,) = await consumer.reclaim(50, 10, await now_ms(client))
    assert (delivery.entry_id, delivery.envelope.id, delivery.envelope.input) == (entry_id, "slow", "input of slow")
    owners = await client.xpending_range(STREAM, protocol.GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in owners] == [(b"rescuer", 2)]


async def _idle_at_least(client: aioredis.Redis, idle_ms: int) -> bool:
    return bool(await client.xpending_range(STREAM, protocol.GROUP, "-", "+", 10, idle=idle_ms))


def _envelope(request_id: str) -> protocol.Envelope:
    return protocol.Envelope(
        id=request_id,
        model="sim-echo",
        input=f"input of {request_id}",
        tier="interactive",
        region="default",
        reply_to="gw-test",
        deadline_at_ms=2**42,
    )


async def test_an_entry_delivered_too_often_is_dead_lettered_and_its_client_told(
    stack: StartStack, client: aioredis.Redis, fast: Settings
) -> None:
    s: Stack = await stack(fast, pools=[])
    request_id = await accept(s, "crashes every worker")
    entry_id = await take_as(client, "ghost", times=3)  # three workers died running it
    await s.start_workers(["h100-interactive"])

    await wait_until(lambda: _done(s, request_id), timeout_s=10)
    body = await status_of(s, request_id)
    assert body["status"] == "failed" and body["error"]["type"] == "worker_error"
    assert f"request {request_id} was moved to the dead-letter stream after 3 deliveries" in body["error"]["message"]
    ((_, fields),) = await client.xrange(protocol.dead_letter_key(default_lane("interactive", "default").name))
    letter = protocol.dead_letter_decoder.decode(fields[protocol.PAYLOAD_FIELD])
    assert (letter.request_id, letter.entry_id, letter.deliveries) == (request_id, entry_id.decode(), 3)
    assert "its last worker ghost stopped" in letter.reason and letter.dead_at_ms > 0
    assert protocol.envelope_decoder.decode(letter.payload).input == "crashes every worker"
    assert await client.xlen(STREAM) == 0 and (await client.xpending(STREAM, protocol.GROUP))["pending"] == 0


async def test_a_request_run_twice_keeps_its_first_answer(client: aioredis.Redis, fast: Settings) -> None:
    """Two workers both answered: the result key and the waiting client keep the first answer."""
    consumer = Consumer(client, fast, "h100-interactive", "w")
    await consumer.setup()
    delivery = Delivery(STREAM, b"1-0", _envelope("twice"))
    first = protocol.Result(
        id="twice", model="sim-echo", output="first", tier="interactive", processor="h100", pool="p", worker="a",
        batch_size=1, enqueued_at_ms=1, queue_ms=0.0, service_ms=1.0, finished_at_ms=2, energy_j=0.0, cost=0.0,
    )  # fmt: skip
    late = protocol.Failure(id="twice", code="deadline_exceeded", message="too late the second time")
    await client.set(protocol.accepted_key("twice"), protocol.encoder.encode(protocol.Accepted("twice", "m", "t", 1)))
    await consumer.publish([(delivery, first)])
    await consumer.publish([(delivery, late)])
    stored = protocol.stored_decoder.decode(await client.get(protocol.request_key("twice")))
    assert stored == first
    replies = await client.xrange(protocol.reply_key("gw-test"))
    assert len(replies) == 2  # both reached the gateway's stream ...
    assert 0 < await client.pttl(protocol.reply_key("gw-test")) <= fast.delivery.reply_stream_ttl_s * 1000

    waiters = Waiters()  # ... whose waiter takes the first and ignores the second
    waiting = waiters.add("twice", 5.0)
    assert [waiters.resolve(protocol.reply_decoder.decode(f[protocol.PAYLOAD_FIELD])) for _, f in replies] == [
        True,
        False,
    ]
    assert await waiting == first
    await asyncio.sleep(0)


def test_the_idle_threshold_covers_the_slowest_pool_sharing_a_stream(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(delivery__claim_idle_min_ms=1)
    # interactive is read by h100, tpu and inferentia pools; inferentia's 2.5 ms/token is the slowest
    inferentia = settings.processors["inferentia2"].latency
    assert claim_idle_ms(settings, "h100-interactive") >= int(4 * inferentia.per_token_ms * 256)
    assert claim_idle_ms(make_settings(), "groq-realtime") == make_settings().delivery.claim_idle_min_ms


async def test_request_streams_hold_only_waiting_and_running_entries(
    stack: StartStack, client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """No MAXLEN trim: every accepted entry stays until answered; admission bounds the length."""
    s: Stack = await stack(make_settings(tiers__interactive__max_queue=6), pools=[])
    accepted, refused = [], 0
    for i in range(12):
        async with s.http.post(f"{s.url}/v1/infer", json={"model": "sim-echo", "input": f"n{i}", "wait": False}) as r:
            if r.status == 202:
                accepted.append((await r.json())["id"])
            else:
                assert (r.status, (await r.json())["error"]["type"]) == (429, "queue_full")
                refused += 1
    assert len(accepted) == 6 and refused == 6
    queued = [protocol.envelope_decoder.decode(f[protocol.PAYLOAD_FIELD]).id for _, f in await client.xrange(STREAM)]
    assert queued == accepted  # none trimmed
    await s.start_workers(["h100-interactive"])
    await wait_until(lambda: _all_done(s, accepted))
    assert await client.xlen(STREAM) == 0  # answered entries are deleted


async def _all_done(s: Stack, ids: list[str]) -> bool:
    return all([(await status_of(s, i))["status"] == "done" for i in ids])


async def test_stopped_workers_leave_the_group_and_the_worker_hashes(client: aioredis.Redis, fast: Settings) -> None:
    """What a stopped worker left behind is removed once nothing of its is pending."""
    consumer = Consumer(client, fast, "h100-interactive", "survivor")
    await consumer.setup()
    hearts = protocol.heartbeat_key(default_lane("interactive", "default").name)
    await client.xgroup_createconsumer(STREAM, protocol.GROUP, "gone")
    await client.xgroup_createconsumer(STREAM, protocol.GROUP, "busy-but-gone")
    await client.xadd(STREAM, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(_envelope("held"))})
    await client.xreadgroup(protocol.GROUP, "busy-but-gone", {STREAM: ">"}, count=1)  # holds one entry
    old = protocol.Heartbeat(worker="gone", pool="p", at_ms=1, capacity_per_s=1.0, service_ms=1.0)
    await client.hset(
        hearts, mapping={"gone": protocol.encoder.encode(old), "busy-but-gone": protocol.encoder.encode(old)}
    )
    await asyncio.sleep(0.05)  # both consumers idle a little; "gone" only counts after 20 ms
    forgotten = await consumer.forget_dead(now_ms=10_000, gone_ms=20)
    assert forgotten == ["gone"]
    names = {c["name"].decode() for c in await client.xinfo_consumers(STREAM, protocol.GROUP)}
    assert names == {"busy-but-gone"}  # its pending entry keeps it until reclaimed
    assert await client.hkeys(hearts) == []
