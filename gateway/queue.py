"""The gateway's write side of Redis: enqueue requests into tier streams, one pipeline per
event-loop tick for every request that arrived in that tick, and read stored request state.

Each flush also samples the length of the streams it wrote, which admission reads for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import protocol
from .errors import BackendUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    stream: str
    payload: bytes
    future: asyncio.Future[bytes]
    state_key: str | None = None
    state: bytes | None = None
    state_ttl_s: int = 0


MAX_FLUSHES = 4  # pipelines in flight at once; each holds one connection


class RequestQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.lengths: dict[str, float] = {}  # per stream: XLEN when sampled, then as admission projects it
        self.sampled_at: dict[str, float] = {}  # per stream: loop time of that sample or projection
        self._pending: list[_Pending] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._scheduled = False

    def enqueue(
        self, stream: str, payload: bytes, state: tuple[str, bytes, int] | None = None
    ) -> asyncio.Future[bytes]:
        """Queue an XADD for this tick's pipeline; the future resolves to the entry id.

        No MAXLEN: a trim could drop entries still waiting or pending. Workers XDEL what they
        answered and admission refuses at `max_queue`, which bounds the stream instead.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        item = _Pending(stream, payload, future)
        if state is not None:
            item.state_key, item.state, item.state_ttl_s = state
        self._pending.append(item)
        if not self._scheduled and len(self._flushing) < MAX_FLUSHES:
            self._start_flush()
        return future

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
        if self._pending and not self._scheduled:
            self._start_flush()

    async def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        pipe = self.redis.pipeline(transaction=False)
        for item in batch:
            if item.state_key is not None:
                pipe.set(item.state_key, item.state, ex=item.state_ttl_s)  # type: ignore[arg-type]
            pipe.xadd(item.stream, {protocol.PAYLOAD_FIELD: item.payload})
        streams = list(dict.fromkeys(item.stream for item in batch))
        for stream in streams:
            pipe.xlen(stream)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            error = BackendUnavailable(f"Redis is unreachable, the request was not queued: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self._settle(batch, streams, replies)

    def _settle(self, batch: list[_Pending], streams: list[str], replies: list[object]) -> None:
        """Hand each request its XADD reply, and keep the sampled stream lengths."""
        position = 0
        for item in batch:
            position += item.state_key is not None
            reply = replies[position]
            position += 1
            if item.future.done():
                continue
            if isinstance(reply, bytes):
                item.future.set_result(reply)
            else:
                item.future.set_exception(BackendUnavailable(f"Redis refused the request: {reply}"))
        for stream, length in zip(streams, replies[position:], strict=True):
            if isinstance(length, int):
                self._sampled(stream, length)

    def _sampled(self, stream: str, length: int) -> None:
        self.lengths[stream] = length + self._unsent(stream)
        self.sampled_at[stream] = asyncio.get_running_loop().time()

    def _unsent(self, stream: str) -> int:
        """Requests admitted to `stream` that the next pipeline has yet to send: a sampled length
        does not hold them, and admission must."""
        return sum(1 for item in self._pending if item.stream == stream)

    async def stored(self, request_id: str) -> protocol.Stored | None:
        keys = (protocol.request_key(request_id), protocol.accepted_key(request_id))
        try:
            answer, accepted = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        raw = answer or accepted  # the answer wins once there is one
        return None if raw is None else protocol.stored_decoder.decode(raw)  # type: ignore[arg-type]

    async def sample(self, streams: dict[str, str]) -> dict[str, list[protocol.Heartbeat]]:
        """Refresh `lengths` of every stream and read each one's worker heartbeats.

        `streams` maps a request stream to its heartbeat hash. Runs on a timer, so admission
        sees a drained queue even when no request has been queued since.
        """
        pipe = self.redis.pipeline(transaction=False)
        for stream, heartbeats in streams.items():
            pipe.xlen(stream)
            pipe.hvals(heartbeats)
        replies = await pipe.execute()
        beats: dict[str, list[protocol.Heartbeat]] = {}
        for i, stream in enumerate(streams):
            self._sampled(stream, int(replies[2 * i]))
            decoded = []
            for raw in replies[2 * i + 1]:
                with contextlib.suppress(msgspec.DecodeError):
                    decoded.append(protocol.heartbeat_decoder.decode(raw))
            beats[stream] = decoded
        return beats

    async def claim_idempotency(self, key: str, request_id: str, ttl_s: int) -> str | None:
        """Record `request_id` as the first request sent with `key`; return the first one's id
        when another request already holds it."""
        name = protocol.idempotency_key(key)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(name, request_id, nx=True, ex=ttl_s)
            pipe.get(name)
            claimed, holder = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis is unreachable, the request was not queued: {exc}") from exc
        return None if claimed else holder.decode()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
