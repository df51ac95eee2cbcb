"""Stopping background loops: ask through an Event, wait, and cancel only what is still late.

Both gateways and workers use it; cancelling a task mid Redis command is the last resort,
because an in-flight command may absorb the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError


async def join(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for tasks that were asked to stop; cancel any still running after `timeout_s`."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def every(interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and every `interval_s` until `stop` is set; a step that fails with a Redis
    or socket error is skipped (the next one retries), anything else propagates."""
    while not stop.is_set():
        with contextlib.suppress(RedisError, OSError):
            await step()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
