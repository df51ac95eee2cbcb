"""Waiting until an instant on `time.perf_counter`: loosely on the event loop's timer, or to within
tens of microseconds for processors whose service time is exact. An event-loop timer has
millisecond granularity, so a sub-millisecond `asyncio.sleep` ends early or late; the precise
wait blocks the thread for the last stretch instead. No I/O (one prctl on Linux).
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
from collections.abc import Awaitable, Callable

from core.redis_client import WRITE_PASSES

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Block = Callable[[float], None]
Wait = Callable[[float], Awaitable[None]]  # wait_loosely or wait_until, with the real clock

COARSE_MARGIN_S = 0.002  # the event loop sleeps only while more than this remains
SPIN_S = 0.00025  # the last this long is spent reading the clock: a thread wakes tens to hundreds of µs late
YIELD_MARGIN_S = 0.0004  # the loop gets its passes only while more than this remains: they never make the end late
PR_SET_TIMERSLACK = 29  # linux/prctl.h
TIMER_SLACK_NS = 1000


async def wait_loosely(
    end_s: float, clock: Clock = time.perf_counter, sleep: Sleep = asyncio.sleep, block: Block = time.sleep
) -> None:
    """Sleep on the event loop until about `end_s`: within a millisecond, and other tasks run
    meanwhile; an instant already past returns at once, without a pass of the loop."""
    remaining = end_s - clock()
    if remaining > 0.0:
        await sleep(remaining)


async def wait_until(
    end_s: float, clock: Clock = time.perf_counter, sleep: Sleep = asyncio.sleep, block: Block = time.sleep
) -> None:
    """Return at `end_s`, or as soon after it as the OS runs this thread again.

    The event loop sleeps only the part beyond `COARSE_MARGIN_S`; the rest blocks the thread
    (`block` until `SPIN_S` before the end, then reading `clock`), so other tasks of this loop
    wait up to that long. A deterministic pool runs one request at a time: nothing is waiting
    that the margin would delay more than its processor would. A wait shorter than the margin
    first gives the loop `WRITE_PASSES` passes, so that the worker's next read and its last
    replies go out to Redis now rather than after the wait: a processor's host does its I/O
    while the processor computes, and the pool's pace stays its profile's.
    """
    remaining = end_s - clock()
    if remaining > COARSE_MARGIN_S:
        await sleep(remaining - COARSE_MARGIN_S)
    else:
        for _ in range(WRITE_PASSES):
            if end_s - clock() <= YIELD_MARGIN_S:
                break
            await sleep(0)
    block_until(end_s, clock, block)


def block_until(end_s: float, clock: Clock = time.perf_counter, block: Block = time.sleep) -> None:
    """Block the thread until `end_s`: `block` (a thread sleep) for all but the last `SPIN_S`,
    then spin on `clock`."""
    remaining = end_s - clock()
    if remaining > SPIN_S:
        block(remaining - SPIN_S)
    while clock() < end_s:
        pass


def lower_timer_slack(slack_ns: int = TIMER_SLACK_NS) -> bool:
    """Ask Linux to wake this thread's timed sleeps within `slack_ns` (default slack: 50 µs).
    Whether it took effect; elsewhere, or where prctl is missing, nothing happens."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_TIMERSLACK, slack_ns, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
