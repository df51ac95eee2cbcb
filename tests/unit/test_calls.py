"""The owner of a request (`gateway/calls.py`) with a fake queue and no network: every way a
request can end is recorded exactly once (one outcome, in-flight back to zero, one log line),
whether it is answered, fails, reaches its deadline, cannot be queued, or its client goes away;
for waited, streamed, `wait: false` and grouped requests alike."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable

import pytest

from core import protocol
from core.clock import RedisClock
from core.errors import BackendUnavailable, DeadlineExceeded, QueueFull, WorkerFailed
from core.protocol import OPEN_GRANT, Grant
from core.settings import Settings
from gateway.calls import CLAIM_GRACE_S, Call, Calls, gather_results
from gateway.metrics import GatewayMetrics
from gateway.results import Waiters
from gateway.routing import Route, Router
from gateway.state import GatewayState

POOL = "groq-realtime"


class FakeQueue:
    """`RequestQueue`'s surface, in memory: each XADD answers at once unless told to fail or hold."""

    def __init__(self) -> None:
        self.lengths: dict[str, float] = {}
        self.sampled_at: dict[str, float] = {}
        self.sent: list[tuple[str, bytes, tuple[tuple[str, bytes, int], ...]]] = []
        self.restated: list[tuple[str, bytes]] = []
        self.cancelled: list[tuple[protocol.Accepted, asyncio.Future[bytes]]] = []
        self.claims: dict[str, str] = {}
        self.claim_ttls: dict[str, int] = {}
        self.released: list[tuple[str, str]] = []
        self.answers: dict[str, protocol.Stored] = {}
        self.fail: BaseException | None = None
        self.hold = False  # leave every XADD unanswered

    def enqueue(
        self, stream: str, payload: bytes, states: tuple[tuple[str, bytes, int], ...] = ()
    ) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.sent.append((stream, payload, states))
        if self.fail is not None:
            future.set_exception(self.fail)
        elif not self.hold:
            future.set_result(b"%d-0" % len(self.sent))
        return future

    def restate(self, key: str, value: bytes) -> None:
        self.restated.append((key, value))

    def cancel_soon(self, queued: protocol.Accepted, enqueued: asyncio.Future[bytes]) -> None:
        self.cancelled.append((queued, enqueued))

    async def claim_idempotency(self, key: str, request_id: str, ttl_s: int) -> str | None:
        first = self.claims.setdefault(key, request_id)
        if first != request_id:
            return first
        self.claim_ttls[key] = ttl_s
        return None

    def release_idempotency_soon(self, key: str, request_id: str) -> None:
        self.released.append((key, request_id))
        if self.claims.get(key) == request_id:
            del self.claims[key]

    async def stored(self, request_id: str) -> protocol.Stored | None:
        return self.answers.get(request_id)


@dataclasses.dataclass
class Gateway:
    calls: Calls
    queue: FakeQueue
    waiters: Waiters
    metrics: GatewayMetrics
    route: Route

    def call(
        self, key: str | None = None, stream: bool = False, deadline_ms: int | None = None, grant: Grant = OPEN_GRANT
    ) -> Call:
        route = self.route if deadline_ms is None else dataclasses.replace(self.route, deadline_ms=deadline_ms)
        envelope = self.calls.envelope(route, "sim-echo", "hello", grant, stream=stream)
        return self.calls.call(route, envelope, 0.0, key, grant=grant)

    def outcomes(self) -> dict[str, float]:
        """Counted requests by outcome (pool, outcome), the zeros left out."""
        counts: dict[str, float] = {}
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "tiergate_requests_total" and sample.value:
                    counts[f"{sample.labels['pool']}:{sample.labels['outcome']}"] = sample.value
        return counts

    def in_flight(self) -> float:
        return self.metrics.registry.get_sample_value("tiergate_in_flight_requests", {"tier": "realtime"}) or 0.0

    def reply(self, call: Call, ok: bool = True) -> None:
        assert self.waiters.resolve(result(call.id) if ok else failure(call.id))


def result(request_id: str) -> protocol.Result:
    return protocol.Result(
        id=request_id, model="sim-echo", output="hello", tier="realtime", processor="groq-lpu", pool=POOL,
        worker="w1", batch_size=1, enqueued_at_ms=1, queue_ms=0.5, service_ms=1.0, finished_at_ms=3,
        energy_j=0.1, cost=0.001,
    )  # fmt: skip


def failure(request_id: str) -> protocol.Failure:
    return protocol.Failure(id=request_id, code="worker_error", message="boom", tier="realtime", pool=POOL)


def chunk(request_id: str, seq: int, text: str) -> protocol.Chunk:
    return protocol.Chunk(id=request_id, seq=seq, text=text, produced_at_ms=0.0, tier="realtime", pool=POOL)


@pytest.fixture
def gateway(make_settings: Callable[..., Settings]) -> Gateway:
    settings = make_settings()
    queue, waiters = FakeQueue(), Waiters()
    state = GatewayState(
        settings=settings,
        gateway_id="gw-test",
        redis=None,  # type: ignore[arg-type]
        router=Router(settings),
        queue=queue,  # type: ignore[arg-type]
        waiters=waiters,
        clock=RedisClock(),
    )
    metrics = GatewayMetrics(settings)
    route = state.router.route("sim-echo", 5, "realtime")
    return Gateway(Calls(state, metrics), queue, waiters, metrics, route)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def hang_up(call: Call) -> None:
    """A waiting client of `call` that goes away once the call is under way."""
    waiting = asyncio.create_task(call.result())
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.calls"]


async def test_an_answered_call_is_counted_done_once(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.calls")
    call = gateway.call()
    waiting = asyncio.create_task(call.result())
    await settle()
    assert gateway.in_flight() == 1
    gateway.reply(call)
    answer = await waiting
    assert answer.id == call.id and call.total_ms > 0 and not call.replayed
    call.close()  # again, and with what a caller might pass: nothing more is counted
    call.close(asyncio.CancelledError())
    assert not gateway.waiters.resolve(result(call.id))  # a second reply finds no waiter
    assert (gateway.outcomes(), gateway.in_flight()) == ({f"{POOL}:ok": 1}, 0)
    assert messages(caplog) == ["request done"]
    assert gateway.metrics.registry.get_sample_value(
        "tiergate_request_duration_seconds_sum", {"tier": "realtime", "pool": POOL, "processor": "groq-lpu"}
    ) == pytest.approx(call.total_ms / 1000.0)


async def test_a_failure_reply_is_raised_with_the_request_id_and_counted_once(gateway: Gateway) -> None:
    call = gateway.call()
    waiting = asyncio.create_task(call.result())
    await settle()
    gateway.reply(call, ok=False)
    with pytest.raises(WorkerFailed, match="boom") as raised:
        await waiting
    assert raised.value.request_id == call.id
    call.close()
    assert (gateway.outcomes(), gateway.in_flight()) == ({f"{POOL}:worker_error": 1}, 0)


async def test_the_deadline_fails_the_call_once_and_a_late_reply_is_not_counted(gateway: Gateway) -> None:
    call = gateway.call(deadline_ms=10)
    with pytest.raises(DeadlineExceeded) as raised:
        await call.result()
    assert raised.value.request_id == call.id
    assert not gateway.waiters.resolve(result(call.id))
    assert (gateway.outcomes(), gateway.in_flight()) == ({"none:deadline_exceeded": 1}, 0)
    assert gateway.queue.cancelled == []  # a deadline is no hang-up: nothing to cancel


async def test_a_call_that_cannot_be_queued_is_counted_once_and_forgotten(gateway: Gateway) -> None:
    gateway.queue.fail = BackendUnavailable("Redis is unreachable, the request was not queued")
    call = gateway.call()
    with pytest.raises(BackendUnavailable) as raised:
        await call.result()
    assert raised.value.request_id == call.id
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.waiters)) == ({"none:error": 1}, 0, 0)


@pytest.mark.parametrize("queued", [True, False], ids=["waiting-for-reply", "waiting-for-xadd"])
async def test_a_client_that_goes_away_cancels_its_request_once(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, queued: bool
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.calls")
    gateway.queue.hold = not queued
    call = gateway.call()
    await hang_up(call)
    ((queued_as, enqueued),) = gateway.queue.cancelled
    assert (queued_as.id, queued_as.tier, queued_as.reply_to) == (call.id, "realtime", "")
    assert enqueued.done() is queued  # an XADD still in flight is cancelled once it answers
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.waiters)) == ({"none:cancelled": 1}, 0, 0)
    assert messages(caplog) == ["request cancelled"]


async def test_a_client_that_goes_away_with_an_idempotency_key_leaves_its_request_running(gateway: Gateway) -> None:
    call = gateway.call(key="k1")
    await hang_up(call)
    assert (gateway.queue.cancelled, gateway.outcomes(), gateway.in_flight()) == ([], {}, 0)
    assert gateway.queue.released == []  # its XADD went through: the key stays its


async def test_a_claimed_key_is_kept_by_the_xadd_and_freed_by_a_call_never_queued(gateway: Gateway) -> None:
    """The claim lasts just past the deadline until the request's XADD, which carries the SET that
    keeps it as long as the answer. A call whose XADD failed frees it (waited or `wait: false`),
    and a retry with the key then runs instead of waiting on a request that never will; a call
    whose client left while its XADD was in flight keeps it."""
    first = gateway.call(key="k1")
    waiting = asyncio.create_task(first.result())
    await settle()
    gateway.reply(first)
    await waiting
    ((_, _, states),) = gateway.queue.sent
    kept_s = gateway.calls.state.settings.gateway.result_ttl_s
    assert states == ((protocol.idempotency_key("k1"), first.id.encode(), kept_s),)
    assert gateway.queue.claim_ttls["k1"] == math.ceil(gateway.route.deadline_ms / 1000) + CLAIM_GRACE_S

    gateway.queue.fail = BackendUnavailable("Redis refused the request")
    unqueued, unaccepted = gateway.call(key="k2"), gateway.call(key="k3")
    with pytest.raises(BackendUnavailable):
        await unqueued.result()
    with pytest.raises(BackendUnavailable):
        await unaccepted.accept()
    assert gateway.queue.released == [("k2", unqueued.id), ("k3", unaccepted.id)]
    gateway.queue.fail = None
    retry = gateway.call(key="k2")
    waiting = asyncio.create_task(retry.result())
    await settle()
    gateway.reply(retry)
    assert (await waiting).id == retry.id and not retry.replayed

    gateway.queue.hold = True
    leaving = gateway.call(key="k4")
    await hang_up(leaving)
    assert ("k4", leaving.id) not in gateway.queue.released and gateway.queue.claims["k4"] == leaving.id


async def test_a_retry_gets_the_first_outcome_and_counts_nothing(gateway: Gateway) -> None:
    first = gateway.call(key="k1")
    waiting = asyncio.create_task(first.result())
    await settle()
    gateway.reply(first)
    await waiting
    gateway.queue.answers[first.id] = result(first.id)
    retry = gateway.call(key="k1")
    assert (await retry.result()).id == first.id and retry.replayed
    assert await gateway.call(key="k1").accept() == first.id
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.queue.sent)) == ({f"{POOL}:ok": 1}, 0, 1)


async def test_a_stream_yields_chunks_then_its_result_counted_once(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.calls")
    call = gateway.call(stream=True)
    async with call:
        assert gateway.in_flight() == 1
        assert gateway.waiters.push(chunk(call.id, 0, "hel"))
        assert gateway.waiters.push(chunk(call.id, 1, "lo"))
        gateway.reply(call)
        events = [event async for event in call]
    assert [type(e).__name__ for e in events] == ["Chunk", "Chunk", "Result"]
    assert call.ttft_ms is not None and call.total_ms >= call.ttft_ms
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.waiters)) == ({f"{POOL}:ok": 1}, 0, 0)
    assert (
        gateway.metrics.registry.get_sample_value(
            "tiergate_time_to_first_token_seconds_count", {"tier": "realtime", "pool": POOL, "processor": "groq-lpu"}
        )
        == 1
    )
    assert messages(caplog) == ["stream done"]


async def test_a_stream_failure_is_raised_and_counted_once(gateway: Gateway) -> None:
    call = gateway.call(stream=True)
    with pytest.raises(WorkerFailed) as raised:
        async with call:
            assert gateway.waiters.push(chunk(call.id, 0, "hel"))
            gateway.reply(call, ok=False)
            async for _ in call:
                pass
    assert raised.value.request_id == call.id
    assert (gateway.outcomes(), gateway.in_flight()) == ({f"{POOL}:worker_error": 1}, 0)


async def test_a_stream_past_its_deadline_is_counted_once(gateway: Gateway) -> None:
    call = gateway.call(stream=True, deadline_ms=10)
    with pytest.raises(DeadlineExceeded):
        async with call:
            async for _ in call:
                pass
    assert (gateway.outcomes(), gateway.in_flight()) == ({"none:deadline_exceeded": 1}, 0)


@pytest.mark.parametrize("gone", [ConnectionResetError, asyncio.CancelledError])
async def test_a_stream_whose_client_goes_away_is_cancelled_once(gateway: Gateway, gone: type[BaseException]) -> None:
    call = gateway.call(stream=True)
    with pytest.raises(gone):
        async with call:
            assert gateway.waiters.push(chunk(call.id, 0, "hel"))
            async for _ in call:
                raise gone()  # the write of the first chunk finds the connection closed
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.waiters)) == ({"none:cancelled": 1}, 0, 0)
    assert [queued.id for queued, _ in gateway.queue.cancelled] == [call.id]
    assert gateway.waiters.push(chunk(call.id, 1, "lo")) is False  # forgotten, its chunk count too
    assert gateway.waiters._next_chunk == {}


async def test_a_stream_that_cannot_be_queued_is_counted_once(gateway: Gateway) -> None:
    gateway.queue.fail = BackendUnavailable("Redis is unreachable")
    call = gateway.call(stream=True)
    with pytest.raises(BackendUnavailable):
        async with call:
            pytest.fail("the body of a call that was never queued does not run")
    assert (gateway.outcomes(), gateway.in_flight(), len(gateway.waiters)) == ({"none:error": 1}, 0, 0)


async def test_a_client_that_goes_away_after_its_result_does_not_change_its_outcome(gateway: Gateway) -> None:
    call = gateway.call(stream=True)
    with pytest.raises(ConnectionResetError):
        async with call:
            gateway.reply(call)
            async for _ in call:
                raise ConnectionResetError  # the last chunks could not be written: it was answered
    assert (gateway.outcomes(), gateway.in_flight(), gateway.queue.cancelled) == ({f"{POOL}:ok": 1}, 0, [])


async def test_an_accepted_call_is_counted_when_its_reply_arrives(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.calls")
    call = gateway.call()
    assert await call.accept() == call.id
    ((_, _, (record,)),) = gateway.queue.sent
    assert record[0] == protocol.accepted_key(call.id)
    assert protocol.stored_decoder.decode(gateway.queue.restated[0][1]).entry_id == "1-0"  # type: ignore[union-attr]
    assert (gateway.outcomes(), gateway.in_flight()) == ({}, 0)  # no client waits: not in flight
    assert not gateway.waiters.resolve(result(call.id))  # the reply reader then hands it over once
    tier = gateway.waiters.take_async(call.id)
    assert tier == "realtime" and gateway.waiters.take_async(call.id) is None
    gateway.calls.async_reply(result(call.id), tier)
    assert gateway.outcomes() == {f"{POOL}:ok": 1}
    assert messages(caplog) == ["request accepted"]


async def test_an_accepted_call_with_no_reply_is_counted_by_the_sweep(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    await gateway.call().accept()
    await gateway.calls.sweep()
    assert gateway.outcomes() == {}  # within its deadline and grace
    monkeypatch.setattr("gateway.results.time.monotonic", lambda: 1e12)
    await gateway.calls.sweep()
    await gateway.calls.sweep()
    assert gateway.outcomes() == {"none:deadline_exceeded": 1}


async def test_an_accepted_call_that_cannot_be_queued_is_forgotten_uncounted(gateway: Gateway) -> None:
    gateway.queue.fail = BackendUnavailable("Redis is unreachable")
    call = gateway.call()
    with pytest.raises(BackendUnavailable):
        await call.accept()
    assert (gateway.waiters.take_async(call.id), gateway.outcomes(), gateway.in_flight()) == (None, {}, 0)


async def test_calls_answered_together_share_one_latency_and_raise_the_first_failure(gateway: Gateway) -> None:
    calls = [gateway.call() for _ in range(3)]
    waiting = asyncio.create_task(gather_results(calls))
    await settle()
    gateway.reply(calls[0])
    gateway.reply(calls[1], ok=False)
    gateway.reply(calls[2])
    with pytest.raises(WorkerFailed) as raised:
        await waiting
    assert raised.value.request_id == calls[1].id
    assert calls[0].total_ms == calls[2].total_ms > 0
    assert (gateway.outcomes(), gateway.in_flight()) == ({f"{POOL}:ok": 2, f"{POOL}:worker_error": 1}, 0)


async def test_calls_answered_together_whose_client_goes_away_end_once_each(gateway: Gateway) -> None:
    calls = [gateway.call() for _ in range(2)]
    waiting = asyncio.create_task(gather_results(calls))
    await settle()
    gateway.reply(calls[0])  # answered, but the whole answer never goes out
    await settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (gateway.outcomes(), gateway.in_flight()) == ({f"{POOL}:ok": 1, "none:cancelled": 1}, 0)
    assert [queued.id for queued, _ in gateway.queue.cancelled] == [calls[1].id]


async def test_a_refusal_at_admission_is_counted_shed(gateway: Gateway) -> None:
    full = dataclasses.replace(gateway.route, max_queue=1)
    gateway.calls.admit(full)
    with pytest.raises(QueueFull):
        gateway.calls.admit(full)
    assert (gateway.outcomes(), gateway.in_flight()) == ({"none:shed": 1}, 0)


ACME = Grant(key_id="k1", tenant="acme")


async def test_every_way_a_tenants_call_ends_frees_its_place_in_the_tiers_share(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = gateway.route.stream
    answered, failed, late = (gateway.call(grant=ACME, deadline_ms=60_000 if i < 2 else 1) for i in range(3))
    gone = gateway.call(grant=ACME)
    assert gateway.calls.shares.in_flight(stream, "acme") == 4
    waiting = [asyncio.create_task(c.result()) for c in (answered, failed, late, gone)]
    await settle()
    gateway.reply(answered)
    gateway.reply(failed, ok=False)
    waiting[3].cancel()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["Result", "WorkerFailed", "DeadlineExceeded", "CancelledError"]
    assert gateway.calls.shares.in_flight(stream, "acme") == 0
    accepted, refused = gateway.call(grant=ACME), gateway.call(grant=ACME)
    envelope = await accepted.accept()
    assert gateway.calls.shares.in_flight(stream, "acme") == 2  # queued, and the one not yet sent
    gateway.queue.fail = BackendUnavailable("Redis is unreachable")
    with pytest.raises(BackendUnavailable):
        await refused.accept()
    assert gateway.calls.shares.in_flight(stream, "acme") == 1  # until its reply
    gateway.calls.async_reply(result(envelope), "realtime")
    assert gateway.calls.shares.in_flight(stream, "acme") == 0
    gateway.queue.fail = None
    stored = gateway.call(grant=ACME)
    await stored.accept()
    monkeypatch.setattr("gateway.calls.time.monotonic", lambda: 1e12)
    await gateway.calls.sweep()  # no reply by its deadline
    assert gateway.calls.shares.in_flight(stream, "acme") == 0


async def test_a_tenants_envelope_and_record_say_whose_request_it_is(gateway: Gateway) -> None:
    call = gateway.call(grant=ACME)
    assert (call.envelope.tenant, call.envelope.key_id) == ("acme", "k1")
    await call.accept()
    ((_, _, (record,)),) = gateway.queue.sent
    assert protocol.stored_decoder.decode(record[1]).tenant == "acme"  # type: ignore[union-attr]
