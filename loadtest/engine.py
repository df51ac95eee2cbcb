"""The open-loop engine: fire each arrival at its intended time, whatever the answers to earlier
ones, and record every outcome. The I/O is the driver's (HTTP or direct Redis); this module only
paces, and optionally samples the tier streams' lengths from Redis while the run lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import protocol

from .schedule import Arrival
from .stats import Recorder, Sample

DEPTH_SAMPLE_S = 0.25


class Driver(Protocol):
    async def fire(self, index: int, arrival: Arrival, intended: float, started: float) -> Sample:
        """Send one request, meant to leave at loop time `intended`; the run began at `started`."""
        ...


async def run(
    schedule: Sequence[Arrival],
    driver: Driver,
    recorder: Recorder,
    duration_s: float,
    start_delay_s: float = 0.0,
    indices: Sequence[int] | None = None,
) -> None:
    """Play `schedule` open-loop; returns once every request has its outcome.

    `indices` are the arrivals' numbers in the whole run (an agent plays a share of it).
    """
    loop = asyncio.get_running_loop()
    started = loop.time() + max(0.0, start_delay_s)
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int, arrival: Arrival, intended: float) -> None:
        recorder.add(await driver.fire(index, arrival, intended, started))

    for position, arrival in enumerate(schedule):
        intended = started + arrival.offset_s
        delay_s = intended - loop.time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        recorder.sent(arrival.tier)
        index = position if indices is None else indices[position]
        task = loop.create_task(one(index, arrival, intended))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    recorder.duration_s = duration_s


async def sample_depths(
    redis: Redis, tiers: Sequence[str], region: str, recorder: Recorder, stop: asyncio.Event
) -> None:
    """XLEN of each tier's request stream every DEPTH_SAMPLE_S until `stop` is set."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    keys = [protocol.stream_key(tier, region) for tier in tiers]
    while not stop.is_set():
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.xlen(key)
        try:
            lengths = await pipe.execute()
        except (RedisError, OSError):
            lengths = []
        now_s = loop.time() - started
        for tier, length in zip(tiers, lengths, strict=False):
            recorder.depth.setdefault(tier, []).append((now_s, int(length)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DEPTH_SAMPLE_S)


async def while_running(main: Awaitable[None], *background: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main` with helper loops that stop (by event) as soon as it is done."""
    stop = asyncio.Event()
    helpers = [asyncio.ensure_future(helper(stop)) for helper in background]
    try:
        await main
    finally:
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
