"""The open-loop engine: fire each arrival at its intended time, whatever the answers to earlier
ones, and record every outcome. The I/O is the driver's (HTTP or direct Redis); this module only
paces, and optionally samples the tier streams' lengths from Redis while the run lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Protocol

from redis.exceptions import RedisError

from core.redis_client import Client
from core.settings import Settings

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


def tier_streams(settings: Settings, tiers: Collection[str]) -> dict[str, list[str]]:
    """The request streams of each of `tiers` in the gateway's region (one per lane)."""
    streams: dict[str, list[str]] = {}
    for lane in settings.lanes():
        if lane.tier in tiers and lane.region == settings.gateway.region:
            streams.setdefault(lane.tier, []).append(lane.stream)
    return streams


async def sample_depths(
    redis: Client, streams: Mapping[str, Sequence[str]], recorder: Recorder, stop: asyncio.Event
) -> None:
    """Each tier's queue depth (the XLEN of its request `streams`, summed) every DEPTH_SAMPLE_S
    until `stop` is set."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    keys = [(tier, key) for tier, tier_streams in streams.items() for key in tier_streams]
    while not stop.is_set():
        pipe = redis.pipeline(transaction=False)
        for _, key in keys:
            pipe.xlen(key)
        try:
            lengths = await pipe.execute()
        except (RedisError, OSError):
            lengths = []
        now_s = loop.time() - started
        depths: dict[str, int] = {}
        for (tier, _), length in zip(keys, lengths, strict=False):
            depths[tier] = depths.get(tier, 0) + int(length)
        for tier, depth in depths.items():
            recorder.depth.setdefault(tier, []).append((now_s, depth))
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
