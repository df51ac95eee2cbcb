"""The per-process gateway state handlers reach through `request.app[STATE]`."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from aiohttp import web

from core.clock import RedisClock
from core.redis_client import Client
from core.settings import Settings

from . import admission
from .queue import RequestQueue
from .results import Waiters
from .routing import Route, Router


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    gateway_id: str
    redis: Client
    router: Router
    queue: RequestQueue
    waiters: Waiters
    clock: RedisClock
    capacity: dict[str, admission.Capacity | None] = field(default_factory=dict)  # per stream, sampled
    # Pools /readyz waits for (gateway/app.py): without a live worker at the last sample, None
    # before the first; once empty, it stays empty.
    pools_waiting: list[str] | None = None

    def admit(self, route: Route) -> admission.Admission:
        """Admission for a routed request from the backlog as it is now, projected from the last
        sample, and the workers' capacity.

        Between samples the backlog drains at the workers' capacity and grows by each request
        admitted here. Without the projection a tier at its limit would refuse everything until
        the next sample, however fast its pools drained, and leave them idle meanwhile."""
        stream, lengths, sampled_at = route.stream, self.queue.lengths, self.queue.sampled_at
        capacity = self.capacity.get(stream)
        now = asyncio.get_running_loop().time()
        backlog = admission.projected_backlog(lengths.get(stream, 0.0), capacity, now - sampled_at.get(stream, now))
        lengths[stream], sampled_at[stream] = backlog, now  # what stays if it is refused
        decision = admission.admit(route.tier, math.ceil(backlog), capacity, route.max_queue, route.deadline_ms)
        lengths[stream] = backlog + 1
        return decision

    def withdraw(self, route: Route) -> None:
        """Take back a request admitted to `route` and then refused (over its key's limits)."""
        self.queue.lengths[route.stream] = max(0.0, self.queue.lengths.get(route.stream, 0.0) - 1)


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)
