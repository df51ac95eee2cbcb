"""A worker process's Prometheus metrics, served on its own port by prometheus-client's HTTP
server (`[metrics].worker_port`, 0 for a free one; the real URL goes into the ready line).
Label children are bound once per tier at start; a batch costs a few increments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from core.buckets import BATCH_SIZE_BUCKETS, latency_buckets_s
from core.errors import CANCELLED, DEADLINE_EXCEEDED, MODEL_NOT_FOUND, WORKER_ERROR
from core.metrics_http import MetricsEndpoint
from core.protocol import Failure, Reply, Result
from core.settings import Settings


@dataclass(slots=True)
class _Tier:
    ok: Any
    queue_wait: Any
    energy: Any
    cost: Any


class WorkerMetrics:
    def __init__(self, settings: Settings, pool_name: str) -> None:
        pool = settings.pools[pool_name]
        self.settings = settings
        self.labels = (pool_name, pool.processor)
        self.registry = r = CollectorRegistry()
        buckets = latency_buckets_s(t.slo.latency_ms for t in settings.tiers.values())
        pool_labels = ("pool", "processor")
        tier_labels = ("pool", "processor", "tier")
        self.batches = Counter("tiergate_worker_batches", "Batches run", pool_labels, registry=r).labels(*self.labels)
        self.batch_size = Histogram(
            "tiergate_worker_batch_size", "Requests per batch run", pool_labels,
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        ).labels(*self.labels)  # fmt: skip
        self.service = Histogram(
            "tiergate_worker_service_seconds", "Service time of one batch", pool_labels, buckets=buckets, registry=r
        ).labels(*self.labels)
        self.busy = Counter(
            "tiergate_worker_busy_seconds", "Time spent running batches (utilisation = its rate)", pool_labels,
            registry=r,
        ).labels(*self.labels)  # fmt: skip
        self.in_flight = Gauge(
            "tiergate_worker_in_flight_requests", "Requests read and not yet answered", pool_labels, registry=r
        ).labels(*self.labels)
        self.requests = Counter(
            "tiergate_worker_requests", "Requests answered by outcome", [*tier_labels, "outcome"], registry=r
        )
        queue_wait = Histogram(
            "tiergate_worker_queue_wait_seconds", "Time from enqueue to batch start", tier_labels,
            buckets=buckets, registry=r,
        )  # fmt: skip
        energy = Counter("tiergate_worker_energy_joules", "Energy spent", tier_labels, registry=r)
        cost = Counter("tiergate_worker_cost_usd", "Cost of the work done", tier_labels, registry=r)
        self._tiers = {
            tier: _Tier(
                ok=self.requests.labels(*self.labels, tier, "ok"),
                queue_wait=queue_wait.labels(*self.labels, tier),
                energy=energy.labels(*self.labels, tier),
                cost=cost.labels(*self.labels, tier),
            )
            for tier in pool.tiers
        }
        self._model_metrics(pool_labels)
        self._endpoint = MetricsEndpoint(self.registry)
        self.url = ""
        self.running = 0  # requests of the batch being executed

    def _model_metrics(self, pool_labels: tuple[str, ...]) -> None:
        """A model run in this process (backend local): its forward passes, against the process's
        own CPU time (process_cpu_seconds_total), which also holds everything else a worker does."""
        r = self.registry
        self.model = Counter(
            "tiergate_worker_model_seconds", "Wall time of the forward passes of a model run in this process",
            pool_labels, registry=r,
        ).labels(*self.labels)  # fmt: skip
        self.model_cpu = Counter(
            "tiergate_worker_model_cpu_seconds", "CPU time of the thread that runs those forward passes",
            pool_labels, registry=r,
        ).labels(*self.labels)  # fmt: skip
        self._model_seen = (0.0, 0.0)
        ProcessCollector(registry=r)

    def serve(self) -> str:
        """Start the /metrics HTTP server; returns its URL (with the real port)."""
        self.url = self._endpoint.serve(self.settings.metrics.worker_host, self.settings.metrics.worker_port)
        return self.url

    def close(self) -> None:
        self._endpoint.close()

    def track_in_flight(self, count: Callable[[], float]) -> None:
        self.in_flight.set_function(count)

    def observe_model(self, spent: tuple[float, float]) -> None:
        """A `ModelClock`'s totals after a batch: wall and CPU seconds of its forward passes."""
        self.model.inc(max(0.0, spent[0] - self._model_seen[0]))
        self.model_cpu.inc(max(0.0, spent[1] - self._model_seen[1]))
        self._model_seen = spent

    def observe(self, replies: Sequence[tuple[object, Reply]]) -> None:
        """Replies of one executed batch (its Results share the batch's size and service time),
        or of requests answered unrun."""
        ran = next((reply for _, reply in replies if isinstance(reply, Result)), None)
        if ran is not None:
            self.batches.inc()
            self.batch_size.observe(ran.batch_size)
            self.service.observe(ran.service_ms / 1000.0)
            self.busy.inc(ran.service_ms / 1000.0)
        done: dict[str, list[float]] = {}  # tier -> [results, joules, dollars]: one increment each a batch
        for _, reply in replies:
            if isinstance(reply, Result):
                tier = self._tiers.get(reply.tier)
                if tier is not None:
                    tier.queue_wait.observe(reply.queue_ms / 1000.0)
                    sums = done.setdefault(reply.tier, [0.0, 0.0, 0.0])
                    sums[0] += 1
                    sums[1] += reply.energy_j
                    sums[2] += reply.cost
            elif isinstance(reply, Failure):
                self.requests.labels(*self.labels, reply.tier, _outcome(reply.code)).inc()
        for name, (results, joules, dollars) in done.items():
            tier = self._tiers[name]
            tier.ok.inc(results)
            tier.energy.inc(joules)
            tier.cost.inc(dollars)


_OUTCOME_CODES = frozenset((DEADLINE_EXCEEDED, MODEL_NOT_FOUND, WORKER_ERROR, CANCELLED))  # an outcome label each


def _outcome(code: str) -> str:
    return code if code in _OUTCOME_CODES else "error"
