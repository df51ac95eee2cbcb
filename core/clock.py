"""One clock for every process: Client's own, estimated from a local clock plus a measured offset.

Stream entry ids carry Redis's time at enqueue; gateways stamp deadlines and workers measure
queue wait against that same clock, so hosts with skewed clocks still agree. `sync` calls TIME.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from math import floor

from redis.exceptions import RedisError

from .redis_client import Client


def round_ms(ms: float) -> float:
    """`ms` to the µs (three decimals), as `round(ms, 3)` gives it to within a unit in the last
    place, for a tenth of the cost: `round` with digits prints the number and parses it back, and
    each request's stamps and timings go through here."""
    return floor(ms * 1000.0 + 0.5) / 1000.0


class RedisClock:
    def __init__(self) -> None:
        self.offset_ms = 0.0

    def now_ms(self) -> float:
        return time.time() * 1000.0 + self.offset_ms

    async def sync(self, redis: Client, samples: int = 5) -> None:
        """Measure the offset to Redis's clock from the sample with the shortest round trip:
        a busy event loop delays some replies, and only the error of the best one remains."""
        best_rtt = float("inf")
        for _ in range(samples):
            before = time.time()
            seconds, micros = await redis.time()
            after = time.time()
            if after - before < best_rtt:
                best_rtt = after - before
                self.offset_ms = seconds * 1000.0 + micros / 1000.0 - (before + after) * 500.0


async def keep_synced(clock: RedisClock, redis: Client, stop: asyncio.Event, every_s: float = 30.0) -> None:
    """Re-measure the offset every `every_s` (every second while Redis is unreachable) until
    `stop` is set. Stops on the event rather than by cancellation, which an in-flight Redis
    command may absorb."""
    while not stop.is_set():
        try:
            await clock.sync(redis)
            wait_s = every_s
        except (RedisError, OSError):
            wait_s = 1.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
