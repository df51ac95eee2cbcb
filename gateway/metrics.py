"""The gateway's Prometheus metrics and per-request hooks: one registry per application, label
children bound once per (tier, pool) at start so a request costs a few dict lookups and
increments. Background tasks (in `cleanup_ctx`) sample queue depth and flush SLO counts to Redis.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import RedisError

from core import protocol
from core.background import every, join
from core.buckets import latency_buckets_s
from core.errors import CANCELLED, DEADLINE_EXCEEDED, INVALID_REQUEST, MODEL_NOT_FOUND, WORKER_ERROR
from core.loop_metrics import CounterValue, GaugeValue, HistogramValue, LoopCounter, LoopGauge, LoopHistogram
from core.settings import Settings

from . import slo
from .batch_metrics import BatchMetrics
from .batch_pace import RecentLatencies
from .slo_store import SloStore, UsageStore
from .state import STATE
from .usage import UsageCounts

log = logging.getLogger(__name__)

TIER_LABELS = ("tier", "pool", "processor")
QUEUE_LABELS = ("tier", "region", "pools")
USAGE_LABELS = ("tenant", "tier", "model")  # tenant: one of `[usage] tenants`, "" (open), else OTHER_TENANT
OTHER_TENANT = "other"  # one request stream: its tier, region and the pools reading it
UNKNOWN_POOL = "none"  # a request refused or timed out before any pool answered it
# A cancelled request is counted, but is neither good nor bad for the SLO.
OUTCOMES = ("ok", "shed", DEADLINE_EXCEEDED, INVALID_REQUEST, MODEL_NOT_FOUND, WORKER_ERROR, CANCELLED)


@dataclass(slots=True)
class _Bound:
    """The label children of one (tier, pool), bound once."""

    processor: str
    ok: CounterValue
    duration: HistogramValue
    queue_wait: HistogramValue
    service: HistogramValue
    ttft: HistogramValue
    slo_met: CounterValue
    slo_missed: CounterValue
    energy: CounterValue
    cost: CounterValue

    def answered(
        self, total_ms: float, queue_ms: float, service_ms: float, met: bool, energy_j: float, cost: float
    ) -> None:
        """One answer's updates, made here in one call rather than a method call each: the request
        path makes them on every answer."""
        if energy_j < 0 or cost < 0:
            raise ValueError(f"a counter only goes up: energy {energy_j}, cost {cost}")
        self.ok.value += 1
        for histogram, seconds in (
            (self.duration, total_ms / 1000.0),
            (self.queue_wait, queue_ms / 1000.0),
            (self.service, service_ms / 1000.0),
        ):
            histogram.counts[bisect.bisect_left(histogram.bounds, seconds)] += 1  # `le`: the first bound >= it
            histogram.sum += seconds
        (self.slo_met if met else self.slo_missed).value += 1
        self.energy.value += energy_j
        self.cost.value += cost


class GatewayMetrics:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = r = CollectorRegistry()
        buckets = latency_buckets_s(t.slo.latency_ms for t in settings.tiers.values())
        self.requests = LoopCounter("tiergate_requests", "Requests by outcome", [*TIER_LABELS, "outcome"], registry=r)
        self.duration = LoopHistogram(
            "tiergate_request_duration_seconds", "End-to-end latency at the gateway", TIER_LABELS, buckets=buckets,
            registry=r,
        )  # fmt: skip
        self.queue_wait = LoopHistogram(
            "tiergate_queue_wait_seconds", "Time queued before a worker started", TIER_LABELS, buckets=buckets,
            registry=r,
        )  # fmt: skip
        self.service = LoopHistogram(
            "tiergate_service_seconds", "Processor service time of the request's batch", TIER_LABELS,
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.ttft = LoopHistogram(
            "tiergate_time_to_first_token_seconds", "Time to the first streamed chunk", TIER_LABELS,
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.slo_met = LoopCounter(
            "tiergate_slo_met", "Requests answered within the tier objective", TIER_LABELS, registry=r
        )
        self.slo_missed = LoopCounter(
            "tiergate_slo_missed", "Requests that missed the tier objective", TIER_LABELS, registry=r
        )
        self.shed = LoopCounter(
            "tiergate_shed", "Requests refused because the tier queue was full", ["tier"], registry=r
        )
        self.deadline_exceeded = LoopCounter(
            "tiergate_deadline_exceeded", "Requests that reached their deadline", ["tier", "pool"], registry=r
        )
        self.energy = LoopCounter(
            "tiergate_energy_joules", "Energy spent on answered requests", TIER_LABELS, registry=r
        )
        self.cost = LoopCounter("tiergate_cost_usd", "Cost of answered requests", TIER_LABELS, registry=r)
        self.in_flight = LoopGauge("tiergate_in_flight_requests", "Requests waiting for a reply", ["tier"], registry=r)
        self.queue_depth, self.group_lag, self.group_pending = _queue_gauges(r)
        self.queues: dict[str, dict[str, int]] = {}  # tier -> last sampled depth, lag, pending (all regions)
        # Every request stream of the config, whichever tiers this gateway serves: (tier, region, pools).
        self.queue_streams = {lane.stream: (lane.tier, lane.region, "+".join(lane.pools)) for lane in settings.lanes()}
        self.accumulator, self.batch = slo.Accumulator(), BatchMetrics(r)
        self.usage = _TenantUsage(r, settings.usage.tenants)
        self.recent = RecentLatencies()  # the tiers a batch runner's pace watches (none until one does)
        self.clock_ms: Callable[[], float] = _local_ms  # replaced by the gateway's Redis clock at start
        self._bound = {
            (tier, pool): self._bind(tier, pool, p.processor) for pool, p in settings.pools.items() for tier in p.tiers
        }
        self._in_flight: dict[str, GaugeValue] = {tier: self.in_flight.labels(tier) for tier in settings.tiers}
        self._failures: dict[tuple[str, str, str], CounterValue] = {}

    def _bind(self, tier: str, pool: str, processor: str) -> _Bound:
        labels = (tier, pool, processor)
        return _Bound(
            processor=processor,
            ok=self.requests.labels(*labels, "ok"),
            duration=self.duration.labels(*labels),
            queue_wait=self.queue_wait.labels(*labels),
            service=self.service.labels(*labels),
            ttft=self.ttft.labels(*labels),
            slo_met=self.slo_met.labels(*labels),
            slo_missed=self.slo_missed.labels(*labels),
            energy=self.energy.labels(*labels),
            cost=self.cost.labels(*labels),
        )

    # ------------------------------------------------------------ per-request hooks

    def begin(self, tier: str) -> None:
        self._in_flight[tier].value += 1

    def abandon(self, tier: str) -> None:
        """The client went away (or the gateway stopped) before an outcome, and the request runs."""
        self._in_flight[tier].dec()

    def cancelled(self, tier: str) -> None:
        """The client went away before an outcome, and its request was cancelled."""
        self._in_flight[tier].dec()
        self._failure(tier, CANCELLED, "")

    def done(self, result: protocol.Result, total_ms: float) -> None:
        """A result was returned to the client after `total_ms` (the figure the client sees)."""
        self._in_flight[result.tier].value -= 1
        self._answered(result, total_ms)

    def async_reply(self, reply: protocol.Reply, tier: str) -> None:
        """The reply of a request accepted with `wait: false`: end to end on Redis's clock."""
        if isinstance(reply, protocol.Result):
            self._answered(reply, reply.finished_at_ms - reply.enqueued_at_ms)
        else:
            self._failure(tier, reply.code, reply.pool)

    def async_expired(self, tier: str) -> None:
        """An async request with no reply by its deadline and grace: counted as the gateway's 504."""
        self._failure(tier, DEADLINE_EXCEEDED, "")

    def _answered(self, result: protocol.Result, total_ms: float) -> None:
        bound = self._bound.get((result.tier, result.pool))
        if bound is None:  # a pool this gateway's config does not know: bind it now
            bound = self._bound[(result.tier, result.pool)] = self._bind(result.tier, result.pool, result.processor)
        met = total_ms <= self.settings.tiers[result.tier].slo.latency_ms
        bound.answered(total_ms, result.queue_ms, result.service_ms, met, result.energy_j, result.cost)
        epoch_s = int(self.clock_ms() // 1000)
        self.accumulator.result(
            epoch_s, result.tier, result.processor, total_ms, met,
            result.service_ms, result.batch_size, result.energy_j, result.cost,
        )  # fmt: skip
        self.usage.count(epoch_s, result)  # per tenant: in Redis, and with bounded labels here
        if result.tier in self.recent.latencies_ms:  # a tier a batch runner's pace watches
            self.recent.add(result.tier, total_ms)

    def first_token(self, tier: str, pool: str, seconds: float) -> None:
        bound = self._bound.get((tier, pool))
        if bound is not None:
            bound.ttft.observe(seconds)

    def failed(self, tier: str, code: str, pool: str = "") -> None:
        """A request that began ended with an error `code` (a worker's, or the gateway's)."""
        self._in_flight[tier].dec()
        self._failure(tier, code, pool)

    def refused(self, tier: str, offered_again: bool = False) -> None:
        """Shed at admission: the tier's queue was full (or the key over a limit). A batch line
        `offered_again` later is not lost: it is counted deferred, outside the SLO, until it
        reaches its one outcome."""
        if offered_again:
            self.batch.deferred()
            return
        self.shed.labels(tier).inc()
        self._failure(tier, "shed", "")

    def _failure(self, tier: str, code: str, pool: str) -> None:
        pool = pool or UNKNOWN_POOL
        outcome = code if code in OUTCOMES else "error"
        key = (tier, pool, outcome)
        child = self._failures.get(key)
        if child is None:
            pools = self.settings.pools
            processor = pools[pool].processor if pool in pools else slo.NO_PROCESSOR
            child = self._failures[key] = self.requests.labels(tier, pool, processor, outcome)
        child.inc()
        if outcome == DEADLINE_EXCEEDED:
            self.deadline_exceeded.labels(tier, pool).inc()
        elif outcome == CANCELLED:
            return  # the client's choice: not in the SLO windows
        processor = self.settings.pools[pool].processor if pool in self.settings.pools else slo.NO_PROCESSOR
        self.accumulator.failure(int(self.clock_ms() // 1000), tier, processor)

    def observe_queues(self, lengths: dict[str, float], groups: dict[str, tuple[int, int]]) -> None:
        """Queue depth (as admission keeps it), group lag and pending of every tier stream."""
        queues: dict[str, dict[str, int]] = {}
        for stream, (lag, pending) in groups.items():
            labels = self.queue_streams[stream]
            depth = round(lengths.get(stream, 0))
            self.queue_depth.labels(*labels).set(depth)
            self.group_lag.labels(*labels).set(lag)
            self.group_pending.labels(*labels).set(pending)
            totals = queues.setdefault(labels[0], {"depth": 0, "lag": 0, "pending": 0})
            totals["depth"] += depth
            totals["lag"] += lag
            totals["pending"] += pending
        self.queues = queues


def _queue_gauges(r: CollectorRegistry) -> tuple[Gauge, Gauge, Gauge]:
    """Depth, group lag and pending entries of each request stream."""
    return (
        Gauge("tiergate_queue_depth", "Entries in the request stream", QUEUE_LABELS, registry=r),
        Gauge("tiergate_consumer_group_lag", "Entries not yet delivered to any worker", QUEUE_LABELS, registry=r),
        Gauge("tiergate_consumer_group_pending", "Entries delivered, not yet acknowledged", QUEUE_LABELS, registry=r),
    )


class _TenantUsage:
    """Usage counters labelled by tenant, tier and model. Only configured tenants (and an open
    gateway's "") get a label of their own, the rest share OTHER_TENANT: the label set stays bounded."""

    def __init__(self, registry: CollectorRegistry, tenants: list[str]) -> None:
        r = registry
        self.tenants = frozenset(tenants) | {""}
        self.requests = LoopCounter("tiergate_tenant_requests", "Answered requests", USAGE_LABELS, registry=r)
        self.tokens = LoopCounter("tiergate_tenant_tokens", "Tokens of answered requests", USAGE_LABELS, registry=r)
        self.energy = LoopCounter(
            "tiergate_tenant_energy_joules", "Energy of answered requests", USAGE_LABELS, registry=r
        )
        self.cost = LoopCounter("tiergate_tenant_cost_usd", "Cost of answered requests", USAGE_LABELS, registry=r)
        self._bound: dict[tuple[str, str, str], tuple[CounterValue, CounterValue, CounterValue, CounterValue]] = {}
        self.counts = UsageCounts()  # since the last flush to Redis

    def count(self, epoch_s: int, result: protocol.Result) -> None:
        """Usage of an answered request: counted for Redis (per hour), and in the counters."""
        tokens = result.prompt_tokens + result.completion_tokens
        self.counts.add(epoch_s, (result.tenant, result.tier, result.model), tokens, result.energy_j, result.cost)
        labels = (result.tenant if result.tenant in self.tenants else OTHER_TENANT, result.tier, result.model)
        bound = self._bound.get(labels)
        if bound is None:
            bound = self._bound[labels] = (
                self.requests.labels(*labels), self.tokens.labels(*labels),
                self.energy.labels(*labels), self.cost.labels(*labels),
            )  # fmt: skip
        if tokens < 0 or result.energy_j < 0 or result.cost < 0:
            raise ValueError(f"a counter only goes up: tokens {tokens}, energy {result.energy_j}, cost {result.cost}")
        bound[0].value += 1  # the counters' fields, not their inc(): this runs on every answer
        bound[1].value += tokens
        bound[2].value += result.energy_j
        bound[3].value += result.cost


def _local_ms() -> float:
    return time.time() * 1000.0


METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
SLO_STORE: web.AppKey[SloStore] = web.AppKey("slo_store", SloStore)
USAGE_STORE: web.AppKey[UsageStore] = web.AppKey("usage_store", UsageStore)


def install(app: web.Application, settings: Settings) -> None:
    """Create the metrics of `app` and their background tasks (after the gateway's own context)."""
    app[METRICS] = GatewayMetrics(settings)
    app.cleanup_ctx.append(_background)


async def _background(app: web.Application) -> AsyncIterator[None]:
    state, metrics = app[STATE], app[METRICS]
    metrics.clock_ms = state.clock.now_ms
    settle_s = 2 * metrics.settings.metrics.slo_flush_interval_s + 3.0  # a flush may be one interval late
    store = app[SLO_STORE] = SloStore(state.redis, state.gateway_id, settle_s)
    retention = metrics.settings.usage
    usage = app[USAGE_STORE] = UsageStore(state.redis, retention.hourly_retention_h, retention.daily_retention_d)
    flush = _flusher(metrics, store, usage)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(every(metrics.settings.metrics.slo_flush_interval_s, stop, flush))]
    yield
    stop.set()
    await join(tasks, timeout_s=2.0)
    with contextlib.suppress(RedisError, OSError):
        await flush()


def _flusher(metrics: GatewayMetrics, store: SloStore, usage: UsageStore) -> Callable[[], Awaitable[None]]:
    async def flush() -> None:
        await store.flush(metrics.accumulator)
        await usage.flush(metrics.usage.counts)

    return flush
