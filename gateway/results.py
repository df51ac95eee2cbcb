"""The gateway's read side of Redis: one background reader per process takes every reply
addressed to this gateway from its reply stream and resolves the request waiting for it.

`Waiters` is the in-memory half (futures with deadline timers, no I/O); `ResultReader` the I/O.
A streaming request also gets its `Chunk`s, then its outcome, through an asyncio.Queue.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import protocol
from .errors import DeadlineExceeded, RequestError

log = logging.getLogger(__name__)

# What a streaming request's queue yields: chunks, then one Result, Failure or RequestError.
StreamEvent = protocol.Chunk | protocol.Result | protocol.Failure | RequestError

READ_COUNT = 1000
READ_BLOCK_MS = 1000


class Waiters:
    """Requests waiting for their reply, each failing with 504 when its deadline passes."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[protocol.Reply], asyncio.TimerHandle]] = {}
        self._streams: dict[str, asyncio.Queue[StreamEvent]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, request_id: str, timeout_s: float) -> asyncio.Future[protocol.Reply]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[protocol.Reply] = loop.create_future()
        timer = loop.call_later(timeout_s, self._expire, request_id, timeout_s)
        self._waiting[request_id] = (future, timer)
        return future

    def add_stream(self, request_id: str, timeout_s: float) -> asyncio.Queue[StreamEvent]:
        """Wait for a streaming request: its queue gets each chunk, then the outcome."""
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._streams[request_id] = queue

        def settle(future: asyncio.Future[protocol.Reply]) -> None:
            self._streams.pop(request_id, None)
            if not future.cancelled():
                error = future.exception()
                queue.put_nowait(future.result() if error is None else error)  # type: ignore[arg-type]

        self.add(request_id, timeout_s).add_done_callback(settle)
        return queue

    def push(self, chunk: protocol.Chunk) -> bool:
        queue = self._streams.get(chunk.id)
        if queue is None:
            return False  # not streaming, finished, or timed out
        queue.put_nowait(chunk)
        return True

    def resolve(self, reply: protocol.Reply) -> bool:
        entry = self._waiting.pop(reply.id, None)
        if entry is None:
            return False  # already timed out, or answered twice
        future, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result(reply)
        return True

    def discard(self, request_id: str) -> None:
        entry = self._waiting.pop(request_id, None)
        self._streams.pop(request_id, None)
        if entry is not None:
            entry[1].cancel()

    def fail_all(self, error: RequestError) -> None:
        for future, timer in self._waiting.values():
            timer.cancel()
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    def _expire(self, request_id: str, timeout_s: float) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(
                DeadlineExceeded(f"no result for request {request_id} within its deadline of {timeout_s * 1000:.0f} ms")
            )


class ResultReader:
    def __init__(self, redis: Redis, gateway_id: str, waiters: Waiters) -> None:
        self.redis = redis
        self.key = protocol.reply_key(gateway_id)
        self.waiters = waiters
        self.last_id: bytes | str = "0-0"

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                response: protocol.StreamReply | None = await self.redis.xread(
                    {self.key: self.last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )  # type: ignore[assignment]
                backoff = 0.1
            except (RedisError, OSError) as exc:
                log.warning("reply stream read failed, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            if response:
                await self._dispatch(response[0][1])

    async def _dispatch(self, entries: protocol.StreamEntries) -> None:
        for entry_id, fields in entries:
            self.last_id = entry_id
            try:
                reply = protocol.incoming_decoder.decode(fields.get(protocol.PAYLOAD_FIELD, b""))
            except msgspec.DecodeError:
                log.error("undecodable reply skipped", extra={"entry_id": entry_id.decode()})
                continue
            if isinstance(reply, protocol.Chunk):
                self.waiters.push(reply)
            else:
                self.waiters.resolve(reply)
        try:  # read entries are done with: keep the reply stream short
            await self.redis.xtrim(self.key, minid=self.last_id)
        except (RedisError, OSError):
            pass

    async def close(self) -> None:
        try:
            await self.redis.delete(self.key)
        except (RedisError, OSError):
            pass
