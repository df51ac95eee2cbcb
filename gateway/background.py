"""Stopping background loops: ask through an Event, wait, and cancel only what is still late.

Both gateways and workers use it; cancelling a task mid Redis command is the last resort,
because an in-flight command may absorb the cancellation.
"""

from __future__ import annotations

import asyncio


async def join(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for tasks that were asked to stop; cancel any still running after `timeout_s`."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
