"""Observability endpoints: `GET /metrics` (Prometheus text), `GET /v1/slo` (per-tier windows
merged from every gateway through Redis), `GET /dashboard` and its static assets (`/static/`),
all served by the gateway itself. Redis I/O goes through `SloStore`; the window math is in `slo`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from core.errors import BackendUnavailable

from . import slo
from .http_shared import json_response
from .metrics import METRICS, SLO_STORE
from .state import STATE

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {path.name: path for path in STATIC_DIR.iterdir() if path.is_file()}
SLO_CACHE: web.AppKey[dict[str, Any]] = web.AppKey("slo_cache", dict)  # set empty by the app's builder


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def slo_report(request: web.Request) -> web.Response:
    app = request.app
    state, gauges, cache = app[STATE], app[METRICS], app[SLO_CACHE]
    now = time.monotonic()
    if cache.get("at", -1.0) + state.settings.metrics.slo_cache_s > now and "report" in cache:
        return json_response(cache["report"])
    try:
        snapshot = await app[SLO_STORE].snapshot(int(state.clock.now_ms() // 1000), list(state.settings.tiers))
    except (RedisError, OSError) as exc:
        raise BackendUnavailable(f"Redis is unreachable, no SLO report: {exc}") from exc
    settings = state.settings
    replicas: dict[str, int] = {}
    for pool in settings.pools.values():
        replicas[pool.processor] = replicas.get(pool.processor, 0) + pool.replicas
    report = slo.report(snapshot, {name: tier.slo for name, tier in settings.tiers.items()}, replicas)
    for tier, body in report["tiers"].items():
        body["queue"] = gauges.queues.get(tier, {"depth": 0, "lag": 0, "pending": 0})
    report["gateway"] = state.gateway_id
    cache.update(at=now, report=report)
    return json_response(report)


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.FileResponse:
    """The dashboard's assets, by name from a fixed list: no path from a request reaches the disk."""
    path = STATIC_FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


ROUTES = [
    web.get("/metrics", metrics),
    web.get("/v1/slo", slo_report),
    web.get("/dashboard", dashboard),
    web.get("/static/{name}", static_file),
]
