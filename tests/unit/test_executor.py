"""The executor never starts a request that is late or cannot finish in time, and says why."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from core.clock import RedisClock, round_ms
from core.protocol import Envelope, Failure, Result
from core.settings import Settings
from workers.backends import Completion
from workers.cancels import CancelledIds
from workers.consumer import Delivery
from workers.executor import Executor


class RecordingBackend:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(
        self, batch: Sequence[Envelope], sink: Any = None, started_s: float | None = None
    ) -> list[Completion]:
        self.ran += [env.id for env in batch]
        return [Completion(output=env.input[::-1], energy_j=1.0, cost=1.0) for env in batch]

    async def close(self) -> None:
        return None


def delivery(request_id: str, deadline_at_ms: float) -> Delivery:
    env = Envelope(
        id=request_id, model="sim-embed", input="x", tier="batch", region="default", reply_to="gw",
        deadline_at_ms=int(deadline_at_ms),
    )  # fmt: skip
    return Delivery("tg:{batch.default}:requests", b"1-0", env)


async def test_late_and_hopeless_requests_are_answered_without_running(make_settings: Callable[..., Settings]) -> None:
    backend = RecordingBackend()
    clock = RedisClock()
    executor = Executor(make_settings(), "cerebras-batch", "w1", backend, clock)  # about 40 ms a batch
    now = clock.now_ms()
    replies = dict(
        (d.envelope.id, reply)
        for d, reply in await executor.execute(
            [delivery("late", now - 5), delivery("hopeless", now + 10), delivery("fine", now + 60_000)]
        )
    )
    assert backend.ran == ["fine"]
    assert isinstance(replies["fine"], Result)
    late, hopeless = replies["late"], replies["hopeless"]
    assert isinstance(late, Failure) and late.code == "deadline_exceeded"
    assert "reached its deadline" in late.message
    assert isinstance(hopeless, Failure) and hopeless.code == "deadline_exceeded"
    assert "cannot finish before its deadline" in hopeless.message and "needs about 40 ms" in hopeless.message


class FixedClock(RedisClock):
    def __init__(self, now_ms: float) -> None:
        super().__init__()
        self.at_ms = now_ms

    def now_ms(self) -> float:
        return self.at_ms


async def test_queue_wait_counts_from_the_send_stamp_else_from_the_entry_id(
    make_settings: Callable[..., Settings],
) -> None:
    executor = Executor(make_settings(), "groq-realtime", "w1", RecordingBackend(), FixedClock(1_000_010.0))

    def realtime(request_id: str, sent_at_ms: float) -> Delivery:
        env = Envelope(
            id=request_id, model="sim-echo", input="hi", tier="realtime", region="default", reply_to="gw",
            deadline_at_ms=2_000_000, sent_at_ms=sent_at_ms,
        )  # fmt: skip
        return Delivery("tg:{realtime.default}:requests", b"1000000-0", env)

    replies = {d.envelope.id: reply for d, reply in await executor.execute([realtime("stamped", 999_999.25)])}
    replies |= {d.envelope.id: reply for d, reply in await executor.execute([realtime("old", 0.0)])}
    stamped, old = replies["stamped"], replies["old"]
    assert isinstance(stamped, Result) and stamped.queue_ms == 10.75
    assert isinstance(old, Result) and old.queue_ms == 10.0  # no stamp: the entry id's whole ms
    assert stamped.enqueued_at_ms == old.enqueued_at_ms == 1_000_000


def test_round_ms_rounds_to_the_microsecond_as_round_does() -> None:
    rng = random.Random(7)
    for ms in [rng.uniform(0.0, 10_000.0) for _ in range(20_000)]:
        gap = abs(round_ms(ms) - round(ms, 3))
        tie = abs(ms * 1000.0 % 1.0 - 0.5) < 1e-6  # where the two may round a half differently
        assert gap < 1e-9 or (tie and abs(gap - 1e-3) < 1e-9), ms
        assert len(repr(round_ms(ms)).partition(".")[2]) <= 3, ms  # short in JSON
    assert [round_ms(v) for v in (0.0, 10.75, 0.87342, 999.9996, 5)] == [0.0, 10.75, 0.873, 1000.0, 5.0]
    assert abs(round_ms(1_765_139_381_234.5678) - 1_765_139_381_234.568) < 1e-3


async def test_a_cancelled_request_is_answered_without_running(make_settings: Callable[..., Settings]) -> None:
    backend = RecordingBackend()
    clock = RedisClock()
    cancelled = CancelledIds()
    executor = Executor(make_settings(), "cerebras-batch", "w1", backend, clock, cancelled=cancelled)
    now = clock.now_ms()
    cancelled.add("gone", int(now + 60_000), now)
    replies = dict(
        (d.envelope.id, reply)
        for d, reply in await executor.execute([delivery("gone", now + 60_000), delivery("kept", now + 60_000)])
    )
    assert backend.ran == ["kept"]
    gone = replies["gone"]
    assert isinstance(gone, Failure) and gone.code == "cancelled"
    assert gone.message == "request gone was cancelled before pool cerebras-batch started it"
    assert isinstance(replies["kept"], Result)
