"""One worker process of one pool: a reader task fills the batcher from Redis, the execution
loop runs batches and publishes their replies. SIGTERM stops reading, finishes and acknowledges
what was read, then returns. Reconnects to Redis with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import placement, protocol, redis_client
from core.background import every, join
from core.clock import RedisClock, keep_synced
from core.heap import freeze_startup_heap
from core.protocol import Reply, Result
from core.settings import Settings
from core.tracing import start as start_tracing

from .backends import ModelClock, make_backend
from .batcher import Batcher
from .cancels import CancelledIds
from .capacity import CapacityMeter, expected_batch_ms
from .consumer import Consumer, Delivery, stream_priorities
from .executor import Executor
from .metrics import WorkerMetrics
from .placement import Holds

log = logging.getLogger(__name__)

READ_BLOCK_MS = 500  # bounds how long SIGTERM waits for an in-flight read
CLOCK_SYNC_S = 30.0
MAX_BACKOFF_S = 2.0
START_MARGIN_MS = 5.0
FORGET_EVERY_S = 30.0
GONE_MS = 60_000  # a consumer silent this long, with nothing pending, leaves its group
MIXED_S = 1.0  # a stricter tier is read ahead while its entries of this long came from several tenants


def _block_ms(wait_s: float | None) -> int:
    """How long a read may block: READ_BLOCK_MS, or less when a held stream is due sooner."""
    return READ_BLOCK_MS if wait_s is None else max(1, min(READ_BLOCK_MS, int(wait_s * 1000)))


def _several(seen: dict[str, float], now: float) -> bool:
    """Whether entries of more than one tenant were read in the last MIXED_S (forgetting older ones)."""
    for tenant in [t for t, at in seen.items() if now - at > MIXED_S]:
        del seen[tenant]
    return len(seen) > 1


def _tenant_share(d: Delivery) -> tuple[str, float]:
    """A delivery's tenant and weight, by which the batcher takes a tier's entries in turn."""
    return d.envelope.tenant, d.envelope.weight or 1.0


def claim_idle_ms(settings: Settings, pool_name: str) -> int:
    """How long an entry must sit unacknowledged before a dead worker's entry may be reclaimed:
    a multiple of the longest full batch (tokens included) of any pool reading the same streams,
    never below `claim_idle_min_ms`. Heartbeats, not this bound, protect slow live workers."""
    pool = settings.pools[pool_name]
    delivery = settings.delivery
    longest_ms = 0.0
    for other in settings.pools.values():
        if other.region != pool.region or not set(other.tiers) & set(pool.tiers):
            continue
        latency = settings.processors[other.processor].latency
        batch_ms = expected_batch_ms(latency, other.max_batch) + latency.per_token_ms * delivery.claim_token_budget
        longest_ms = max(longest_ms, batch_ms + other.max_wait_ms)
    return int(max(delivery.claim_idle_min_ms, delivery.claim_service_multiple * longest_ms))


class WorkerProcess:
    def __init__(
        self, settings: Settings, pool_name: str, redis_url: str, ready: Callable[..., None] | None = None
    ) -> None:
        pool = settings.pools[pool_name]
        self._ready = ready
        self.pool_name = pool_name
        self.name = f"{pool_name}-{socket.gethostname()}-{os.getpid()}"
        self.settings = settings
        self.redis_url = redis_url
        # Both made once Redis answers (`_until_connected`): whether it is a cluster is asked then.
        self.redis: redis_client.Client
        self.consumer: Consumer
        self.clock = RedisClock()
        self.backend = make_backend(settings, pool_name)
        # Asked once: isinstance against a runtime-checkable Protocol is slow, and a batch needs it.
        self.model_clock = self.backend if isinstance(self.backend, ModelClock) else None
        self.cancelled = CancelledIds()
        self.executor = Executor(
            settings,
            pool_name,
            self.name,
            self.backend,
            self.clock,
            publish_chunks=self._publish_chunks,
            cancelled=self.cancelled,
            tracing=start_tracing(settings.tracing, "worker", {"service.instance.id": self.name}),
        )
        self.batcher: Batcher[Delivery] = Batcher(
            pool.max_batch,
            pool.max_wait_ms / 1000.0,
            priorities=len(pool.tiers),
            min_share=pool.min_share,
            share=_tenant_share,
        )
        self.priority = stream_priorities(settings, pool_name)  # stream -> its tier's rank, strictest first
        self.holds = Holds(placement.holds(settings, pool_name))  # streams where a preferred pool goes first
        self.tier_count = len(pool.tiers)
        latency = settings.processors[pool.processor].latency
        self.refill_ms = int(min(READ_BLOCK_MS, max(1.0, expected_batch_ms(latency, pool.max_batch))))
        self.capacity = CapacityMeter(latency, pool.max_batch, len(pool.tiers), pool.min_share)
        self.stopping = asyncio.Event()
        self.batch_done = asyncio.Event()
        self.claim_interval_s = settings.delivery.claim_interval_s
        self.claim_idle_ms = claim_idle_ms(settings, pool_name)
        self.metrics = WorkerMetrics(settings, pool_name)
        self.metrics.track_in_flight(lambda: len(self.batcher) + self.metrics.running)
        self.tenants_seen: dict[str, dict[str, float]] = {}  # stream -> tenant -> when last read (loop time)

    async def run(self) -> None:
        if not await self._until_connected():
            return
        metrics_url = self.metrics.serve()
        log.info(
            "worker ready",
            extra={
                "pool": self.pool_name,
                "worker": self.name,
                "streams": self.consumer.streams,
                "metrics": metrics_url,
            },
        )
        if self._ready is not None:
            self._ready(pool=self.pool_name, worker=self.name, metrics_url=metrics_url)
        freeze_startup_heap()
        tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self.consumer.listen_cancels(self._cancelled, self.stopping)),
            asyncio.create_task(keep_synced(self.clock, self.redis, self.stopping, CLOCK_SYNC_S)),
            asyncio.create_task(self._reclaim_loop()),
            asyncio.create_task(every(protocol.HEARTBEAT_S, self.stopping, self._heartbeat)),
            asyncio.create_task(every(FORGET_EVERY_S, self.stopping, self._forget_dead)),
        ]
        try:
            await self._execute_loop()
        finally:
            self.stopping.set()
            await join(tasks, timeout_s=READ_BLOCK_MS / 1000 + 1)
            with contextlib.suppress(RedisError, OSError):
                await self.consumer.retire()
            await self.backend.close()
            await self.redis.aclose()
            if self.executor.tracing is not None:
                await asyncio.to_thread(self.executor.tracing.close)
            await asyncio.to_thread(self.metrics.close)
            log.info("worker stopped", extra={"pool": self.pool_name, "worker": self.name})

    def stop(self) -> None:
        self.stopping.set()

    async def _until_connected(self) -> bool:
        """Connect (retrying with backoff while Redis is unreachable) and create the consumer
        groups; False when stopped first. Refused credentials or TLS raise `RedisAccessError`."""
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                redis = await redis_client.connect(self.settings.redis, self.redis_url)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis unreachable, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            self.redis = redis
            self.consumer = Consumer(redis, self.settings, self.pool_name, self.name)
            try:
                await self.clock.sync(self.redis)
                await self.consumer.setup()
                return True
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await redis.aclose()
                access = redis_client.access_error(exc, self.redis_url)
                if access is not None:
                    raise access from exc
                log.warning("redis unreachable, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
        return False

    async def _read_loop(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        drained = False  # the last read took fewer entries than it asked for: its streams were empty
        while not self.stopping.is_set():
            await self.batcher.wait_for_room()
            rooms = self._rooms()
            open_streams = [stream for stream, room in rooms.items() if room > 0]
            every_stream = len(open_streams) == len(self.priority)
            ahead = not every_stream and any(self.priority[s] < self.tier_count - 1 for s in open_streams)
            plan = self.holds.plan(open_streams, loop.time())
            if not plan.streams:  # nothing open, or only streams a preferred pool may take first
                await self._batch_ends(plan.wait_s)
                continue
            try:
                # Reading only some streams, never block: the others must be read again as soon
                # as the batch running now ends; nor while a held stream is read (workers.placement).
                # Reading a stricter tier ahead (`_rooms`), block for about the batch running now.
                block_ms = _block_ms(plan.wait_s) if every_stream and plan.may_block else None
                if ahead and plan.may_block:
                    block_ms = min(self.refill_ms, _block_ms(plan.wait_s))
                if drained and block_ms is None and self._busy():
                    # Streams just found empty while a batch runs: an instant read now would bring
                    # back at most what arrived since, and cost a round trip for every batch. The
                    # batch's end reads that with whatever else arrives meanwhile, in one read.
                    drained = False
                    await self._batch_ends(plan.wait_s)
                    continue
                count = max(rooms.values())
                deliveries = await self.consumer.read(count, block_ms, plan.streams)
                drained = len(deliveries) < count
                backoff = 0.1
            except RedisError as exc:
                log.warning("read failed, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            self.holds.read(plan.streams, {d.stream for d in deliveries}, loop.time())
            await self._admit(deliveries)
            if deliveries:
                # An idle executor runs them, and its publish writes their replies, before this loop
                # plans its next read: a pass for the batch, and one for the publish's first step.
                for _ in range(2):
                    await asyncio.sleep(0)
            if not deliveries and not every_stream and block_ms is None:
                await self._batch_ends(plan.wait_s)
        with contextlib.suppress(RedisError, OSError):  # unread: reclaimed once this worker is gone
            await self._admit(await self.consumer.drain())  # reads still in flight (a cluster's)
        self.batcher.close()

    async def _batch_ends(self, wait_s: float | None = None) -> None:
        """Wait until the batch running now ends (at most one batch's expected time, and at most
        `wait_s`, when a held stream is due to be read then)."""
        self.batch_done.clear()
        limit_s = self.refill_ms / 1000.0 if wait_s is None else min(wait_s, self.refill_ms / 1000.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):  # no task of its own, as `wait_for` would start
                await self.batch_done.wait()

    def _rooms(self) -> dict[str, int]:
        """How many entries to read from each stream now. A pool that serves several tiers reads
        a stricter tier's stream only while it is idle: an entry it took while running a batch
        would wait for that batch to end, when a pool of that tier that is free could start it at
        once. While busy it reads ahead only its lowest tier, where throughput is what counts, and
        a stricter tier whose entries came from several tenants in the last `MIXED_S`: there the
        batcher takes them tenant by tenant, which it can only do with the entries it holds."""
        rooms = {stream: self.batcher.room_for(rank) for stream, rank in self.priority.items()}
        lowest = self.tier_count - 1
        if self._busy() and lowest > 0:
            now = asyncio.get_running_loop().time()
            ahead = {stream for stream, seen in self.tenants_seen.items() if _several(seen, now)}
            rooms = {s: room if self.priority[s] == lowest or s in ahead else 0 for s, room in rooms.items()}
        return rooms

    def _busy(self) -> bool:
        """A batch runs, or waits in the batcher to run."""
        return self.metrics.running > 0 or len(self.batcher) > 0

    async def _admit(self, deliveries: list[Delivery]) -> None:
        """Queue deliveries by tier, each to start while its deadline can still be met: with
        twice its expected service time (and a little more) still left, since batches run long.
        Those that can no longer make it are answered at once, unrun: dead work never takes a
        processor's slot in a batch."""
        now = asyncio.get_running_loop().time()
        now_ms = self.clock.now_ms()
        doomed = []
        for d in deliveries:
            if self.priority[d.stream] < self.tier_count - 1:  # a stricter tier: may be read ahead
                self.tenants_seen.setdefault(d.stream, {})[d.envelope.tenant] = now
            expected_ms = self.executor.expected_ms(d.envelope)
            if d.envelope.deadline_at_ms - now_ms < expected_ms:
                doomed.append(d)
                continue
            slack_s = (d.envelope.deadline_at_ms - now_ms - 2 * expected_ms - START_MARGIN_MS) / 1000.0
            self.batcher.put(d, self.priority[d.stream], start_by=now + slack_s)
        if doomed:
            replies = self.executor.refuse(doomed)
            self.metrics.observe(replies)
            await self._publish(replies)

    async def _execute_loop(self) -> None:
        """Run batch after batch. A batch's replies are published while the next one runs (one
        publish in flight at a time), so a worker's pace is its processor's, not that plus a
        Redis round trip; every publish is done before this returns."""
        loop = asyncio.get_running_loop()
        publishing: asyncio.Task[None] | None = None
        try:
            while batch := await self.batcher.next_batch():
                started = loop.time()
                self.metrics.running = len(batch)
                replies = await self.executor.execute(batch)
                self.metrics.running = 0
                if publishing is not None:
                    await publishing
                # Busy until the last batch's replies are out: a publish that lags slows the pool.
                self.capacity.record(loop.time(), self._ran(replies), loop.time() - started)
                publishing = loop.create_task(self._publish(replies))
                await asyncio.sleep(0)  # the replies are written first: the next read and the metrics wait
                self.batch_done.set()
                self.metrics.observe(replies)
                if self.model_clock is not None:
                    self.metrics.observe_model(self.model_clock.model_seconds())
                for _ in range(redis_client.WRITE_PASSES - 1):  # it writes its pipeline now, before the next batch runs
                    await asyncio.sleep(0)
        finally:
            if publishing is not None:
                await publishing

    def _ran(self, replies: list[tuple[Delivery, Reply]]) -> list[int]:
        """Requests of each priority that ran on the processor (not those answered unrun)."""
        ran = [0] * self.tier_count
        for d, reply in replies:
            if isinstance(reply, Result):
                ran[self.priority[d.stream]] += 1
        return ran

    def _cancelled(self, notice: protocol.Cancel) -> None:
        """A gateway cancelled a request: answer it without running it if it comes (or waits) here."""
        self.cancelled.add(notice.id, notice.deadline_at_ms, self.clock.now_ms())

    async def _heartbeat(self) -> None:
        """One heartbeat per stream: each tier is told the capacity this worker has for it."""
        snapshot = self.capacity.snapshot(asyncio.get_running_loop().time())
        at_ms = int(self.clock.now_ms())
        beats = [
            protocol.Heartbeat(
                worker=self.name,
                pool=self.pool_name,
                at_ms=at_ms,
                capacity_per_s=round(snapshot.per_s[rank], 3),
                service_ms=round(snapshot.service_ms, 3),
            )
            for rank in self.priority.values()
        ]
        await self.consumer.heartbeat(beats)

    async def _forget_dead(self) -> None:
        await self.consumer.forget_dead(int(self.clock.now_ms()), GONE_MS)

    async def _reclaim_loop(self) -> None:
        """Take over the pending entries of workers that stopped heartbeating, and dead-letter
        those delivered too often. After an outage it waits until live workers can have
        heartbeated again, so it never takes a live worker's entries for a dead one's."""
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + protocol.HEARTBEAT_S
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.claim_interval_s)
            room = self.batcher.room
            if self.stopping.is_set() or room == 0 or loop.time() < quiet_until:
                continue
            try:
                deliveries = await self.consumer.reclaim(self.claim_idle_ms, room, int(self.clock.now_ms()))
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without its data: streams and groups again
                    log.warning("consumer groups missing, creating them again", extra={"error": str(exc)})
                    with contextlib.suppress(RedisError, OSError):
                        await self.consumer.setup()
                continue
            except (RedisError, OSError) as exc:
                log.warning("reclaim failed, retrying", extra={"error": str(exc)})
                quiet_until = loop.time() + protocol.HEARTBEAT_STALE_MS / 1000.0
                continue
            await self._admit(deliveries)

    async def _publish_chunks(self, chunks: list[tuple[Delivery, protocol.Chunk]]) -> None:
        await self.consumer.publish_chunks(chunks)

    async def _publish(self, replies: list[tuple[Delivery, Reply]]) -> None:
        backoff = 0.1
        while True:
            try:
                await self.consumer.publish(replies)
                return
            except RedisError as exc:
                # Entries stay pending until published: retry rather than lose the answers.
                log.warning("publish failed, retrying", extra={"error": str(exc), "retry_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)


async def serve(settings: Settings, pool_name: str, redis_url: str, ready: Callable[..., None] | None = None) -> None:
    worker = WorkerProcess(settings, pool_name, redis_url, ready)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
