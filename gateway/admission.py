"""Admission at the front door: a pure decision from a tier's last sampled load, no I/O.

A request is refused at once (429 with Retry-After) when its tier's queue is at its limit, or
when the estimated wait (backlog / the live workers' capacity) plus the expected service time
already exceeds its deadline. With no live worker heartbeat the capacity is unknown and only the
queue limit applies: requests queue for workers that are starting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import QueueFull


@dataclass(slots=True, frozen=True)
class TierLoad:
    backlog: int = 0  # entries in the stream: waiting, or being run
    capacity_per_s: float = 0.0  # requests per second the live workers can finish (0: unknown)
    service_ms: float = 0.0  # expected service time of one request

    def wait_ms(self, position: int | None = None) -> float | None:
        """Estimated queue wait for the request at `position` (default: a new one)."""
        if self.capacity_per_s <= 0:
            return None
        ahead = self.backlog if position is None else position
        return ahead / self.capacity_per_s * 1000.0


@dataclass(slots=True, frozen=True)
class Admission:
    position: int  # requests ahead of this one
    wait_ms: float | None  # estimated queue wait, None when unknown


def admit(tier: str, load: TierLoad, max_queue: int, deadline_ms: int) -> Admission:
    """Admit a request or raise `QueueFull` saying which limit it hit and when to retry."""
    if load.backlog >= max_queue:
        retry_s = _drain_s(load, load.backlog - max_queue + 1)
        raise QueueFull(
            f"the {tier} queue is full ({load.backlog} requests waiting, limit {max_queue}); retry later",
            retry_after_s=retry_s,
        )
    wait_ms = load.wait_ms()
    if wait_ms is not None and wait_ms + load.service_ms > deadline_ms:
        raise QueueFull(
            f"deadline of {deadline_ms} ms cannot be met on the {tier} tier: about {wait_ms:.0f} ms of queue "
            f"ahead ({load.backlog} requests) plus {load.service_ms:.1f} ms of service",
            retry_after_s=_drain_s(
                load, math.ceil((wait_ms + load.service_ms - deadline_ms) / 1000 * load.capacity_per_s)
            ),
        )
    return Admission(position=load.backlog, wait_ms=wait_ms)


def _drain_s(load: TierLoad, requests: int) -> int:
    """Whole seconds until `requests` more have drained (at least 1)."""
    if load.capacity_per_s <= 0:
        return 1
    return max(1, math.ceil(requests / load.capacity_per_s))
