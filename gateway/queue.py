"""The gateway's request I/O with Redis: enqueue requests into tier streams, one pipeline per
event-loop tick for every request that arrived in that tick, cancel queued requests, read stored
request state and the gateway's reply stream, and sample the queues. With `slo_store.py` (the SLO
counters) it is the only gateway module that talks to Redis.

Each flush also samples the length of the streams it wrote, which admission reads for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from core import protocol, redis_client
from core.errors import BackendUnavailable, Cancelled
from core.redis_client import Client
from core.redis_line import Line, Lines, stream_reply
from core.redis_writes import ScriptedWrites
from core.settings import DeliverySettings, GatewaySettings, Settings

log = logging.getLogger(__name__)


State = tuple[str, bytes, int]  # (key, value, ttl_s): a SET sent with a request's XADD


class _Pending(msgspec.Struct):  # one per request: a Struct is built in C
    stream: str
    payload: bytes
    future: asyncio.Future[bytes]
    states: tuple[State, ...] = ()


MAX_FLUSHES = 4  # pipelines in flight at once; each holds one connection


class RequestQueue:
    def __init__(self, redis: Client, settings: Settings | None = None) -> None:
        self.redis = redis
        self.lengths: dict[str, float] = {}  # per stream: XLEN when sampled, then as admission projects it
        self.sampled_at: dict[str, float] = {}  # per stream: loop time of that sample or projection
        self._gateway = settings.gateway if settings is not None else GatewaySettings()
        self._delivery = settings.delivery if settings is not None else DeliverySettings()
        self._pending: list[_Pending] = []
        self._restates: list[tuple[str, bytes]] = []  # (key, value) to overwrite, if it still exists
        self._flushing: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget cancels and releases, held until done
        self._scheduled = False
        self._writes = ScriptedWrites(redis, lines=MAX_FLUSHES)  # each pipeline in flight on a line of its own
        self._reply_line = Lines(redis, 1)  # the reply reader's

    async def load(self) -> None:
        """Load the script a tick's requests go in when every line is busy (core/redis_writes.py): at start, once."""
        await self._writes.load()

    def enqueue(self, stream: str, payload: bytes, states: tuple[State, ...] = ()) -> asyncio.Future[bytes]:
        """Queue an XADD for this tick's pipeline, after a SET of each of `states`; the future
        resolves to the entry id.

        No MAXLEN: a trim could drop entries still waiting or pending. Workers XDEL what they
        answered and admission refuses at `max_queue`, which bounds the stream instead.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending.append(_Pending(stream, payload, future, states))
        self._flush_when_free()
        return future

    def restate(self, key: str, value: bytes) -> None:
        """Overwrite a stored state key (keeping its TTL, and only while it exists) in the next
        tick's pipeline: it rides along with that tick's requests, never waited on."""
        self._restates.append((key, value))
        self._flush_when_free()

    def _flush_when_free(self) -> None:
        if not self._scheduled and len(self._flushing) < MAX_FLUSHES:
            self._start_flush()

    def _start_flush(self) -> None:
        """Start a pipeline task; when it first runs (next tick) it sends everything gathered by
        then. With MAX_FLUSHES in flight the first to finish starts it instead, in a larger
        pipeline (Redis slowing down batches more, not less)."""
        task = asyncio.get_running_loop().create_task(self._flush())
        self._scheduled = True
        self._flushing.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if (self._pending or self._restates) and not self._scheduled:
            self._start_flush()

    async def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        restates, self._restates = self._restates, []
        pipe = self._writes.batch()  # on one server a line of its own, whose replies are parsed in one pass
        for item in batch:
            for key, value, ttl_s in item.states:
                pipe.execute_command("SET", key, value, "EX", ttl_s)
            pipe.execute_command("XADD", item.stream, "*", protocol.PAYLOAD_FIELD, item.payload)
        streams = list(dict.fromkeys(item.stream for item in batch))
        for stream in streams:
            pipe.execute_command("XLEN", stream)
        for key, value in restates:  # last: their replies are not read
            pipe.execute_command("SET", key, value, "XX", "KEEPTTL")
        try:
            replies = await pipe.execute(raise_on_error=False)
        except ResponseError as exc:  # the batch as a whole refused (OOM: a script that writes)
            _fail(batch, BackendUnavailable(f"Redis refused the request: {exc}"))
        except (RedisError, OSError) as exc:
            _fail(batch, BackendUnavailable(f"Redis is unreachable, the request was not queued: {exc}"))
        else:
            self._settle(batch, streams, replies)

    def _settle(self, batch: list[_Pending], streams: list[str], replies: list[object]) -> None:
        """Hand each request its XADD reply, and keep the sampled stream lengths."""
        position = 0
        for item in batch:
            position += len(item.states)
            reply = replies[position]
            position += 1
            if item.future.done():
                continue
            if isinstance(reply, bytes):
                item.future.set_result(reply)
            else:
                item.future.set_exception(BackendUnavailable(f"Redis refused the request: {reply}"))
        for stream, length in zip(streams, replies[position : position + len(streams)], strict=True):
            if isinstance(length, int):
                self._sampled(stream, length)

    def _sampled(self, stream: str, length: int) -> None:
        self.lengths[stream] = length + self._unsent(stream)
        self.sampled_at[stream] = asyncio.get_running_loop().time()

    def _unsent(self, stream: str) -> int:
        """Requests admitted to `stream` that the next pipeline has yet to send: a sampled length
        does not hold them, and admission must."""
        return sum(1 for item in self._pending if item.stream == stream)

    async def stored(self, request_id: str, tenant: str = "") -> protocol.Stored | None:
        """A request's answer, else its `Accepted` record, else None. With a `tenant` (a keyed
        request), None too unless that tenant's `Accepted` record says it sent the request."""
        keys = (protocol.request_key(request_id), protocol.accepted_key(request_id))
        try:
            answer, accepted = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        if tenant:
            record = None if accepted is None else protocol.stored_decoder.decode(accepted)  # type: ignore[arg-type]
            if not isinstance(record, protocol.Accepted) or record.tenant != tenant:
                return None
        raw = answer or accepted  # the answer wins once there is one
        return None if raw is None else protocol.stored_decoder.decode(raw)  # type: ignore[arg-type]

    async def cancel(self, queued: protocol.Accepted) -> protocol.Stored | None:
        """Cancel a queued request in one pipeline; the answer it holds afterwards (the
        `Failure` "cancelled" unless another answer came first, which then stays).

        XDEL its entry (a worker that has not read it never will), SET NX its answer to the
        failure (so a worker's later answer cannot replace it), PUBLISH its id on its stream's
        cancel channel (a worker that read it but has not started it answers it without running
        it), and, with `reply_to`, tell the gateway that accepted it, which counts its outcome.
        A request already running finishes; its answer is discarded.
        """
        name = protocol.request_key(queued.id)
        failure = protocol.Failure(
            id=queued.id, code=Cancelled.code, message=f"request {queued.id} was cancelled", tier=queued.tier
        )
        payload = protocol.encoder.encode(failure)
        pipe = self.redis.pipeline(transaction=False)
        if queued.entry_id:
            pipe.xdel(queued.stream, queued.entry_id)
        pipe.set(name, payload, ex=self._gateway.result_ttl_s, nx=True)
        pipe.get(name)
        notice = protocol.encoder.encode(protocol.Cancel(id=queued.id, deadline_at_ms=queued.deadline_at_ms))
        channel = protocol.cancel_channel(queued.lane)
        cluster = redis_client.is_cluster(self.redis)  # a cluster's pipelines refuse PUBLISH: sent beside
        if not cluster:
            pipe.publish(channel, notice)
        if queued.reply_to:
            replies = protocol.reply_key(queued.reply_to)
            fields = {protocol.PAYLOAD_FIELD: payload}
            pipe.xadd(replies, fields, maxlen=self._gateway.reply_stream_maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.pexpire(replies, self._delivery.reply_stream_ttl_s * 1000)
        try:
            if cluster:
                answers, _ = await asyncio.gather(pipe.execute(), self.redis.publish(channel, notice))
            else:
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable, the request was not cancelled: {exc}") from exc
        raw = answers[2 if queued.entry_id else 1]
        return None if raw is None else protocol.stored_decoder.decode(raw)

    def cancel_soon(self, queued: protocol.Accepted, enqueued: asyncio.Future[bytes]) -> None:
        """Cancel a request whose client went away, in the background, once its XADD answered
        (`enqueued`, its entry id); nothing to do if it was never queued."""
        self._in_background(self._cancel_queued(queued, enqueued))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_queued(self, queued: protocol.Accepted, enqueued: asyncio.Future[bytes]) -> None:
        await asyncio.wait([enqueued])
        if enqueued.cancelled() or enqueued.exception() is not None:
            return
        try:
            await self.cancel(msgspec.structs.replace(queued, entry_id=enqueued.result().decode()))
        except BackendUnavailable as exc:
            log.warning("cancel failed; the request runs", extra={"id": queued.id, "error": exc.message})

    async def sample(self, heartbeats: dict[str, str], groups: Sequence[str] = ()) -> Sample:
        """Refresh `lengths` of every stream and read each one's worker heartbeats (`heartbeats`
        maps a request stream to its heartbeat hash), and the worker group's lag and pending
        entries of each stream of `groups`, in one pipeline. Runs on a timer, so admission sees a
        drained queue even when no request has been queued since."""
        streams = list(dict.fromkeys([*heartbeats, *groups]))
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            if stream in heartbeats:
                pipe.hvals(heartbeats[stream])
            if stream in groups:
                pipe.xinfo_groups(stream)
        replies = iter(await pipe.execute(raise_on_error=False))
        sample = Sample()
        for stream in streams:
            length = next(replies)
            if isinstance(length, int):
                self._sampled(stream, length)
            if stream in heartbeats:
                sample.beats[stream] = _heartbeats(next(replies))
            if stream in groups:
                sample.groups[stream] = _group(next(replies), length)
        return sample

    async def replies(
        self, key: str, after: bytes | str, count: int, block_ms: int, trim_through: bytes | str | None = None
    ) -> protocol.StreamEntries:
        """Up to `count` entries of a reply stream after `after`, waiting up to `block_ms` for one.
        With `trim_through`, what the stream holds up to it (read and done with) is dropped first,
        best effort, in the same round trip on one server (a cluster's client pipelines no XREAD:
        there the trim is a command of its own)."""
        line = await self._reply_line.take()
        if line is not None:
            try:
                response = await self._replies_on(line, key, after, count, block_ms, trim_through)
            finally:
                self._reply_line.give(line)
        elif trim_through is None:
            response = await redis_client.xread(self.redis, {key: after}, count, block_ms)
        elif redis_client.is_cluster(self.redis):
            await self.trim_replies(key, trim_through)
            response = await redis_client.xread(self.redis, {key: after}, count, block_ms)
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xtrim(key, minid=trim_through)
            pipe.xread({key: after}, count=count, block=block_ms)
            _, response = await pipe.execute(raise_on_error=False)
            if isinstance(response, Exception):
                raise response
        return response[0][1] if response else []

    @staticmethod
    async def _replies_on(
        line: Line, key: str, after: bytes | str, count: int, block_ms: int, trim_through: bytes | str | None
    ) -> protocol.StreamReply | None:
        """`replies`' trim and read, sent together on the reply reader's own line."""
        read = ("XREAD", *redis_client.read_args({key: after}, count, block_ms))
        trim = [] if trim_through is None else [("XTRIM", key, "MINID", trim_through)]
        *_, response = await line.run([*trim, read], extra_s=block_ms / 1000)
        if isinstance(response, Exception):
            raise response
        return stream_reply(response)

    async def trim_replies(self, key: str, through: bytes | str) -> None:
        """Drop what a reply stream holds up to `through` (read and done with); best effort."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.xtrim(key, minid=through)

    async def drop_replies(self, key: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(key)

    async def claim_idempotency(self, key: str, request_id: str, ttl_s: int) -> str | None:
        """Record `request_id` as the first request sent with `key`, for `ttl_s`; return the first
        one's id when another request already holds it."""
        name = protocol.idempotency_key(key)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(name, request_id, nx=True, ex=ttl_s)
            pipe.get(name)
            claimed, holder = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable, the request was not queued: {exc}") from exc
        return None if claimed else holder.decode()

    def release_idempotency_soon(self, key: str, request_id: str) -> None:
        """Free `key` for a later request, in the background, while `request_id` (never queued)
        still holds it; best effort: otherwise its claim runs out by itself."""
        self._in_background(self._release_idempotency(protocol.idempotency_key(key), request_id))

    async def _release_idempotency(self, name: str, request_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            if await self.redis.get(name) == request_id.encode():
                await self.redis.delete(name)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._flushing or self._background:
            await asyncio.gather(*self._flushing, *self._background, return_exceptions=True)


def _fail(batch: list[_Pending], error: BackendUnavailable) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)


@dataclass(slots=True)
class Sample:
    """One sampling of the tier streams: live heartbeats, and the group's (lag, pending)."""

    beats: dict[str, list[protocol.Heartbeat]] = field(default_factory=dict)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)


def _heartbeats(raw: object) -> list[protocol.Heartbeat]:
    decoded = []
    for payload in raw if isinstance(raw, list) else ():
        with contextlib.suppress(msgspec.DecodeError):
            decoded.append(protocol.heartbeat_decoder.decode(payload))
    return decoded


def _group(groups: object, length: object) -> tuple[int, int]:
    """The worker group's (lag, pending) from XINFO GROUPS.

    XINFO GROUPS reports `lag` from Redis 7 on, and even there not always (nil after some
    deletions). Without it the lag is the stream's length less the group's pending entries:
    workers XDEL every entry they acknowledge, so what the stream holds beyond the pending
    entries has not been delivered yet.
    """
    for group in groups if isinstance(groups, list) else ():
        name = group.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == protocol.GROUP:
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            if not isinstance(lag, int):
                lag = max(0, length - pending) if isinstance(length, int) else 0
            return lag, pending
    return 0, 0
