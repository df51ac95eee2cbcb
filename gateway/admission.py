"""Admission at the front door: pure decisions from a tier's last sampled state, no I/O.

A request is refused at once (429 with Retry-After) when its tier's queue is at its limit, or
when the estimated wait (backlog / the live workers' capacity for this tier) plus the expected
service time exceeds `DEADLINE_SHARE` of its deadline. With no live worker heartbeat the capacity
is unknown and only the queue limit applies: requests queue for workers that are starting.
The same heartbeats tell /readyz which pools have no live worker yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from core.errors import QueueFull
from core.protocol import HEARTBEAT_STALE_MS, Heartbeat

# Admit only what the estimate says will finish within this share of its deadline. The rest of
# the deadline absorbs what the estimate cannot see: a processor's variable service time, a
# capacity that changed since the last heartbeat, the reply's way back. Admitting up to the whole
# deadline would let the last admitted requests miss it whenever the estimate is a little high.
DEADLINE_SHARE = 0.8


@dataclass(slots=True, frozen=True)
class Capacity:
    """What the live workers of one stream can do together."""

    per_s: float  # requests a second
    service_ms: float  # expected service time of a request (the slowest live worker's batch)
    workers: int


def capacity_from(beats: Iterable[Heartbeat], now_ms: float) -> Capacity | None:
    """Sum the fresh heartbeats of one stream; None when no worker is known to be alive."""
    live = [b for b in beats if now_ms - b.at_ms < HEARTBEAT_STALE_MS]
    if not live:
        return None
    return Capacity(
        per_s=sum(b.capacity_per_s for b in live), service_ms=max(b.service_ms for b in live), workers=len(live)
    )


def pools_without_workers(pools: Iterable[str], beats: Mapping[str, Iterable[Heartbeat]], now_ms: float) -> list[str]:
    """Those of `pools` (sorted) that no worker has heartbeated for lately, on any stream."""
    live = {b.pool for stream_beats in beats.values() for b in stream_beats if now_ms - b.at_ms < HEARTBEAT_STALE_MS}
    return sorted(set(pools) - live)


class Admission(msgspec.Struct, frozen=True):  # one per request: a Struct is built in C
    position: int  # requests ahead of this one
    wait_ms: float | None  # estimated queue wait, None when unknown


def admit(tier: str, backlog: int, capacity: Capacity | None, max_queue: int, deadline_ms: int) -> Admission:
    """Admit a request or raise `QueueFull` saying which limit it hit and when to retry."""
    if backlog >= max_queue:
        raise QueueFull(
            f"the {tier} queue is full ({backlog} requests waiting, limit {max_queue}); retry later",
            retry_after_s=_drain_s(capacity, backlog - max_queue + 1),
        )
    if capacity is None or capacity.per_s <= 0:
        return Admission(position=backlog, wait_ms=None)
    wait_ms = backlog / capacity.per_s * 1000.0
    budget_ms = deadline_ms * DEADLINE_SHARE
    if wait_ms + capacity.service_ms > budget_ms:
        excess = math.ceil((wait_ms + capacity.service_ms - budget_ms) / 1000.0 * capacity.per_s)
        raise QueueFull(
            f"deadline of {deadline_ms} ms cannot be met on the {tier} tier: about {wait_ms:.0f} ms of queue "
            f"ahead ({backlog} requests) plus {capacity.service_ms:.1f} ms of service",
            retry_after_s=_drain_s(capacity, excess),
        )
    return Admission(position=backlog, wait_ms=wait_ms)


def projected_backlog(sampled: float, capacity: Capacity | None, elapsed_s: float) -> float:
    """The backlog `elapsed_s` after it was `sampled`, drained meanwhile at the workers' capacity."""
    if capacity is None:
        return sampled
    return max(0.0, sampled - capacity.per_s * elapsed_s)


def _drain_s(capacity: Capacity | None, requests: int) -> int:
    """Whole seconds until `requests` more have drained (at least 1)."""
    if capacity is None or capacity.per_s <= 0:
        return 1
    return max(1, math.ceil(requests / capacity.per_s))
