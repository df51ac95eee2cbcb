"""Builds the aiohttp application and runs it: routes, each behind the front (errors as JSON), and
the background tasks (reply reader, clock sync) in `cleanup_ctx`. `serve` binds (`--port 0` works; an
address it cannot listen on raises `ListenError`; with `reuse_port` several processes share one
port), prints one ready line with the real URL, and shuts down gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from core import protocol, redis_client
from core.background import every, join
from core.clock import RedisClock, keep_synced
from core.errors import (
    INTERNAL_ERROR,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    BackendUnavailable,
    ListenError,
    QueueFull,
    RequestError,
    Unauthorized,
)
from core.heap import freeze_startup_heap
from core.protocol import OPEN_GRANT
from core.settings import BatchSettings, Settings
from core.tracing import start as start_tracing

from . import auth, batch_api, dashboard, handlers, metrics, openai_api, openapi
from .admission import capacity_from, pools_without_workers
from .batch_lines import BATCH_TIER
from .batch_runner import BatchRunner
from .batch_store import BatchStore
from .calls import CALLS, Calls
from .http_shared import GATEWAY_HEADER, GRANT, json_response
from .openai_stream import error_body
from .queue import RequestQueue
from .results import READ_BLOCK_MS, ResultReader, Waiters
from .routing import Router
from .state import STATE, GatewayState
from .tenant_store import TenantStore

log = logging.getLogger(__name__)

CLOCK_SYNC_S = 30.0
SAMPLE_S = 0.5  # how often admission's view of queues and worker capacity is refreshed
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, path: str = "") -> web.Response:
    """The native error shape, or OpenAI's on the OpenAI-compatible paths."""
    if path in openai_api.PATHS or path.startswith(batch_api.PREFIXES):
        return json_response(error_body(status, code, message), status=status)
    return json_response({"error": {"type": code, "message": message}}, status=status)


_HTTP_CODES = {404: NOT_FOUND, 405: "method_not_allowed", 413: PAYLOAD_TOO_LARGE}


def front(handler: Handler, body_timeout_s: float, gateway_id: str, keys: bool) -> Handler:
    """`handler` behind the front every request passes: it gives the request the open `Grant`, or
    with `keys` on its key's (`auth.attach_grant`), reads its body within `body_timeout_s`, renders
    every error as JSON, and names the gateway process in every answer (`GATEWAY_HEADER`: which of
    the processes sharing a port gave it; a streamed answer, sent before it returns, names it
    itself). Each route's handler is wrapped, rather than the app given a middleware: an app with
    any middleware also runs one of aiohttp's own, nine Python calls more on every request."""

    async def answer(request: web.Request) -> web.StreamResponse:
        request[GRANT] = OPEN_GRANT
        response: web.StreamResponse
        try:
            # No body, or one that arrived with its headers (nearly all): nothing to wait for.
            late = None if request.content.is_eof() else await _read_body(request, body_timeout_s)
            if late is not None:
                response = late
            else:
                if keys:
                    await auth.attach_grant(request)
                response = await handler(request)
        except Exception as exc:
            if isinstance(exc, web.HTTPException) and exc.status < 400:
                exc.headers[GATEWAY_HEADER] = gateway_id
                raise
            response = _error_answer(request, exc)
        if not response.prepared:
            response.headers[GATEWAY_HEADER] = gateway_id
        return response

    return answer


async def unmatched(request: web.Request) -> web.StreamResponse:
    """Every path and method no other route takes (the last route): 405 with the methods its path
    has, or 404, raised for the front to answer in JSON like every other error."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


NATIVE_ROUTES = [
    web.post("/v1/infer", handlers.infer),
    web.get("/v1/requests/{id}", handlers.request_status),
    web.delete("/v1/requests/{id}", handlers.cancel_request),
    web.get("/v1/usage", handlers.usage_report),
    web.get("/healthz", handlers.healthz),
    web.get("/readyz", handlers.readyz),
]


async def _read_body(request: web.Request, timeout_s: float) -> web.Response | None:
    """Read the body within `timeout_s`, or the 408 that closes the connection: a client that
    sends its body slowly holds a connection, never a handler, for longer. A file upload is read
    in parts by its handler, against its own limit and timer."""
    upload = request.path == batch_api.UPLOAD_PATH and request.method == "POST"
    if not request.body_exists or upload:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()  # cached: the handler's own read() returns it
    except TimeoutError:
        response = error_response(
            408, "request_timeout", f"the body did not arrive within {timeout_s:g} s", request.path
        )
        response.force_close()
        return response
    return None


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to what a handler raised: a `RequestError` as its status and code, aiohttp's
    HTTP errors in the same shape, anything else as a logged 500."""
    if isinstance(exc, RequestError):
        log.info("request refused", extra=exc.log_fields(request.path))
        response = error_response(exc.status, exc.code, exc.message, request.path)
        if isinstance(exc, QueueFull):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[STATE].settings.gateway.max_body_bytes
        return error_response(413, PAYLOAD_TOO_LARGE, f"the body exceeds the limit of {limit} bytes", request.path)
    if isinstance(exc, web.HTTPException):
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, f"{exc.reason}: {request.method} {request.path}", request.path)
        if "Allow" in exc.headers:  # a 405 names the methods the path has
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    log.error("unhandled error", exc_info=exc, extra={"path": request.path})
    return error_response(500, INTERNAL_ERROR, "internal error; the gateway log has the details", request.path)


def new_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def build_app(
    settings: Settings, redis_url: str, gateway_id: str | None = None, tiers: Sequence[str] | None = None
) -> web.Application:
    """The gateway's aiohttp application; `tiers` restricts it to those tiers (`Router`)."""
    gateway_id = gateway_id or new_gateway_id()
    app = web.Application(client_max_size=settings.gateway.max_body_bytes)
    app[openapi.OPENAPI] = openapi.document(settings, tiers)
    app[dashboard.SLO_CACHE] = {}
    routes = [*NATIVE_ROUTES, *openai_api.ROUTES, *batch_api.ROUTES, *openapi.ROUTES, *dashboard.ROUTES]
    routes.append(web.route("*", "/{path:.*}", unmatched))
    keys = settings.auth.mode == "keys"
    timeout_s = settings.gateway.body_timeout_s
    app.add_routes(
        web.RouteDef(r.method, r.path, front(r.handler, timeout_s, gateway_id, keys), r.kwargs) for r in routes
    )
    app.cleanup_ctx.append(_lifecycle(settings, redis_url, gateway_id, tiers))
    metrics.install(app, settings)  # after the lifecycle context: its tasks use the gateway's Redis
    return app


def _lifecycle(
    settings: Settings, redis_url: str, gateway_id: str, tiers: Sequence[str] | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        # Unreachable at start: taken for one server, so that it answers 503 until Redis is back.
        redis = await redis_client.connect(settings.redis, redis_url, assume_single=True)
        waiters = Waiters()
        state = GatewayState(
            settings=settings,
            gateway_id=gateway_id,
            redis=redis,
            router=Router(settings, tiers),
            queue=RequestQueue(redis, settings),
            waiters=waiters,
            clock=RedisClock(),
        )
        app[STATE] = state
        with contextlib.suppress(RedisError, OSError):  # unreachable: loaded by the first tick that needs it
            await state.queue.load()
        tenants = TenantStore(redis)
        app[auth.AUTH] = authenticator = auth.Authenticator(settings.auth, tenants)
        tracing = start_tracing(settings.tracing, "gateway", {"service.instance.id": gateway_id})
        calls = app[CALLS] = Calls(state, app[metrics.METRICS], tracing, tenants)
        reader = ResultReader(state.queue, gateway_id, waiters, calls.async_reply)
        store = app[batch_api.STORE] = BatchStore(redis, settings.batches)
        app[batch_api.INTAKE] = batch_api.Intake(settings.batches.max_uploading_bytes, app[metrics.METRICS].batch)
        runner = BatchRunner(calls, store, app[metrics.METRICS].batch)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(reader.run(stop)),
            asyncio.create_task(keep_synced(state.clock, redis, stop, CLOCK_SYNC_S)),
            asyncio.create_task(every(SAMPLE_S, stop, _sampler(state, app[metrics.METRICS]))),
            asyncio.create_task(every(settings.metrics.queue_sample_interval_s, stop, calls.sweep)),
        ]
        if settings.auth.mode == "keys":
            tasks.append(asyncio.create_task(every(auth.REFRESH_S, stop, authenticator.refresh)))
        if BATCH_TIER in state.router.tiers:  # a gateway serving the batch tier runs batches
            app[batch_api.RUNNER] = runner
            tasks += _running_batches(runner, settings.batches, stop)
        yield
        stop.set()
        await runner.close(settings.gateway.shutdown_grace_s)
        await join(tasks, timeout_s=READ_BLOCK_MS / 1000 + 1)
        waiters.fail_all(BackendUnavailable("the gateway is shutting down"))
        await calls.limits.drain()
        await state.queue.close()
        await reader.close()
        await redis.aclose()
        if tracing is not None:
            await asyncio.to_thread(tracing.close)  # its last spans' export may take a while

    return context


def _running_batches(runner: BatchRunner, batches: BatchSettings, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """The loops of a gateway that runs batches: its look for batches, and the adaptive pace's."""
    tasks = [asyncio.create_task(every(batches.poll_interval_s, stop, runner.look))]
    if batches.pace == "adaptive":
        tasks.append(asyncio.create_task(runner.loop_lag.run(stop)))
        tasks.append(asyncio.create_task(every(batches.pace_interval_s, stop, runner.steer)))
    return tasks


def _sampler(state: GatewayState, gauges: metrics.GatewayMetrics) -> Callable[[], Awaitable[None]]:
    """The gateway's one look at its queues: each served stream's length and its live workers'
    capacity for admission, and, every `queue_sample_interval_s`, every tier stream's group lag
    and pending entries for /metrics and the dashboard."""
    heartbeats = {lane.stream: protocol.heartbeat_key(lane.name) for lane in state.router.table()}
    # /readyz waits for these: every pool it routes to, less those that may scale to zero.
    pools = {p for lane in state.router.table() for p in lane.pools if not state.settings.pools[p].scales_to_zero()}
    groups_every_s = state.settings.metrics.queue_sample_interval_s
    groups_due = 0.0

    async def sample() -> None:
        nonlocal groups_due
        now = asyncio.get_running_loop().time()
        groups = list(gauges.queue_streams) if now >= groups_due else []
        sampled = await state.queue.sample(heartbeats, groups)
        now_ms = state.clock.now_ms()
        state.capacity = {stream: capacity_from(beats, now_ms) for stream, beats in sampled.beats.items()}
        if state.pools_waiting != []:  # ready once: a pool that loses its workers later does not
            state.pools_waiting = pools_without_workers(pools, sampled.beats, now_ms)  # unready every tier
        if groups:
            groups_due = now + groups_every_s
            gauges.observe_queues(state.queue.lengths, sampled.groups)

    return sample


async def _listen(runner: web.AppRunner, host: str, port: int, reuse_port: bool) -> None:
    """Bind and listen on host:port, or raise `ListenError` saying which address and why. With
    `reuse_port` the port is shared with other processes (SO_REUSEPORT: the kernel spreads new
    connections across them), and the process also listens on a free port of its own, where its
    /metrics are its alone."""
    sites = [web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)]
    if reuse_port:
        sites.append(web.TCPSite(runner, host, 0, reuse_address=True))
    for site in sites:
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ListenError(host, port, reason) from exc


def app_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner `serve` starts `app` with: its server's limits and timeouts."""
    gw = settings.gateway
    return web.AppRunner(
        app,
        shutdown_timeout=gw.shutdown_grace_s,
        access_log=None,
        keepalive_timeout=gw.keepalive_timeout_s,  # also closes a connection still sending its headers
        max_line_size=gw.max_header_bytes,
        max_field_size=gw.max_header_bytes,
        handler_cancellation=True,  # a client that hangs up frees its waiter now, not at its deadline
    )


async def serve(
    settings: Settings,
    redis_url: str,
    host: str,
    port: int,
    tiers: Sequence[str] | None = None,
    reuse_port: bool = False,
) -> None:
    """Run one gateway process until SIGTERM/SIGINT, then shut down gracefully; with `reuse_port`,
    one of several sharing `port`."""
    app = build_app(settings, redis_url, tiers=tiers)
    auth.warn_if_open(settings.auth)
    runner = app_runner(app, settings)
    await runner.setup()
    await _listen(runner, host, port, reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url, own_url = (f"http://{bound[0]}:{bound[1]}" for bound in (runner.addresses[0], runner.addresses[-1]))
    own_url = own_url if reuse_port else url  # with `reuse_port`, its own port is the last one bound
    state = app[STATE]
    ready = {
        "event": "ready",
        "url": url,
        "gateway": state.gateway_id,
        "tiers": list(state.router.tiers),
        "metrics_url": f"{own_url}/metrics",  # this process's own, even where the port is shared
    }
    print(msgspec.json.encode(ready).decode(), flush=True)
    freeze_startup_heap()
    log.info("gateway ready", extra={"url": url})
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping", extra={"in_flight": len(app[STATE].waiters)})
        with contextlib.suppress(Exception):
            await runner.cleanup()
        sys.stdout.flush()
