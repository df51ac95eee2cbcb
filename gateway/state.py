"""The per-process gateway state handlers reach through `request.app[STATE]`."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from redis.asyncio import Redis

from . import admission
from .clock import RedisClock
from .queue import RequestQueue
from .results import Waiters
from .routing import Route, Router
from .settings import Settings


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    gateway_id: str
    redis: Redis
    router: Router
    queue: RequestQueue
    waiters: Waiters
    clock: RedisClock
    capacity: dict[str, admission.Capacity | None] = field(default_factory=dict)  # per stream, sampled

    def admit(self, route: Route) -> admission.Admission:
        """Admission for a routed request from the last sampled backlog and worker capacity."""
        backlog = self.queue.lengths.get(route.stream, 0)
        return admission.admit(route.tier, backlog, self.capacity.get(route.stream), route.max_queue, route.deadline_ms)


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)
