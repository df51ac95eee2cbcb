"""The direct driver: the load tester acts as its own gateway. It writes Envelopes straight into
the tier streams (one pipeline of XADDs per event-loop tick, through the gateway's own
`RequestQueue`) and reads the workers' replies from its own reply stream with one background
XREAD loop, so workers are loaded without the HTTP layer. All its I/O is Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import protocol
from core.clock import RedisClock
from core.errors import RequestError
from core.settings import Settings
from gateway.queue import RequestQueue

from .schedule import Arrival, input_text
from .stats import Sample

READ_BLOCK_MS = 200
READ_COUNT = 1000
CLIENT_SLACK_S = 2.0  # how long past its deadline a request may still be answered before it counts as lost
_FAILURE_OUTCOMES = {"deadline_exceeded": "deadline", "queue_full": "shed"}


class DirectDriver:
    def __init__(self, redis: Redis, settings: Settings, deadline_ms: int | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.region = settings.gateway.region
        self.deadline_ms = deadline_ms
        self.gateway_id = f"loadtest-{secrets.token_hex(4)}"
        self.reply_key = protocol.reply_key(self.gateway_id)
        self.clock = RedisClock()
        self.queue = RequestQueue(redis, settings)
        self._waiting: dict[str, asyncio.Future[protocol.Reply]] = {}
        self._stop = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.clock.sync(self.redis)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            await self._reader
        await self.queue.close()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.reply_key)

    async def fire(self, index: int, arrival: Arrival, intended: float, started: float) -> Sample:
        loop = asyncio.get_running_loop()
        tier = self.settings.tiers[arrival.tier]
        budget_ms = self.deadline_ms or tier.default_deadline_ms
        request_id = protocol.new_request_id()
        now_ms = self.clock.now_ms()
        envelope = protocol.Envelope(
            id=request_id,
            model=arrival.model,
            input=input_text(index, arrival.input_chars),
            tier=arrival.tier,
            region=self.region,
            reply_to=self.gateway_id,
            deadline_at_ms=int(now_ms) + budget_ms,
            sent_at_ms=round(now_ms, 3),
        )
        future: asyncio.Future[protocol.Reply] = loop.create_future()
        self._waiting[request_id] = future
        outcome, server_ms = "errors", None
        try:
            stream = protocol.stream_key(arrival.tier, self.region)
            await self.queue.enqueue(stream, protocol.encoder.encode(envelope))
            reply = await asyncio.wait_for(future, budget_ms / 1000.0 + CLIENT_SLACK_S)
            if isinstance(reply, protocol.Result):
                outcome, server_ms = "ok", float(reply.finished_at_ms - reply.enqueued_at_ms)
            else:
                outcome = _FAILURE_OUTCOMES.get(reply.code, "errors")
        except TimeoutError:
            outcome = "deadline"
        except RequestError:
            outcome = "errors"
        finally:
            self._waiting.pop(request_id, None)
        done = loop.time()
        return Sample(index, arrival.tier, outcome, (done - intended) * 1000.0, done - started, server_ms)

    async def _read(self) -> None:
        last_id: bytes | str = "0-0"
        while not self._stop.is_set():
            try:
                response: protocol.StreamReply | None = await self.redis.xread(
                    {self.reply_key: last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )  # type: ignore[assignment]
            except (RedisError, OSError):
                await asyncio.sleep(0.1)
                continue
            for _, entries in response or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._resolve(fields.get(protocol.PAYLOAD_FIELD, b""))
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.xtrim(self.reply_key, minid=last_id)

    def _resolve(self, payload: bytes) -> None:
        try:
            reply = protocol.reply_decoder.decode(payload)
        except msgspec.DecodeError:
            return
        future = self._waiting.get(reply.id)
        if future is not None and not future.done():
            future.set_result(reply)
