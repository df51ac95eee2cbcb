"""The owner of a request from admission to outcome. A `Call` claims or replays its idempotency
key, registers its waiter, enqueues its envelope, counts it in flight, cancels it when its client
goes away, and ends in `Call.close`, which records its one outcome and log line (and, with
tracing on, ends its span); every API's handlers go through it. Its Redis I/O is `RequestQueue`'s
(enqueue, claim, cancel, stored).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web

from core import protocol
from core.clock import round_ms
from core.errors import DeadlineExceeded, QueueFull, RateLimited, RequestError, for_request, from_code
from core.logs import info_line
from core.protocol import OPEN_GRANT, Grant
from core.tracing import TRACEPARENT_HEADER, RequestSpan, Tracing

from .admission import Admission
from .auth import authorize
from .limits import Limits, has_limits
from .metrics import GatewayMetrics
from .queue import State
from .results import StreamEvent, Waiters
from .routing import Route
from .shares import Shares
from .state import GatewayState
from .tenant_store import Held, TenantStore

log = logging.getLogger(__name__)

REPLAY_POLL_S = 0.05
CLAIM_GRACE_S = 1  # an idempotency key held by a request never queued frees itself this long after its deadline
GONE = (asyncio.CancelledError, ConnectionResetError)  # what ends a call whose client went away


class Calls:
    """The request path of one gateway process: admission, envelopes, calls, and the outcomes of
    requests accepted with `wait: false`, which arrive (or fail to) after their call returned."""

    def __init__(
        self,
        state: GatewayState,
        metrics: GatewayMetrics,
        tracing: Tracing | None = None,
        tenants: TenantStore | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.tracing = tracing  # None: tracing is off (core/tracing.py)
        self.limits = Limits(state.clock, tenants)  # tenants None: no key has limits (a unit test's calls)
        self.shares = Shares(state.settings.auth.active_s)

    def admit(self, route: Route, model: str = "", grant: Grant = OPEN_GRANT, offered_again: bool = False) -> Admission:
        """Admission of a routed request: 403 for what its key does not allow (tier, model, region,
        data class), then its tenant's fair share of a busy tier (gateway/shares.py), then its
        tier's admission; a refusal (429) is counted shed (deferred: a batch line `offered_again`
        later is not lost), then raised."""
        authorize(grant, route.tier, model, route.region, route.sensitivity)
        try:
            if grant.tenant:  # only a tenant's requests are held to a share
                capacity = self.state.capacity.get(route.stream)
                self.shares.check(route.stream, route.tier, grant.tenant, grant.weight, capacity, _now_s())
            return self.state.admit(route)
        except QueueFull:
            self.metrics.refused(route.tier, offered_again)
            raise

    def envelope(
        self, route: Route, model: str, text: str, grant: Grant = OPEN_GRANT, **extra: Any
    ) -> protocol.Envelope:
        """A new request for `route`, addressed back to this gateway, its deadline from now,
        carrying who sent it (`grant`: tenant and key id) and its data class (the lowest: left out)."""
        now_ms = self.state.clock.now_ms()
        data_class = "" if route.sensitivity == protocol.SENSITIVITY_CLASSES[0] else route.sensitivity
        return protocol.Envelope(
            id=protocol.new_request_id(),
            model=model,
            input=text,
            tier=route.tier,
            region=route.region,
            reply_to=self.state.gateway_id,
            deadline_at_ms=int(now_ms) + route.deadline_ms,
            sent_at_ms=round_ms(now_ms),
            tenant=grant.tenant,
            key_id=grant.key_id,
            sensitivity=data_class,
            weight=grant.weight if grant.tenant and grant.weight != 1.0 else 0.0,
            **extra,
        )

    def call(
        self,
        route: Route,
        envelope: protocol.Envelope,
        started: float,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        grant: Grant = OPEN_GRANT,
    ) -> Call:
        """The call that will own `envelope`, sent with `grant`'s key (whose limits it is held
        to); `started` is `time.perf_counter()` at its arrival. With tracing on, it opens the
        request's span, continuing the trace of a `traceparent` among the request's `headers`,
        and the envelope carries the span's own."""
        if idempotency_key is not None and grant.tenant:  # one tenant's keys never replay another's
            idempotency_key = f"{grant.tenant}/{idempotency_key}"
        call = Call(self, route, envelope, started, idempotency_key, grant)
        if grant.tenant:
            self.shares.admitted(route.stream, grant.tenant, grant.weight, _now_s())
        if self.tracing is not None:
            parent = headers.get(TRACEPARENT_HEADER, "") if headers is not None else ""
            call._span, traceparent = self.tracing.request(parent, envelope)
            call.envelope = msgspec.structs.replace(envelope, traceparent=traceparent)
        return call

    def async_reply(self, reply: protocol.Reply, tier: str) -> None:
        """The outcome of a `wait: false` request this gateway accepted (the reply reader's hook)."""
        self.metrics.async_reply(reply, tier)
        self.limits.async_reply(reply)
        self.shares.async_ended(reply.id)

    async def hold(
        self, grant: Grant, envelope: protocol.Envelope, route: Route, offered_again: bool = False
    ) -> Held | None:
        """Count a request against its key's limits (`Limits.hold`); one over a limit is refused
        (429 `rate_limited`), counted shed (deferred when `offered_again`), and taken back out of
        its tier's projected backlog."""
        try:
            return await self.limits.hold(grant, envelope)
        except RateLimited:
            self.state.withdraw(route)
            self.metrics.refused(route.tier, offered_again)
            raise

    async def sweep(self) -> None:
        """Forget `wait: false` requests past their deadline and grace with no reply, counting each."""
        for tier in self.state.waiters.sweep_async():
            self.metrics.async_expired(tier)
        self.limits.sweep()
        self.shares.sweep(_now_s())


CALLS: web.AppKey[Calls] = web.AppKey("calls", Calls)


class Call:
    """One request, from its enqueue to its one outcome. Use it one way:

    - `await call.result()`: the Result (a failure is raised as a `RequestError`);
    - `async with call: async for event in call`: a streaming request's Chunks, then its Result;
    - `await call.accept()`: `wait: false`; its outcome is counted when its reply arrives.

    With an idempotency key held by an earlier request, `result()` and `accept()` give that one's
    outcome instead (`replayed`), and this call counts nothing. `close` ends the call, once: a
    held Result is done, a Failure or error failed, a client gone away cancelled (or, with an
    idempotency key, left to run: a retry may come back for it).
    """

    __slots__ = (
        "_calls", "_claimed", "_enqueued", "_events", "_held", "_key", "_open", "_reply", "_span", "_xadd",
        "envelope", "grant", "offered_again", "replayed", "route", "started", "total_ms", "ttft_ms",
    )  # fmt: skip

    def __init__(
        self,
        calls: Calls,
        route: Route,
        envelope: protocol.Envelope,
        started: float,
        key: str | None,
        grant: Grant = OPEN_GRANT,
    ) -> None:
        self._calls = calls
        self.grant = grant
        self._held: Held | None = None  # its slot under its key's limits, until it ends
        self.route = route
        self.envelope = envelope
        self.started = started
        self._key = key
        self.replayed = False
        self.offered_again = False  # a batch line: refused, it is offered again, not lost
        self.total_ms = 0.0  # end to end, as the client is told: set when the call ends answered
        self.ttft_ms: float | None = None  # a streaming call's time to its first token
        self._events: asyncio.Queue[StreamEvent] | None = None
        self._enqueued: asyncio.Future[bytes] | None = None  # its XADD: set once it is queued
        self._xadd: asyncio.Future[bytes] | None = None  # its XADD, on either path (`accept` too)
        self._claimed = False  # it holds its idempotency key (the first request sent with it)
        self._reply: protocol.Reply | None = None
        self._span: RequestSpan | None = None  # with tracing on
        self._open = True

    @property
    def id(self) -> str:
        return self.envelope.id

    # ------------------------------------------------------------ the three ways to use a call

    async def result(self) -> protocol.Result:
        """Queue the request and wait for its Result; the call ends done. A failure ends it
        failed and is raised carrying the request id."""
        try:
            result = await self._answer()
        except BaseException as exc:
            self.close(exc)  # where `_answer` has not (a replay's failure)
            raise
        self.close()
        return result

    async def __aenter__(self) -> Call:
        """Queue a streaming request; iterating the call gives its events."""
        try:
            self._held = await self._calls.hold(self.grant, self.envelope, self.route, self.offered_again)
        except BaseException as exc:
            self.close(exc)
            raise
        self._events = self._calls.state.waiters.add_stream(self.id, self.route.deadline_ms / 1000.0)
        enqueued = self._submit()
        try:
            await asyncio.shield(enqueued)  # a hang-up leaves the XADD running: its cancel needs the entry id
        except BaseException as exc:
            self.close(exc)
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exc)

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> protocol.Chunk | protocol.Result:
        """The next Chunk, then the Result (the call ends done); a failure ends the call failed
        and is raised carrying the request id."""
        if not self._open or self._events is None:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, protocol.Chunk | protocol.Result):
            if self.ttft_ms is None:
                self.ttft_ms = _elapsed_ms(self.started)
                self._calls.metrics.first_token(event.tier, event.pool, self.ttft_ms / 1000.0)
            if isinstance(event, protocol.Result):
                self._reply = event
                self.close()  # counted on arrival, before the client is sent its last chunks
            return event
        if isinstance(event, protocol.Failure):
            self._reply = event
            event = for_request(from_code(event.code, event.message), self.id)
        self.close(event)
        raise event

    async def accept(self) -> str:
        """Queue a `wait: false` request with its `Accepted` record; the id its client polls
        (an earlier request's on a replay). Its outcome is counted by `Calls.async_reply` when
        its reply reaches this gateway, or by `Calls.sweep` when none does; its span (with tracing
        on) ends here, once it is queued."""
        try:
            request_id = await self._accept()
        except BaseException as exc:
            self.close(exc)  # it was not queued: this counts nothing but frees its share
            raise
        self.close()  # a replay's end; a request queued here was handed to `Calls.async_reply` already
        self._end_span(None)
        return request_id

    async def _accept(self) -> str:
        first_id = await self._claim()
        if first_id is not None:
            return first_id
        calls, route, envelope = self._calls, self.route, self.envelope
        state = calls.state
        held = await calls.hold(self.grant, envelope, route, self.offered_again)
        accepted = self._queued(reply_to=state.gateway_id)
        key = protocol.accepted_key(envelope.id)
        record = (key, protocol.encoder.encode(accepted), state.settings.gateway.result_ttl_s)
        state.waiters.accept(envelope.id, route.tier, route.deadline_ms / 1000.0)  # before: its reply may come first
        try:
            self._xadd = state.queue.enqueue(route.stream, protocol.encoder.encode(envelope), (record, *self._kept()))
            entry_id = await self._xadd
        except BaseException:
            state.waiters.take_async(envelope.id)  # not counted (docs/metrics.md, known limits)
            if held is not None:
                calls.limits.release(held, None)
            raise
        if held is not None:
            calls.limits.keep_async(held)
        # The stream entry id is Redis's answer to the XADD, so the record written with it cannot
        # hold it. It is written again with the id in the next tick's pipeline, alongside whatever
        # else that tick sends and never waited on: no round trip of its own on this request's path.
        # A DELETE in between finds no entry id and cancels through the workers' cancel channel only.
        state.queue.restate(key, protocol.encoder.encode(msgspec.structs.replace(accepted, entry_id=entry_id.decode())))
        self._open = False
        until_s = _now_s() + route.deadline_ms / 1000.0
        calls.shares.keep_async(envelope.id, route.stream, envelope.tenant, until_s)
        info_line(log, "request accepted", {"id": envelope.id, "model": envelope.model, "tier": route.tier})
        return envelope.id

    # ------------------------------------------------------------ the end, in one place

    def close(self, exc: BaseException | None = None, total_ms: float | None = None) -> None:
        """End the call, recording its one outcome and log line; a later close does nothing.

        `exc` is what ended it, if anything; `total_ms` the latency of an answer given later than
        its result arrived (default: until now). A call never queued (a replay, or one that
        failed before its XADD was asked for) counts nothing."""
        if not self._open:
            return
        self._open = False
        if self._claimed:
            self._release_unqueued()
        self._end_span(exc)
        if self._held is not None:
            self._calls.limits.release(self._held, self._reply)
            self._held = None
        if self.grant.tenant:  # only a tenant's requests are held to a share
            self._calls.shares.ended(self.route.stream, self.grant.tenant)
        enqueued = self._enqueued
        if enqueued is None:
            return
        metrics, tier, reply = self._calls.metrics, self.route.tier, self._reply
        self._calls.state.waiters.discard(self.envelope.id)
        if isinstance(reply, protocol.Result):
            self._done(reply, _elapsed_ms(self.started) if total_ms is None else total_ms)
        elif isinstance(reply, protocol.Failure):
            metrics.failed(tier, reply.code, reply.pool)
        elif isinstance(exc, RequestError):  # the deadline, Redis unreachable, shutdown
            metrics.failed(tier, exc.code)
            for_request(exc, self.id)
        elif isinstance(exc, GONE):
            self._went_away(enqueued)
        else:
            metrics.abandon(tier)

    def _release_unqueued(self) -> None:
        """A call that claimed its idempotency key and ends never queued (refused by its key's
        limits, or its XADD failed) frees the key, so that a retry with it runs rather than
        waiting on a request that never will. Where it is not known whether the XADD went through
        (the client left while it was in flight), the claim stays: renewed by the XADD if it did,
        run out soon after the deadline if it did not. Called only with the key claimed."""
        self._claimed = False
        xadd = self._xadd
        if xadd is None or (xadd.done() and not xadd.cancelled() and xadd.exception() is not None):
            assert self._key is not None
            self._calls.state.queue.release_idempotency_soon(self._key, self.id)

    def _kept(self) -> tuple[State, ...]:
        """With the idempotency key claimed, the SET that keeps the claim as long as the answer is
        kept, written with the request's XADD: until then the claim lasts only past the deadline."""
        if not self._claimed:
            return ()
        assert self._key is not None
        ttl_s = self._calls.state.settings.gateway.result_ttl_s
        return ((protocol.idempotency_key(self._key), self.id.encode(), ttl_s),)

    def _end_span(self, exc: BaseException | None) -> None:
        """End the request's span (with tracing on), once, with its reply or what ended it."""
        if self._span is not None:
            self._span.end(self._reply, exc)
            self._span = None

    def _done(self, result: protocol.Result, total_ms: float) -> None:
        self.total_ms = total_ms
        self._calls.metrics.done(result, total_ms)
        if not log.isEnabledFor(logging.INFO):  # the line's fields are not even gathered
            return
        if self._events is not None:
            info_line(log, "stream done", {"id": self.id, "tier": result.tier, "pool": result.pool})
            return
        info_line(
            log,
            "request done",
            {
                "id": self.id,
                "model": self.envelope.model,
                "tier": self.route.tier,
                "pool": result.pool,
                "total_ms": total_ms,
                "queue_ms": result.queue_ms,
                "worker": result.worker,
                "batch_size": result.batch_size,
            },
        )

    def _went_away(self, enqueued: asyncio.Future[bytes]) -> None:
        """The client went away before its answer: cancel the request in the background (a worker
        that has not started it skips it) and count it cancelled. With an idempotency key a retry
        may come back for its outcome: it runs, and is not counted here."""
        metrics, tier = self._calls.metrics, self.route.tier
        if self._key is not None:
            metrics.abandon(tier)
            return
        metrics.cancelled(tier)
        self._calls.state.queue.cancel_soon(self._queued(), enqueued)
        log.info("request cancelled", extra={"id": self.id, "tier": tier, "reason": "client went away"})

    # ------------------------------------------------------------ steps

    def _submit(self) -> asyncio.Future[bytes]:
        """Count the request in flight and ask for its XADD (this tick's pipeline), once its
        waiter is registered; the XADD's future, which resolves to the entry id."""
        self._calls.metrics.begin(self.route.tier)
        queue = self._calls.state.queue
        enqueued = queue.enqueue(self.route.stream, protocol.encoder.encode(self.envelope), self._kept())
        self._enqueued = self._xadd = enqueued
        return enqueued

    async def _answer(self) -> protocol.Result:
        """The Result, the call left open to be closed done; a failure closes it first."""
        if self._key is not None:  # awaited only where there is a key: a coroutine costs every request
            first_id = await self._claim()
            if first_id is not None:
                return await self._replay(first_id)
        if has_limits(self.grant):
            self._held = await self._calls.hold(self.grant, self.envelope, self.route, self.offered_again)
        waiters, request_id = self._calls.state.waiters, self.envelope.id
        waiting = waiters.add(request_id, self.route.deadline_ms / 1000.0)
        # The call waits for its reply alone: an XADD that fails fails the wait, and a hang-up
        # leaves the XADD running (its cancel needs the entry id). One wake-up, not two.
        self._submit().add_done_callback(functools.partial(_fail_unqueued, waiters, request_id))
        try:
            reply = await waiting
        except BaseException as exc:
            self.close(exc)
            raise
        self._reply = reply
        if isinstance(reply, protocol.Failure):
            error = for_request(from_code(reply.code, reply.message), request_id)
            self.close(error)
            raise error
        return reply

    async def _claim(self) -> str | None:
        """With an idempotency key: None when this request is the first with it (it runs, stamped
        anew after the claim's round trip), else the first one's id (whose outcome it gets). The
        claim lasts until just past the request's deadline; its XADD makes it last as long as
        the answer (`_kept`)."""
        if self._key is None:
            return None
        state = self._calls.state
        claim_s = math.ceil(self.route.deadline_ms / 1000.0) + CLAIM_GRACE_S
        first_id = await state.queue.claim_idempotency(self._key, self.id, claim_s)
        if first_id is not None:
            self.replayed = True
            return first_id
        self._claimed = True
        now_ms = state.clock.now_ms()
        self.envelope = msgspec.structs.replace(
            self.envelope, deadline_at_ms=int(now_ms) + self.route.deadline_ms, sent_at_ms=round_ms(now_ms)
        )
        return None

    async def _replay(self, first_id: str) -> protocol.Result:
        """The result of the first request sent with this idempotency key, waiting for it while it
        runs (a rare path: it polls the stored answer rather than holding a waiter in another gateway)."""
        queue, loop = self._calls.state.queue, asyncio.get_running_loop()
        give_up_at = loop.time() + self.route.deadline_ms / 1000.0
        while True:
            stored = await queue.stored(first_id)
            if isinstance(stored, protocol.Result):
                self.total_ms = _elapsed_ms(self.started)
                return stored
            if isinstance(stored, protocol.Failure):
                raise for_request(from_code(stored.code, stored.message), first_id)
            if loop.time() >= give_up_at:
                raise DeadlineExceeded(f"the first request with this idempotency key ({first_id}) has not finished")
            await asyncio.sleep(REPLAY_POLL_S)

    def _queued(self, reply_to: str = "") -> protocol.Accepted:
        """Where the request is queued: what `RequestQueue.cancel` needs."""
        envelope, route = self.envelope, self.route
        return protocol.Accepted(
            id=envelope.id,
            model=envelope.model,
            tier=route.tier,
            deadline_at_ms=envelope.deadline_at_ms,
            region=route.region,
            reply_to=reply_to,
            lane=route.lane,
            tenant=envelope.tenant,
        )


async def gather_results(calls: Sequence[Call]) -> list[protocol.Result]:
    """The Results of calls answered together (the inputs of one embeddings request): once every
    one has ended, each answered call is closed done with the latency of the whole answer (the
    same `total_ms` for all); then the first failure, if any, is raised."""
    try:
        outcomes = await asyncio.gather(*(call._answer() for call in calls), return_exceptions=True)
    finally:
        total_ms = _elapsed_ms(min((call.started for call in calls), default=time.perf_counter()))
        for call in calls:
            call.close(total_ms=total_ms)  # the failed ones have closed already
    error = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
    if error is not None:
        raise error
    return [outcome for outcome in outcomes if isinstance(outcome, protocol.Result)]


def _fail_unqueued(waiters: Waiters, request_id: str, enqueued: asyncio.Future[bytes]) -> None:
    """An XADD that failed (Redis unreachable or refusing) ends its request's wait with its error."""
    if not enqueued.cancelled() and (error := enqueued.exception()) is not None:
        waiters.fail(request_id, error)


def _now_s() -> float:
    return time.monotonic()


def _elapsed_ms(started: float) -> float:
    return round_ms((time.perf_counter() - started) * 1000.0)
