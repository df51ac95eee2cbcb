"""A deterministic pool's simulated wait ends at the instant its profile names, counted from the
executor's start instant; a batched pool's waits on the event loop. Fake clocks, no real time."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from core.protocol import Envelope
from core.settings import Settings
from workers import precise
from workers.backends.simulated import SimulatedBackend


class FakeTime:
    """A clock that moves only when slept on, blocked on, or read (`tick_s` a read)."""

    def __init__(self, now_s: float, tick_s: float = 1e-6) -> None:
        self.now_s = now_s
        self.tick_s = tick_s
        self.slept: list[float] = []
        self.blocked: list[float] = []

    def clock(self) -> float:
        self.now_s += self.tick_s
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds

    def block(self, seconds: float) -> None:
        self.blocked.append(seconds)
        self.now_s += seconds


async def test_a_short_wait_blocks_then_spins_to_the_end_instant() -> None:
    fake = FakeTime(100.0)
    end_s = 100.0 + 0.95e-3
    await precise.wait_until(end_s, fake.clock, fake.sleep, fake.block)
    # under the coarse margin the event loop's timer is too coarse: only passes of the loop, no sleep
    assert fake.slept == [0] * precise.WRITE_PASSES
    assert fake.blocked == [pytest.approx(0.95e-3 - precise.SPIN_S, abs=8e-6)]  # the clock ticks on each read
    assert end_s <= fake.now_s <= end_s + 2 * fake.tick_s


async def test_a_long_wait_sleeps_on_the_loop_all_but_the_coarse_margin() -> None:
    fake = FakeTime(50.0)
    end_s = 50.0 + 0.020
    await precise.wait_until(end_s, fake.clock, fake.sleep, fake.block)
    assert fake.slept == [pytest.approx(0.020 - precise.COARSE_MARGIN_S, abs=2e-6)]
    assert fake.blocked == [pytest.approx(precise.COARSE_MARGIN_S - precise.SPIN_S, abs=4e-6)]
    assert end_s <= fake.now_s <= end_s + 2 * fake.tick_s


async def test_the_loop_gets_no_pass_once_the_end_is_near() -> None:
    fake = FakeTime(100.0)
    await precise.wait_until(100.0 + precise.YIELD_MARGIN_S / 2, fake.clock, fake.sleep, fake.block)
    assert fake.slept == []  # a pass of the loop could end past the instant


async def test_an_instant_already_past_returns_at_once() -> None:
    fake = FakeTime(10.0)
    await precise.wait_until(9.0, fake.clock, fake.sleep, fake.block)
    assert fake.slept == [] and fake.blocked == []


async def test_a_loose_wait_sleeps_on_the_loop_for_the_whole_time() -> None:
    fake = FakeTime(10.0, tick_s=0.0)
    await precise.wait_loosely(10.004, fake.clock, fake.sleep, fake.block)
    assert fake.slept == [pytest.approx(0.004)] and fake.blocked == []


def envelope(text: str, stream: bool = False) -> Envelope:
    return Envelope(
        id="r1", model="sim-echo", input=text, tier="realtime", region="default", reply_to="gw", deadline_at_ms=0,
        stream=stream,
    )  # fmt: skip


async def test_the_deterministic_backend_ends_at_start_plus_its_profile(
    make_settings: Callable[..., Settings],
) -> None:
    waits: list[float] = []

    async def record(end_s: float) -> None:
        waits.append(end_s)

    backend = SimulatedBackend(make_settings(), "groq-realtime", random.Random(1), wait=record)
    done = await backend.run([envelope("hello tiergate")], started_s=1000.0)
    # groq-lpu: 0.8 ms to the first of 4 tokens, 0.05 ms each next one: 0.95 ms from the start
    assert waits == [pytest.approx(1000.0 + 0.95e-3, abs=1e-9)]
    assert done[0].output == "etagreit olleh"


async def test_a_streamed_request_ends_at_the_same_instant_token_by_token(
    make_settings: Callable[..., Settings],
) -> None:
    waits: list[float] = []
    tokens: list[str] = []

    async def record(end_s: float) -> None:
        waits.append(end_s)

    backend = SimulatedBackend(make_settings(), "groq-realtime", random.Random(1), wait=record)
    await backend.run([envelope("hello tiergate", stream=True)], lambda _, text: tokens.append(text), started_s=5.0)
    assert waits == [pytest.approx(5.0 + (0.8 + 0.05 * step) / 1000.0, abs=1e-9) for step in range(4)]
    assert "".join(tokens) == "etagreit olleh"


def test_only_deterministic_pools_wait_precisely(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert SimulatedBackend(settings, "groq-realtime")._wait is precise.wait_until
    assert SimulatedBackend(settings, "h100-interactive")._wait is precise.wait_loosely
