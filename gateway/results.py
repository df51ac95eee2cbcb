"""The gateway's reply side: one background reader per process takes every reply addressed to
this gateway from its reply stream and resolves the request waiting for it.

`Waiters` is the in-memory half (futures with deadline timers, no I/O); `ResultReader` the loop,
whose Redis I/O (XREAD, XTRIM) goes through `RequestQueue`, one of the gateway's two I/O modules.
A streaming request also gets its `Chunk`s, then its outcome, through an asyncio.Queue. Requests
accepted with `wait: false` are remembered (id and tier) until their reply, which goes to metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import msgspec
from redis.exceptions import RedisError

from core import protocol
from core.errors import DeadlineExceeded, RequestError
from core.settings import tier_rank

from .queue import RequestQueue

log = logging.getLogger(__name__)

# What a streaming request's queue yields: chunks, then one Result, Failure or RequestError.
StreamEvent = protocol.Chunk | protocol.Result | protocol.Failure | RequestError

READ_COUNT = 1000
READ_BLOCK_MS = 1000
ASYNC_GRACE_S = 10.0  # an async request is remembered this long past its deadline
ASYNC_LIMIT = 1_000_000  # async requests remembered at most; beyond, new ones go uncounted


class Waiters:
    """Requests waiting for their reply, each failing with 504 when its deadline passes."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[protocol.Reply], asyncio.TimerHandle]] = {}
        self._streams: dict[str, asyncio.Queue[StreamEvent]] = {}
        self._next_chunk: dict[str, int] = {}  # per stream: the next chunk `seq` not yet passed on
        # Async requests with no reply yet: id -> (tier, span_s), and per span_s (deadline plus
        # grace, whole seconds) id -> when to forget it, oldest first: a sweep stops at the first
        # entry still due, so a sweep costs what it removes.
        self._async: dict[str, tuple[str, int]] = {}
        self._async_spans: dict[int, dict[str, float]] = {}

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
            self._next_chunk.pop(request_id, None)
            if not future.cancelled():
                error = future.exception()
                queue.put_nowait(future.result() if error is None else error)  # type: ignore[arg-type]

        self.add(request_id, timeout_s).add_done_callback(settle)
        return queue

    def push(self, chunk: protocol.Chunk) -> bool:
        queue = self._streams.get(chunk.id)
        if queue is None:
            return False  # not streaming, finished, or timed out
        if chunk.seq < self._next_chunk.get(chunk.id, 0):
            return True  # a rerun of a reclaimed request sends its chunks again: the client has them
        self._next_chunk[chunk.id] = chunk.seq + 1
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

    def accept(self, request_id: str, tier: str, deadline_s: float) -> bool:
        """Remember an async request until its reply, or its deadline plus `ASYNC_GRACE_S`."""
        if len(self._async) >= ASYNC_LIMIT:
            return False
        span_s = math.ceil(deadline_s + ASYNC_GRACE_S)
        entries = self._async_spans.get(span_s)
        if entries is None:
            entries = self._async_spans[span_s] = {}
        entries[request_id] = time.monotonic() + span_s
        self._async[request_id] = (tier, span_s)
        return True

    def take_async(self, request_id: str) -> str | None:
        """The tier of an async request this gateway accepted and has had no reply for, forgetting it."""
        entry = self._async.pop(request_id, None)
        if entry is None:
            return None
        self._async_spans[entry[1]].pop(request_id, None)
        return entry[0]

    def sweep_async(self, now_s: float | None = None) -> list[str]:
        """Forget async requests past their deadline and grace; the tier of each one forgotten."""
        now_s = time.monotonic() if now_s is None else now_s
        tiers: list[str] = []
        for span_s, entries in list(self._async_spans.items()):
            due = []
            for request_id, forget_at_s in entries.items():
                if forget_at_s > now_s:
                    break
                due.append(request_id)
            for request_id in due:
                del entries[request_id]
                tiers.append(self._async.pop(request_id)[0])
            if not entries:
                del self._async_spans[span_s]
        return tiers

    def discard(self, request_id: str) -> None:
        entry = self._waiting.pop(request_id, None)
        self._streams.pop(request_id, None)
        self._next_chunk.pop(request_id, None)
        if entry is not None:
            entry[1].cancel()

    def fail(self, request_id: str, error: BaseException) -> None:
        """End one request's wait with `error` (its XADD failed); nothing if it has ended."""
        entry = self._waiting.pop(request_id, None)
        if entry is not None:
            entry[1].cancel()
            if not entry[0].done():
                entry[0].set_exception(error)

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
    """Reads the reply stream: waited requests get their reply; an async request's reply (and
    its tier) goes to `on_async` once, however often it is read."""

    def __init__(
        self,
        queue: RequestQueue,
        gateway_id: str,
        waiters: Waiters,
        on_async: Callable[[protocol.Reply, str], None] | None = None,
        block_ms: int = READ_BLOCK_MS,
    ) -> None:
        self.queue = queue  # the gateway's Redis I/O
        self.key = protocol.reply_key(gateway_id)
        self.waiters = waiters
        self.on_async = on_async
        self.block_ms = block_ms  # how long one XREAD waits: also how long `run` takes to stop
        self.last_id: bytes | str = "0-0"
        self._trim_through: bytes | str | None = None  # read and done with: dropped by the next read

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                entries = await self.queue.replies(
                    self.key, self.last_id, READ_COUNT, self.block_ms, trim_through=self._trim_through
                )
                self._trim_through = None
                backoff = 0.1
            except (RedisError, OSError) as exc:
                log.warning("reply stream read failed, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            if entries:
                await self._dispatch(entries)

    async def _dispatch(self, entries: protocol.StreamEntries) -> None:
        """Hand each reply read to its request, the strictest tier's first: the handlers they wake
        resume in that order, so a realtime answer read with a batch's worth of batch answers is
        rendered and sent ahead of them, not after. Within a tier, in the order they were read."""
        replies = []
        for entry_id, fields in entries:
            self.last_id = entry_id
            try:
                replies.append(protocol.incoming_decoder.decode(fields.get(protocol.PAYLOAD_FIELD, b"")))
            except msgspec.DecodeError:
                log.error("undecodable reply skipped", extra={"entry_id": entry_id.decode()})
        if len(replies) > 1 and len({reply.tier for reply in replies}) > 1:  # one tier: nothing to sort
            replies.sort(key=_strictness)  # stable: a stream's chunks stay in order
        for reply in replies:
            if isinstance(reply, protocol.Chunk):
                self.waiters.push(reply)
            elif not self.waiters.resolve(reply):
                tier = self.waiters.take_async(reply.id)
                if tier is not None and self.on_async is not None:
                    self.on_async(reply, tier)
        self._trim_through = self.last_id  # the next read trims them, in its own round trip
        await asyncio.sleep(0)  # the requests just answered reply before the next read is sent

    async def close(self) -> None:
        await self.queue.drop_replies(self.key)


def _strictness(reply: protocol.Chunk | protocol.Reply) -> int:
    return tier_rank(reply.tier)
