"""A worker publishing a batch's replies, against a real Redis and a Redis Cluster: each reply
reaches its gateway and its result key, the batch's audit entries are one stream entry that
`tiergate audit tail` prints one line per request, and the request entries are acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from core import protocol, redis_client
from core.redis_client import Client
from core.settings import Settings
from ops import audit
from tests.conftest import default_lane
from tests.processes import audit_tail
from workers.audit import AuditTrail
from workers.consumer import Consumer, Delivery

pytestmark = pytest.mark.redis_server

STREAM = default_lane("interactive", "default").stream
ON_ONE_SERVER_AND_A_CLUSTER = pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)


@pytest.fixture
async def client(redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    c = await redis_client.connect(make_settings().redis, redis_url)
    yield c
    await c.aclose()


def result(envelope: protocol.Envelope, size: int, at_ms: int = 1_000) -> protocol.Result:
    return protocol.Result(
        id=envelope.id, model=envelope.model, output=envelope.input[::-1], tier=envelope.tier, processor="h100",
        pool="h100-interactive", worker="w", batch_size=size, enqueued_at_ms=1, queue_ms=0.5, service_ms=1.0,
        finished_at_ms=at_ms, energy_j=0.0, cost=0.0, tenant=envelope.tenant,
    )  # fmt: skip


async def delivered(consumer: Consumer, client: Client, tenants: list[str], gateway: str = "gw-a") -> list[Delivery]:
    """One request of each of `tenants` queued on STREAM and read by `consumer`, in that order."""
    for n, tenant in enumerate(tenants):
        envelope = protocol.Envelope(
            id=f"req-{n}-{tenant}", model="sim-echo", input=f"input {n}", tier="interactive", region="default",
            reply_to=gateway, deadline_at_ms=2**42, tenant=tenant, key_id=f"k-{tenant}",
        )  # fmt: skip
        await client.xadd(STREAM, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(envelope)})
    deliveries = await consumer.read(len(tenants), None)
    assert [d.envelope.tenant for d in deliveries] == tenants
    return deliveries


@ON_ONE_SERVER_AND_A_CLUSTER
async def test_a_batchs_replies_reach_their_gateways_and_its_entries_are_acknowledged(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    consumer = Consumer(client, make_settings(), "h100-interactive", "w")
    await consumer.setup()
    deliveries = await delivered(consumer, client, ["acme"] * 3)
    deliveries += await delivered(consumer, client, ["beta"] * 2, gateway="gw-b")
    replies = [(d, result(d.envelope, len(deliveries))) for d in deliveries]
    await consumer.publish(replies)

    for gateway, sent in (("gw-a", replies[:3]), ("gw-b", replies[3:])):
        got = [
            protocol.reply_decoder.decode(f[protocol.PAYLOAD_FIELD])
            for _, f in await client.xrange(protocol.reply_key(gateway))
        ]
        assert got == [reply for _, reply in sent]
        assert await client.pttl(protocol.reply_key(gateway)) > 0
    for _, reply in replies:
        assert protocol.stored_decoder.decode(await client.get(protocol.request_key(reply.id))) == reply
    assert await client.xlen(STREAM) == 0
    assert (await client.xpending(STREAM, protocol.GROUP))["pending"] == 0
    ((_, fields),) = await client.xrange(protocol.audit_key())  # the batch's one audit entry
    held = protocol.audit_decoder.decode(fields[protocol.PAYLOAD_FIELD])
    assert isinstance(held, protocol.AuditBatch)
    assert [(e.id, e.tenant, e.pool, e.outcome) for e in held.entries] == [
        (reply.id, reply.tenant, "h100-interactive", "done") for _, reply in replies
    ]


async def test_a_reply_stream_stays_bounded_when_one_xadd_a_batch_trims_it(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    consumer = Consumer(client, make_settings(gateway__reply_stream_maxlen=100), "h100-interactive", "w")
    await consumer.setup()
    for _ in range(4):
        deliveries = await delivered(consumer, client, [""] * 100)
        await consumer.publish([(d, result(d.envelope, 100)) for d in deliveries])
    # Approximate trimming drops whole nodes of 100 entries: at most one more than the bound.
    assert 100 <= await client.xlen(protocol.reply_key("gw-a")) < 200


tail = audit_tail


async def test_the_tail_prints_one_line_per_request_of_batches_and_lone_entries(
    client: Client, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    consumer = Consumer(client, settings, "h100-interactive", "w")
    await consumer.setup()
    first = await delivered(consumer, client, ["acme", "beta", "acme"])
    await consumer.publish([(d, result(d.envelope, 3)) for d in first])
    # An entry of one request, as a worker of an earlier release appended every entry.
    trail = AuditTrail(settings, "h100-interactive", "older-worker")
    (lone,) = await delivered(consumer, client, ["beta"])
    older = trail.entry(lone.envelope, result(lone.envelope, 1))
    await client.xadd(protocol.audit_key(), {protocol.PAYLOAD_FIELD: protocol.encoder.encode(older)})
    second = await delivered(consumer, client, ["acme", "beta"])
    await consumer.publish([(d, result(d.envelope, 2)) for d in second])
    (alone,) = await delivered(consumer, client, ["acme"])
    await consumer.publish([(alone, result(alone.envelope, 1))])
    ids = [d.envelope.id for d in [*first, lone, *second, alone]]

    assert await client.xlen(protocol.audit_key()) == 4  # two batches, two lone requests
    _, fields = (await client.xrevrange(protocol.audit_key(), count=1))[0]
    assert isinstance(protocol.audit_decoder.decode(fields[protocol.PAYLOAD_FIELD]), protocol.AuditEntry)
    everything = await audit.since(client, 0)
    assert [entry.id for _, entry in everything] == ids
    assert len({entry_id for entry_id, _ in everything[:3]}) == 1  # a batch's requests share its stream entry
    assert [entry.id for _, entry in await audit.last(client, 4)] == ids[-4:]  # --count counts requests
    assert [entry.id for _, entry in await audit.last(client, 2, "acme")] == [ids[4], ids[6]]

    rows = await tail(redis_url, "--count", "5")
    assert [row["id"] for row in rows] == ids[-5:]
    assert [row["worker"] for row in rows] == ["w", "older-worker", "w", "w", "w"]
    assert all(str(row["time"]).endswith("Z") and row["outcome"] == "done" for row in rows)
    assert [row["id"] for row in await tail(redis_url, "--since", "2026-01-01T00:00:00Z", "--tenant", "beta")] == [
        ids[1],
        ids[3],
        ids[5],
    ]
