"""Stopping background loops: ask through an Event, wait, and cancel only what is still late; and
keeping Ctrl-C and SIGTERM off background threads.

Both gateways and workers use it; cancelling a task mid Redis command is the last resort,
because an in-flight command may absorb the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from .errors import BackendUnavailable

log = logging.getLogger(__name__)

# Redis out of reach, in redis-py's words, the socket's or tiergate's own: the next step retries.
UNREACHABLE = (RedisError, OSError, BackendUnavailable)


def leave_signals_to_the_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling (background) thread. The kernel gives a process's
    signal to any thread that does not block it; one given to a helper thread leaves the main
    thread asleep in its event loop's poll, which wakes only at its next timer (a Ctrl-C of
    `tiergate dlq` then waited for Redis's 5 s socket timeout)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


async def join(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for tasks that were asked to stop; cancel any still running after `timeout_s`."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def every(interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and every `interval_s` until `stop` is set. A step that fails is skipped and
    the next one runs on time: one that cannot reach Redis quietly (a warning when it starts to
    fail), any other failure logged with its traceback, so that one bad step never ends the loop
    a process depends on (sampling, heartbeats, flushing, a batch's lease)."""
    failing = False
    while not stop.is_set():
        try:
            await step()
            failing = False
        except UNREACHABLE as exc:
            if not failing:
                log.warning("background step failed, retrying", extra={"step": _name(step), "error": str(exc)})
            failing = True
        except Exception:
            log.exception("background step raised", extra={"step": _name(step)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def _name(step: Callable[[], Awaitable[object]]) -> str:
    return getattr(step, "__qualname__", repr(step))
