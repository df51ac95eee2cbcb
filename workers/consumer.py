"""The worker's only Redis I/O: read a pool's tier streams through their consumer groups,
publish replies to each request's gateway and result key, acknowledge, and dead-letter entries
that cannot be decoded. It also takes over the pending entries of workers that stopped
heartbeating, dead-letters entries delivered too often (docs/durability.md), and listens on its
streams' cancel channels (Pub/Sub) for requests cancelled before they ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from core import protocol, redis_client
from core.errors import WORKER_ERROR
from core.protocol import Envelope, Failure, Reply
from core.redis_client import AnyPipeline, Client
from core.redis_line import Line, Lines, stream_reply
from core.redis_writes import ScriptedWrites, Writes
from core.settings import Settings, tier_rank

from .audit import AuditTrail

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.5  # how long one wait for a cancel message lasts: bounds how long a stop waits
MAX_BACKOFF_S = 2.0


@dataclass(slots=True, frozen=True)
class Delivery:
    stream: str
    entry_id: bytes
    envelope: Envelope

    @property
    def enqueued_at_ms(self) -> int:
        """Redis's clock when it appended the entry, in whole ms (the entry id)."""
        return protocol.entry_ms(self.entry_id)

    @property
    def sent_at_ms(self) -> float:
        """When the request was queued, on Redis's clock, to a µs where its sender stamped it."""
        return protocol.queued_at_ms(self.envelope, self.entry_id)


def stream_priorities(settings: Settings, pool_name: str) -> dict[str, int]:
    """Each stream a pool reads -> its tier's rank among the pool's tiers, strictest first."""
    tiers = sorted(settings.pools[pool_name].tiers, key=tier_rank)
    return {lane.stream: tiers.index(lane.tier) for lane in settings.lanes() if pool_name in lane.pools}


class Consumer:
    def __init__(self, redis: Client, settings: Settings, pool_name: str, name: str) -> None:
        pool = settings.pools[pool_name]
        self.redis = redis
        self.name = name
        # Strictest tier first: a tier's rank is its streams' priority in the batcher. A tier has
        # one stream per group of models this pool serves with the same other pools (lanes).
        self.tiers = sorted(pool.tiers, key=tier_rank)
        lanes = [lane for lane in settings.lanes() if pool_name in lane.pools]
        self.streams = [lane.stream for lane in lanes]
        self.priority = stream_priorities(settings, pool_name)
        self._dead_letters = {lane.stream: protocol.dead_letter_key(lane.name) for lane in lanes}
        self._heartbeats = [protocol.heartbeat_key(lane.name) for lane in lanes]
        self.cancel_channels = [protocol.cancel_channel(lane.name) for lane in lanes]
        self._result_ttl_s = settings.gateway.result_ttl_s
        self._reply_maxlen = settings.gateway.reply_stream_maxlen
        self._delivery = settings.delivery
        self._reply_ttl_ms = settings.delivery.reply_stream_ttl_s * 1000
        self._audit = AuditTrail(settings, pool_name, name)
        # A batch's replies and acknowledgements, in one round trip (core/redis_writes.py): the
        # execute loop's publish and an answer to entries refused unrun (the read loop's) each on
        # a line of its own.
        self._writes = ScriptedWrites(redis, lines=2)
        self._read_line = Lines(redis, 1)  # the read loop's
        # In a cluster the streams of different hash slots cannot share one XREADGROUP.
        self._slot_reads = redis_client.SlotReads(self._read_slot) if redis_client.is_cluster(redis) else None

    async def setup(self) -> None:
        """Create each stream's consumer group (and the stream) unless it exists, and load the
        script that publishes a batch when every line is busy."""
        await self._writes.load()
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, protocol.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, count: int, block_ms: int | None, streams: list[str] | None = None) -> list[Delivery]:
        """New entries for this consumer: up to `count` from each of `streams` (default: all),
        waiting up to `block_ms` for one to arrive (None: not at all). In a cluster a read of
        some streams may still be waiting when this returns: a later call or `drain` collects it."""
        response: protocol.StreamReply | None
        line = await self._read_line.take()
        if line is not None:
            try:
                response = await self._read_on(line, streams or self.streams, count, block_ms)
            finally:
                self._read_line.give(line)
        elif self._slot_reads is None:
            response = await self.redis.xreadgroup(
                protocol.GROUP, self.name, dict.fromkeys(streams or self.streams, ">"), count=count, block=block_ms
            )  # type: ignore[assignment]
        else:
            groups = redis_client.slot_groups(self.redis, streams or self.streams)
            response = await self._slot_reads.read(groups, count, block_ms)
        return await self._deliveries(response)

    async def _read_on(
        self, line: Line, streams: list[str], count: int, block_ms: int | None
    ) -> protocol.StreamReply | None:
        wanted = dict.fromkeys(streams, ">")
        command = ("XREADGROUP", "GROUP", protocol.GROUP, self.name, *redis_client.read_args(wanted, count, block_ms))
        (response,) = await line.run([command], extra_s=(block_ms or 0) / 1000)
        if isinstance(response, Exception):
            raise response
        return stream_reply(response)

    async def drain(self) -> list[Delivery]:
        """What the reads still in flight (in a cluster) hand over, once they end."""
        return [] if self._slot_reads is None else await self._deliveries(await self._slot_reads.drain())

    async def _read_slot(self, streams: list[str], count: int, block_ms: int | None) -> protocol.StreamReply | None:
        wanted = dict.fromkeys(streams, ">")
        return await redis_client.xreadgroup(self.redis, protocol.GROUP, self.name, wanted, count, block_ms)

    async def _deliveries(self, response: protocol.StreamReply | None) -> list[Delivery]:
        """Decoded entries of a read; those that cannot be decoded go to their dead-letter stream."""
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
        """Send each reply to its gateway and its result key, append where they ran to the audit
        stream (one stream entry for them all), then XACK and XDEL the entries.

        The result key keeps the first answer a request got: an entry executed twice (its
        worker was presumed dead, then answered after all) never turns a result into a failure.
        Commands are queued as `execute_command` arguments: redis-py's keyword wrappers cost
        about as much again as packing the command, and this runs for every answer. On one
        server they go on the publish's own line (core/redis_writes.py), in a cluster as a pipeline.
        """
        pipe = self._writes.batch()
        last = {delivery.envelope.reply_to: n for n, (delivery, _) in enumerate(replies)}
        done: dict[str, list[bytes]] = {}
        for n, (delivery, reply) in enumerate(replies):
            gateway_id = delivery.envelope.reply_to
            self._reply(pipe, gateway_id, reply, trim=last[gateway_id] == n)
            done.setdefault(delivery.stream, []).append(delivery.entry_id)
        self._append_audit(pipe, replies)
        self._expire_replies(pipe, last)
        for stream, ids in done.items():
            pipe.execute_command("XACK", stream, protocol.GROUP, *ids)
            pipe.execute_command("XDEL", stream, *ids)
        await pipe.execute()

    def _append_audit(self, pipe: AnyPipeline | Writes, replies: list[tuple[Delivery, Reply]]) -> None:
        """Queue the batch's audit stream entry (approximate MAXLEN, which counts stream entries),
        and the trim by age if one is set."""
        audit = self._audit
        if not audit.enabled or not replies:
            return
        key = protocol.audit_key()
        payload = audit.payload([(delivery.envelope, reply) for delivery, reply in replies])
        pipe.execute_command("XADD", key, "MAXLEN", "~", audit.maxlen, "*", protocol.PAYLOAD_FIELD, payload)
        min_id = audit.min_id(max(reply.finished_at_ms for _, reply in replies))
        if min_id is not None:
            pipe.xtrim(key, minid=min_id, approximate=True)

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

    async def listen_cancels(self, on_cancel: Callable[[protocol.Cancel], None], stop: asyncio.Event) -> None:
        """Hand every `Cancel` published on this worker's streams' cancel channels to `on_cancel`
        until `stop`. A lost connection is retried with backoff and the channels subscribed again;
        what was published meanwhile is missed (the gateway's XDEL covers the entries not read yet)."""
        backoff = 0.0  # the first retry is at once: cancels published meanwhile are missed
        while not stop.is_set():
            pubsub: PubSub | None = None
            try:
                pubsub = await self._pubsub()
                await pubsub.subscribe(*self.cancel_channels)
                backoff = 0.0
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=CANCEL_POLL_S)
                    if message is not None and message["type"] == "message":
                        _hand_over(message["data"], on_cancel)
            except (RedisError, OSError) as exc:
                log.warning("cancel channel lost, subscribing again", extra={"error": str(exc), "retry_s": backoff})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()

    async def _pubsub(self) -> PubSub:
        """A Pub/Sub connection. A cluster's nodes pass every PUBLISH on to each other: one
        subscription, on any node, hears the channels of every slot."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
        return self.redis.pubsub(ignore_subscribe_messages=True)

    async def heartbeat(self, beats: list[protocol.Heartbeat]) -> None:
        """Say this worker is alive, and what it can do for each stream (`beats` in the order
        of `streams`), on each of its streams' worker hashes."""
        pipe = self.redis.pipeline(transaction=False)
        for key, beat in zip(self._heartbeats, beats, strict=True):
            pipe.hset(key, self.name, protocol.encoder.encode(beat))
            pipe.pexpire(key, protocol.HEARTBEAT_STALE_MS * 2)  # a fleet that is gone leaves nothing
        await pipe.execute()

    async def retire(self) -> None:
        """Withdraw this worker's heartbeats (on a clean stop)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self._heartbeats:
            pipe.hdel(key, self.name)
        await pipe.execute()

    async def _dead_letter(
        self,
        stream: str,
        entry_id: bytes,
        payload: bytes,
        reason: str,
        failure: tuple[str, Failure] | None = None,
        deliveries: int = 1,
    ) -> None:
        """Move an entry to its dead-letter stream; `failure` (gateway id, reply) tells its client."""
        log.error("dead-lettering entry", extra={"stream": stream, "entry_id": entry_id.decode(), "reason": reason})
        request_id = failure[1].id if failure is not None else ""
        letter = protocol.DeadLetter(
            stream=stream,
            entry_id=entry_id.decode(),
            reason=reason,
            payload=payload,
            worker=self.name,
            request_id=request_id,
            deliveries=deliveries,
            dead_at_ms=failure[1].finished_at_ms if failure is not None else 0,
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            self._dead_letters[stream],
            {protocol.PAYLOAD_FIELD: protocol.encoder.encode(letter)},
            maxlen=self._delivery.dead_letter_maxlen,
            approximate=True,
        )
        if failure is not None:
            self._reply(pipe, failure[0], failure[1])
            self._expire_replies(pipe, [failure[0]])
        pipe.xack(stream, protocol.GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    def _reply(self, pipe: AnyPipeline | Writes, gateway_id: str, reply: Reply, trim: bool = True) -> None:
        """Queue a reply's XADD to its gateway's stream, and the write of its result key with SET
        NX, so that the first answer stays. `trim`: this XADD also bounds the stream (MAXLEN ~);
        a batch's last reply to each gateway does it for the others, whose XADDs are shorter."""
        payload = protocol.encoder.encode(reply)
        key = protocol.reply_key(gateway_id)
        if trim:
            pipe.execute_command("XADD", key, "MAXLEN", "~", self._reply_maxlen, "*", protocol.PAYLOAD_FIELD, payload)
        else:
            pipe.execute_command("XADD", key, "*", protocol.PAYLOAD_FIELD, payload)
        pipe.execute_command("SET", protocol.request_key(reply.id), payload, "EX", self._result_ttl_s, "NX")

    def _expire_replies(self, pipe: AnyPipeline | Writes, gateway_ids: Iterable[str]) -> None:
        """A reply stream whose gateway is gone expires once no worker writes to it."""
        for gateway_id in gateway_ids:
            pipe.execute_command("PEXPIRE", protocol.reply_key(gateway_id), self._reply_ttl_ms)

    # ------------------------------------------------------------ crash recovery

    async def live_workers(self, now_ms: int) -> set[str]:
        """Consumers whose heartbeat on any of these streams is fresh."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self._heartbeats:
            pipe.hgetall(key)
        heard = _last_heard(await pipe.execute())
        return {name for name, at_ms in heard.items() if now_ms - at_ms < protocol.HEARTBEAT_STALE_MS}

    async def forget_dead(self, now_ms: int, gone_ms: int) -> list[str]:
        """Remove what stopped workers left behind: consumers silent for `gone_ms` (no read, no
        heartbeat) with nothing pending leave the consumer groups, and heartbeat fields that old
        leave the worker hashes. A consumer with pending entries stays for `reclaim` to empty."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self._heartbeats:
            pipe.hgetall(key)
        for stream in self.streams:
            pipe.xinfo_consumers(stream, protocol.GROUP)
        replies = await pipe.execute()
        heard = _last_heard(replies[: len(self._heartbeats)])
        cleanup = self.redis.pipeline(transaction=False)
        forgotten: set[str] = set()
        for stream, consumers in zip(self.streams, replies[len(self._heartbeats) :], strict=True):
            for consumer in consumers:
                name = _text(consumer["name"])
                silent = now_ms - heard.get(name, 0) > gone_ms and int(consumer["idle"]) > gone_ms
                if name != self.name and silent and int(consumer["pending"]) == 0:
                    cleanup.xgroup_delconsumer(stream, protocol.GROUP, name)
                    forgotten.add(name)
        stale = [name for name, at_ms in heard.items() if now_ms - at_ms > gone_ms and name != self.name]
        for key in self._heartbeats if stale else ():
            cleanup.hdel(key, *stale)
        if forgotten or stale:
            await cleanup.execute()
            log.info("forgot stopped workers", extra={"worker": self.name, "consumers": sorted(forgotten)})
        return sorted(forgotten)

    async def reclaim(self, idle_ms: int, count: int, now_ms: int) -> list[Delivery]:
        """Claim up to `count` entries idle `idle_ms` or longer whose owner stopped heartbeating.

        An entry already delivered `max_deliveries` times goes to the dead-letter stream instead,
        and its client gets a `Failure` naming the request id.
        """
        alive = await self.live_workers(now_ms) | {self.name}
        deliveries: list[Delivery] = []
        for stream in self.streams:
            if len(deliveries) >= count:
                break
            pending: list[dict[str, Any]] = await self.redis.xpending_range(
                stream, protocol.GROUP, min="-", max="+", count=count - len(deliveries), idle=idle_ms
            )
            orphans = {
                p["message_id"]: (p["consumer"].decode(), int(p["times_delivered"]))
                for p in pending
                if p["consumer"].decode() not in alive
            }
            if not orphans:
                continue
            claimed: list[tuple[bytes, dict[bytes, bytes] | None]] = await self.redis.xclaim(
                stream, protocol.GROUP, self.name, min_idle_time=idle_ms, message_ids=list(orphans)
            )  # type: ignore[assignment]
            deleted = [entry_id for entry_id, fields in claimed if fields is None]
            if deleted:  # answered, or cancelled while its worker ran it: nothing left to run
                await self.redis.xack(stream, protocol.GROUP, *deleted)
            for entry_id, fields in claimed:
                if fields is None:
                    continue
                delivery = await self._take_over(stream, entry_id, fields, orphans[entry_id], now_ms)
                if delivery is not None:
                    deliveries.append(delivery)
        if deliveries:
            log.warning(
                "reclaimed entries of stopped workers",
                extra={"worker": self.name, "count": len(deliveries), "ids": [d.envelope.id for d in deliveries]},
            )
        return deliveries

    async def _take_over(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], history: tuple[str, int], now_ms: int
    ) -> Delivery | None:
        """The claimed entry as a delivery to run again, or None once it has been dead-lettered."""
        payload = fields.get(protocol.PAYLOAD_FIELD, b"")
        try:
            envelope = protocol.envelope_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            await self._dead_letter(stream, entry_id, payload, f"undecodable entry: {exc}")
            return None
        owner, tries = history  # deliveries so far, and the worker that had the last one
        if tries < self._delivery.max_deliveries:
            return Delivery(stream, entry_id, envelope)
        reason = f"delivered {tries} times without an answer; its last worker {owner} stopped"
        message = (
            f"request {envelope.id} was moved to the dead-letter stream after {tries} deliveries without an"
            f" answer (its workers stopped while running it); `tiergate dlq replay` can queue it again"
        )
        failure = Failure(
            id=envelope.id,
            code=WORKER_ERROR,
            message=message,
            tier=envelope.tier,
            worker=self.name,
            enqueued_at_ms=protocol.entry_ms(entry_id),
            finished_at_ms=now_ms,
        )
        await self._dead_letter(stream, entry_id, payload, reason, (envelope.reply_to, failure), tries)
        return None


def _hand_over(payload: bytes, on_cancel: Callable[[protocol.Cancel], None]) -> None:
    try:
        notice = protocol.cancel_decoder.decode(payload)
    except msgspec.DecodeError:
        log.error("undecodable cancel message skipped", extra={"payload": payload[:64].hex()})
        return
    on_cancel(notice)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _last_heard(hashes: list[dict[bytes, bytes]]) -> dict[str, int]:
    """Each consumer's latest heartbeat time (ms) across worker hashes; 0 when unreadable."""
    heard: dict[str, int] = {}
    for beats in hashes:
        for raw_name, raw in beats.items():
            try:
                at_ms = protocol.heartbeat_decoder.decode(raw).at_ms
            except msgspec.DecodeError:
                at_ms = 0
            name = raw_name.decode()
            heard[name] = max(heard.get(name, 0), at_ms)
    return heard
