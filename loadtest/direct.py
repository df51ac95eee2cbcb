"""The direct driver: the load tester acts as its own gateway. It writes Envelopes straight into
the tier streams (one pipeline of XADDs per event-loop tick, through the gateway's own
`RequestQueue`) and reads the workers' replies from its own reply stream with the gateway's own
`ResultReader` and `Waiters`, so workers are loaded without the HTTP layer. All its I/O is Redis.
"""

from __future__ import annotations

import asyncio
import secrets

from core import protocol
from core.clock import RedisClock
from core.errors import DEADLINE_EXCEEDED, QUEUE_FULL, DeadlineExceeded, InvalidRequest, RequestError
from core.protocol import SENSITIVITY_CLASSES
from core.redis_client import Client
from core.settings import Settings
from gateway.queue import RequestQueue
from gateway.results import ResultReader, Waiters

from .schedule import Arrival, input_text
from .stats import Sample

READ_BLOCK_MS = 200  # the reader stops within this once the run ends
CLIENT_SLACK_S = 2.0  # how long past its deadline a request may still be answered before it counts as lost
_FAILURE_OUTCOMES = {DEADLINE_EXCEEDED: "deadline", QUEUE_FULL: "shed"}


class DirectDriver:
    def __init__(self, redis: Client, settings: Settings, deadline_ms: int | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.region = settings.gateway.region
        # (tier, model) -> the request stream of its lane in this region for the lowest data class
        # (what the gateway's router picks for a request that names none)
        self.streams = {
            (lane.tier, model): lane.stream
            for lane in settings.lanes()
            if lane.region == self.region
            for model, data_class in lane.carries
            if data_class == SENSITIVITY_CLASSES[0]
        }
        self.deadline_ms = deadline_ms
        self.gateway_id = f"loadtest-{secrets.token_hex(4)}"
        self.clock = RedisClock()
        self.queue = RequestQueue(redis, settings)
        self.waiters = Waiters()
        self.reader = ResultReader(self.queue, self.gateway_id, self.waiters, block_ms=READ_BLOCK_MS)
        self._stop = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.clock.sync(self.redis)
        self._reading = asyncio.create_task(self.reader.run(self._stop))

    async def close(self) -> None:
        self._stop.set()
        if self._reading is not None:
            await self._reading
        await self.queue.close()
        await self.reader.close()  # deletes the reply stream

    async def fire(self, index: int, arrival: Arrival, intended: float, started: float) -> Sample:
        """Send one request and wait for its reply; a request unanswered past its deadline and
        `CLIENT_SLACK_S` counts as lost (`deadline`)."""
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
        waiting = self.waiters.add(request_id, budget_ms / 1000.0 + CLIENT_SLACK_S)
        outcome, server_ms = "errors", None
        try:
            stream = self.streams.get((arrival.tier, arrival.model))
            if stream is None:
                raise InvalidRequest(f"no pool serves model {arrival.model!r} on tier {arrival.tier!r}")
            await self.queue.enqueue(stream, protocol.encoder.encode(envelope))
            reply = await waiting
            if isinstance(reply, protocol.Result):
                outcome, server_ms = "ok", float(reply.finished_at_ms - reply.enqueued_at_ms)
            else:
                outcome = _FAILURE_OUTCOMES.get(reply.code, "errors")
        except DeadlineExceeded:  # the waiter's own timer: no reply within the deadline and slack
            outcome = "deadline"
        except RequestError:
            outcome = "errors"
        finally:
            self.waiters.discard(request_id)
        done = loop.time()
        return Sample(index, arrival.tier, outcome, (done - intended) * 1000.0, done - started, server_ms)
