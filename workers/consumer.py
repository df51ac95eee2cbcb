"""The worker's only Redis I/O: read a pool's tier streams through their consumer groups,
publish replies to each request's gateway and result key, acknowledge, and dead-letter entries
that cannot be decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway import protocol
from gateway.protocol import Envelope, Reply
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Delivery:
    stream: str
    entry_id: bytes
    envelope: Envelope

    @property
    def enqueued_at_ms(self) -> int:
        return protocol.entry_ms(self.entry_id)


class Consumer:
    def __init__(self, redis: Redis, settings: Settings, pool_name: str, name: str) -> None:
        pool = settings.pools[pool_name]
        self.redis = redis
        self.name = name
        self.streams = [protocol.stream_key(tier, pool.region) for tier in pool.tiers]
        self._dead_letters = {
            protocol.stream_key(t, pool.region): protocol.dead_letter_key(t, pool.region) for t in pool.tiers
        }
        self._heartbeats = [protocol.heartbeat_key(tier, pool.region) for tier in pool.tiers]
        self._result_ttl_s = settings.gateway.result_ttl_s
        self._reply_maxlen = settings.gateway.reply_stream_maxlen

    async def setup(self) -> None:
        """Create each stream's consumer group (and the stream) unless it exists."""
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, protocol.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """New entries for this consumer, across all its streams (stricter tiers listed first)."""
        response: protocol.StreamReply | None = await self.redis.xreadgroup(
            protocol.GROUP, self.name, dict.fromkeys(self.streams, ">"), count=count, block=block_ms
        )  # type: ignore[assignment]
        deliveries: list[Delivery] = []
        for raw_stream, entries in response or ():
            stream = raw_stream.decode()
            for entry_id, fields in entries:
                payload = fields.get(protocol.PAYLOAD_FIELD, b"")
                try:
                    envelope = protocol.envelope_decoder.decode(payload)
                except msgspec.DecodeError as exc:
                    await self._dead_letter(stream, entry_id, payload, f"undecodable entry: {exc}")
                    continue
                deliveries.append(Delivery(stream, entry_id, envelope))
        return deliveries

    async def publish(self, replies: list[tuple[Delivery, Reply]]) -> None:
        """Send each reply to its gateway and its result key, then XACK and XDEL the entries."""
        pipe = self.redis.pipeline(transaction=False)
        done: dict[str, list[bytes]] = {}
        for delivery, reply in replies:
            payload = protocol.encoder.encode(reply)
            pipe.xadd(
                protocol.reply_key(delivery.envelope.reply_to),
                {protocol.PAYLOAD_FIELD: payload},
                maxlen=self._reply_maxlen,
                approximate=True,
            )
            pipe.set(protocol.request_key(reply.id), payload, ex=self._result_ttl_s)
            done.setdefault(delivery.stream, []).append(delivery.entry_id)
        for stream, ids in done.items():
            pipe.xack(stream, protocol.GROUP, *ids)
            pipe.xdel(stream, *ids)
        await pipe.execute()

    async def publish_chunks(self, chunks: list[tuple[Delivery, protocol.Chunk]]) -> None:
        """Send streaming output pieces to their gateways, in order, in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for delivery, chunk in chunks:
            pipe.xadd(
                protocol.reply_key(delivery.envelope.reply_to),
                {protocol.PAYLOAD_FIELD: protocol.encoder.encode(chunk)},
                maxlen=self._reply_maxlen,
                approximate=True,
            )
        await pipe.execute()

    async def heartbeat(self, beat: protocol.Heartbeat) -> None:
        """Say this worker is alive, and what it can do, on each of its streams' worker hashes."""
        payload = protocol.encoder.encode(beat)
        pipe = self.redis.pipeline(transaction=False)
        for key in self._heartbeats:
            pipe.hset(key, self.name, payload)
            pipe.pexpire(key, protocol.HEARTBEAT_STALE_MS * 2)  # a fleet that is gone leaves nothing
        await pipe.execute()

    async def retire(self) -> None:
        """Withdraw this worker's heartbeats (on a clean stop)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self._heartbeats:
            pipe.hdel(key, self.name)
        await pipe.execute()

    async def _dead_letter(self, stream: str, entry_id: bytes, payload: bytes, reason: str) -> None:
        log.error("dead-lettering entry", extra={"stream": stream, "entry_id": entry_id.decode(), "reason": reason})
        letter = protocol.DeadLetter(
            stream=stream, entry_id=entry_id.decode(), reason=reason, payload=payload, worker=self.name
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self._dead_letters[stream], {protocol.PAYLOAD_FIELD: protocol.encoder.encode(letter)})
        pipe.xack(stream, protocol.GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()
