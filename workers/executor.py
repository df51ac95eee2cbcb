"""Turns one batch of deliveries into one reply each: refuses what it cannot or need not run
(cancelled, expired deadline, a model this pool does not serve), runs the rest on the backend in one call,
and stamps timings, energy and cost; with tracing on, records each request's queue wait and
execution (core/tracing.py). No Redis I/O: the consumer publishes what this returns.
"""

from __future__ import annotations

import logging
import time

from core.clock import RedisClock, round_ms
from core.errors import CANCELLED, DEADLINE_EXCEEDED, MODEL_NOT_FOUND, PLACEMENT_REFUSED, WORKER_ERROR
from core.logs import info_line
from core.protocol import Envelope, Failure, Reply, Result
from core.settings import Settings, clears
from core.tracing import Tracing

from .backends import Backend, Completion
from .cancels import CancelledIds
from .capacity import request_ms
from .consumer import Delivery
from .streaming import ChunkPublisher, ChunkStream

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self,
        settings: Settings,
        pool_name: str,
        worker: str,
        backend: Backend,
        clock: RedisClock,
        publish_chunks: ChunkPublisher | None = None,
        cancelled: CancelledIds | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        pool = settings.pools[pool_name]
        self.tracing = tracing  # None: tracing is off
        self.cancelled = cancelled if cancelled is not None else CancelledIds()
        self.publish_chunks = publish_chunks
        self.pool_name = pool_name
        self.processor = pool.processor
        self.models = frozenset(pool.models)
        self.region, self.clearance = pool.region, pool.clearance
        self.worker = worker
        self.backend = backend
        self.clock = clock
        self.latency = settings.processors[pool.processor].latency
        self.generates = {name for name, model in settings.models.items() if model.kind == "echo"}

    def _failure(self, d: Delivery, code: str, message: str) -> Failure:
        env = d.envelope
        return Failure(
            id=env.id,
            code=code,
            message=message,
            tier=env.tier,
            pool=self.pool_name,
            worker=self.worker,
            enqueued_at_ms=d.enqueued_at_ms,
            finished_at_ms=int(self.clock.now_ms()),
        )

    def _refusal(self, d: Delivery, now_ms: float) -> Failure | None:
        """The failure to answer without running this request, if it must not run."""
        env = d.envelope
        if env.id in self.cancelled:
            message = f"request {env.id} was cancelled before pool {self.pool_name} started it"
            return self._failure(d, CANCELLED, message)
        if env.deadline_at_ms <= now_ms:
            late_ms = now_ms - env.deadline_at_ms
            message = f"request {env.id} reached its deadline {late_ms:.0f} ms before pool {self.pool_name} started it"
            return self._failure(d, DEADLINE_EXCEEDED, message)
        if env.model not in self.models:
            return self._failure(d, MODEL_NOT_FOUND, f"pool {self.pool_name} does not serve model {env.model!r}")
        if env.region != self.region or not clears(self.clearance, env.sensitivity):
            return self._failure(d, PLACEMENT_REFUSED, self._misplaced(env))
        need_ms = self.expected_ms(env)
        if env.deadline_at_ms - now_ms < need_ms:
            left_ms = env.deadline_at_ms - now_ms
            message = (
                f"request {env.id} cannot finish before its deadline: {left_ms:.0f} ms left, and pool "
                f"{self.pool_name} needs about {need_ms:.0f} ms to run it"
            )
            return self._failure(d, DEADLINE_EXCEEDED, message)
        return None

    def _misplaced(self, env: Envelope) -> str:
        """Why this pool refuses a request its region or clearance forbids (a config that differs
        between the gateway that queued it and this worker): it never runs here."""
        data_class = env.sensitivity or "public"
        return (
            f"pool {self.pool_name} (region {self.region!r}, cleared for {self.clearance}) may not run request "
            f"{env.id} of region {env.region!r} and data class {data_class}; check that the gateways and workers "
            "share one config"
        )

    def expected_ms(self, env: Envelope) -> float:
        """The processor profile's service time for this request alone, token generation included."""
        return request_ms(self.latency, env.model in self.generates, env.input, env.max_tokens)

    def _triage(self, batch: list[Delivery]) -> tuple[list[Delivery], list[tuple[Delivery, Reply]]]:
        """Split a batch into what runs now and the failures answered without running."""
        now_ms = self.clock.now_ms()
        self.cancelled.expire(now_ms)
        runnable: list[Delivery] = []
        refused: list[tuple[Delivery, Reply]] = []
        for d in batch:
            failure = self._refusal(d, now_ms)
            if failure is None:
                runnable.append(d)
            else:
                refused.append((d, failure))
        return runnable, refused

    def refuse(self, doomed: list[Delivery]) -> list[tuple[Delivery, Reply]]:
        """Answer, without running, deliveries that can no longer meet their deadline."""
        now_ms = self.clock.now_ms()
        return self._traced([(d, self._refusal(d, now_ms) or self._late(d, now_ms)) for d in doomed])

    def _traced(self, replies: list[tuple[Delivery, Reply]]) -> list[tuple[Delivery, Reply]]:
        """`replies`, their requests' spans recorded first when tracing is on."""
        if self.tracing is not None:
            done = [(d.envelope, d.sent_at_ms, reply) for d, reply in replies]
            self.tracing.worked(self.pool_name, self.worker, done, self.clock.now_ms())
        return replies

    def _late(self, d: Delivery, now_ms: float) -> Failure:
        left_ms = d.envelope.deadline_at_ms - now_ms
        message = f"request {d.envelope.id} cannot finish before its deadline: {left_ms:.0f} ms left"
        return self._failure(d, DEADLINE_EXCEEDED, message)

    async def execute(self, batch: list[Delivery]) -> list[tuple[Delivery, Reply]]:
        """One reply for each delivery of `batch`: run, or refused without running."""
        return self._traced(await self._execute(batch))

    async def _execute(self, batch: list[Delivery]) -> list[tuple[Delivery, Reply]]:
        runnable, replies = self._triage(batch)
        if not runnable:
            return replies
        started_ms = self.clock.now_ms()
        started_s = time.perf_counter()
        try:
            completions, ended_s = await self._run(runnable, started_ms, started_s)
        except Exception as exc:  # a backend failure fails its batch, never the worker
            log.exception("backend failed", extra={"pool": self.pool_name, "batch_size": len(runnable)})
            message = f"pool {self.pool_name} failed to run the request: {type(exc).__name__}: {exc}"
            return replies + [(d, self._failure(d, WORKER_ERROR, message)) for d in runnable]
        service_ms = (ended_s - started_s) * 1000.0
        finished_ms = int(self.clock.now_ms())
        for d, done in zip(runnable, completions, strict=True):
            reply = self._result(d, done, len(runnable), started_ms, service_ms, finished_ms)
            replies.append((d, reply))
        info_line(
            log,
            "batch done",
            {
                "pool": self.pool_name,
                "worker": self.worker,
                "batch_size": len(runnable),
                "service_ms": round_ms(service_ms),
                "request_ids": [d.envelope.id for d in runnable],
            },
        )
        return replies

    def _result(
        self, d: Delivery, done: Completion, size: int, started_ms: float, service_ms: float, finished_ms: int
    ) -> Reply:
        """The reply to one request of a batch that ran: its `Result`, or the failure the backend gave it."""
        if done.error:
            return self._failure(d, done.error_code, done.error)
        env = d.envelope
        return Result(
            id=env.id,
            model=env.model,
            output=done.output,
            tier=env.tier,
            processor=self.processor,
            pool=self.pool_name,
            worker=self.worker,
            batch_size=size,
            enqueued_at_ms=d.enqueued_at_ms,
            queue_ms=round_ms(max(0.0, started_ms - d.sent_at_ms)),
            service_ms=round_ms(service_ms),
            finished_at_ms=finished_ms,
            energy_j=done.energy_j,
            cost=done.cost,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            finish_reason=done.finish_reason if isinstance(done.output, str) else "",
            choices=done.choices,
            tenant=env.tenant,
        )

    async def _run(
        self, runnable: list[Delivery], started_ms: float, started_s: float
    ) -> tuple[list[Completion], float]:
        """Run the batch on the backend, streaming the output of requests that asked for it; the
        completions and the `perf_counter` instant the backend finished (before the last chunks
        are published, which is delivery, not service)."""
        envelopes = [d.envelope for d in runnable]
        if self.publish_chunks is None or not any(env.stream for env in envelopes):
            completions = await self.backend.run(envelopes, started_s=started_s)
            return completions, time.perf_counter()
        chunks = ChunkStream(runnable, self.publish_chunks, self.clock, self.pool_name, started_ms)
        try:
            completions = await self.backend.run(envelopes, chunks, started_s=started_s)
            return completions, time.perf_counter()
        finally:
            await chunks.close()  # every chunk is out before the Results follow
