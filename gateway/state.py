"""The per-process gateway state handlers reach through `request.app[STATE]`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from .clock import RedisClock
from .queue import RequestQueue
from .results import Waiters
from .routing import Router
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


STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)
