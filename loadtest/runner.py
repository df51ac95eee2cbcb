"""One load-test run from start to end: pick the driver (HTTP or direct Redis), play the schedule
open-loop with the live progress and queue-depth sampling alongside, and hand back what it
measured; and the capacity search, a ramp of such runs. Opens and closes the run's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from core import redis_client
from core.heap import freeze_startup_heap
from core.settings import Settings

from . import engine, schedule
from .console import show_progress
from .direct import DirectDriver
from .http_driver import HttpDriver
from .schedule import Arrival
from .stats import Recorder, summary


@dataclass(slots=True, frozen=True)
class Target:
    """Where the load goes and how it is sent."""

    url: str | None = None  # the gateway's base URL (HTTP mode)
    direct: str | None = None  # a Redis URL (direct mode)
    redis: str | None = None  # a Redis URL to sample queue depths from (and coordinate through)
    stream: bool = False
    deadline_ms: int | None = None

    @property
    def redis_url(self) -> str | None:
        return self.direct or self.redis


@dataclass(slots=True, frozen=True)
class Load:
    """The traffic: the arguments of `schedule.build`."""

    rate: float
    duration_s: float
    mix: dict[str, float]
    models: tuple[str, ...]
    arrivals: schedule.Arrivals = "poisson"
    input_chars: tuple[int, int] = (64, 64)
    seed: int | None = None

    def build(self) -> list[Arrival]:
        return schedule.build(
            self.rate, self.duration_s, self.mix, self.models, self.arrivals, self.input_chars, self.seed
        )


def new_recorder(settings: Settings, keep_samples: bool = True) -> Recorder:
    return Recorder({tier: t.slo.latency_ms for tier, t in settings.tiers.items()}, keep_samples)


def objectives(settings: Settings) -> dict[str, float]:
    return {tier: t.slo.objective for tier, t in settings.tiers.items()}


@contextlib.asynccontextmanager
async def _driver(settings: Settings, target: Target) -> AsyncIterator[engine.Driver]:
    if target.direct:
        redis = await redis_client.connect(settings.redis, target.direct)
        direct = DirectDriver(redis, settings, target.deadline_ms)
        try:
            await direct.start()
            yield direct
        finally:
            await direct.close()
            await redis.aclose()
        return
    if not target.url:
        raise ValueError("a target needs --url or --direct")
    deadlines = {tier: t.default_deadline_ms for tier, t in settings.tiers.items()}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield HttpDriver(session, target.url, deadlines, target.stream, target.deadline_ms)


async def play(
    settings: Settings,
    target: Target,
    arrivals: Sequence[Arrival],
    duration_s: float,
    *,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    start_in_s: Callable[[], float] | None = None,
) -> Recorder:
    """Send `arrivals` open-loop to `target`; every request has its outcome when this returns.

    `start_in_s`, asked once the connections are ready, says how long to wait before the start
    (agents start together at a moment on Redis's clock)."""
    recorder = new_recorder(settings)
    helpers: list[Callable[[asyncio.Event], Any]] = []
    redis = await redis_client.connect(settings.redis, target.redis_url) if target.redis_url else None
    if redis is not None:
        streams = engine.tier_streams(settings, {a.tier for a in arrivals})
        helpers.append(lambda stop: engine.sample_depths(redis, streams, recorder, stop))
    if progress:
        helpers.append(lambda stop: show_progress(recorder, len(arrivals), stop))
    try:
        async with _driver(settings, target) as driver:
            delay_s = start_in_s() if start_in_s is not None else 0.0
            freeze_startup_heap()  # the schedule and the connections: no collection walks them mid-run
            run = engine.run(arrivals, driver, recorder, duration_s, delay_s, indices)
            await engine.while_running(run, *helpers)
    finally:
        if redis is not None:
            await redis.aclose()
    return recorder


@dataclass(slots=True, frozen=True)
class Ramp:
    start_rate: float
    factor: float
    step_s: float
    max_rate: float


async def find_capacity(settings: Settings, target: Target, load: Load, ramp: Ramp) -> dict[str, Any]:
    """Run steps at `start_rate`, `start_rate * factor`, ... up to `max_rate`; stop at the first
    step where some tier misses its SLO objective. The capacity is the last rate that met all; a
    step that drew no arrivals is reported and passed over."""
    steps: list[dict[str, Any]] = []
    best: float | None = None
    rate = ramp.start_rate
    while rate <= ramp.max_rate:
        step = replace(load, rate=rate, duration_s=ramp.step_s)
        arrivals = step.build()
        recorder = await play(settings, target, arrivals, ramp.step_s)
        result = summary(recorder, objectives(settings))
        steps.append({"rate": rate, "summary": result})
        if not arrivals:  # a short Poisson step can draw none: it says nothing either way
            rate = round(rate * ramp.factor, 3)
            continue
        if not result["slo_met"]:
            break
        best = rate
        rate = round(rate * ramp.factor, 3)
    return {"capacity_rate": best, "steps": steps}
