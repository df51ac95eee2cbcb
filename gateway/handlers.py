"""HTTP handlers of the native API: `POST /v1/infer`, `GET /v1/requests/{id}`, health checks.

Each handler validates, routes and hands over to the queue and the waiters; all Redis I/O is
behind `RequestQueue` and `ResultReader`. Errors are raised as `RequestError`s and rendered by
the error middleware in `app.py`.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from . import protocol
from .errors import InvalidRequest, NotFound, QueueFull, from_code
from .metrics import METRICS
from .state import STATE, GatewayState

log = logging.getLogger(__name__)


class InferBody(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=128)]
    input: Annotated[str, Meta(min_length=1)]
    tier: str | None = None
    deadline_ms: Annotated[int, Meta(gt=0, le=3_600_000)] | None = None
    wait: bool = True
    region: str | None = None


class Timings(msgspec.Struct):
    queue_ms: float
    service_ms: float
    total_ms: float


class ResultBody(msgspec.Struct, omit_defaults=True):
    id: str
    model: str
    output: str | list[float]
    tier: str
    processor: str
    pool: str
    batch_size: int
    timings: Timings
    slo_met: bool
    energy_j: float
    cost: float
    status: str | None = None  # set on GET /v1/requests/{id}


_infer_decoder = msgspec.json.Decoder(InferBody)
_json = msgspec.json.Encoder()


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def decode_body(raw: bytes) -> InferBody:
    try:
        return _infer_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc


def result_body(state: GatewayState, result: protocol.Result, total_ms: float, status: str | None = None) -> ResultBody:
    slo = state.settings.tiers[result.tier].slo
    return ResultBody(
        id=result.id,
        model=result.model,
        output=result.output,
        tier=result.tier,
        processor=result.processor,
        pool=result.pool,
        batch_size=result.batch_size,
        timings=Timings(result.queue_ms, result.service_ms, round(total_ms, 3)),
        slo_met=total_ms <= slo.latency_ms,
        energy_j=result.energy_j,
        cost=result.cost,
        status=status,
    )


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[STATE]
    body = decode_body(await request.read())
    route = state.router.route(body.model, len(body.input), body.tier, body.region, body.deadline_ms)
    if state.queue.lengths.get(route.stream, 0) >= route.max_queue:
        request.app[METRICS].refused(route.tier)
        raise QueueFull(f"the {route.tier} queue is full ({route.max_queue} requests waiting); retry later")
    request_id = uuid.uuid4().hex
    deadline_at_ms = int(state.clock.now_ms()) + route.deadline_ms
    envelope = protocol.Envelope(
        id=request_id,
        model=body.model,
        input=body.input,
        tier=route.tier,
        region=route.region,
        reply_to=state.gateway_id,
        deadline_at_ms=deadline_at_ms,
    )
    payload = protocol.encoder.encode(envelope)
    maxlen = 2 * route.max_queue  # a memory bound only: admission refuses long before it trims
    if not body.wait:
        accepted = protocol.Accepted(id=request_id, model=body.model, tier=route.tier, deadline_at_ms=deadline_at_ms)
        state_entry = (
            protocol.request_key(request_id),
            protocol.encoder.encode(accepted),
            state.settings.gateway.result_ttl_s,
        )
        await state.queue.enqueue(route.stream, payload, maxlen, state_entry)
        log.info("request accepted", extra={"id": request_id, "model": body.model, "tier": route.tier})
        return json_response({"id": request_id, "status_url": f"/v1/requests/{request_id}"}, status=202)
    waiting = state.waiters.add(request_id, route.deadline_ms / 1000.0)
    metrics = request.app[METRICS]
    metrics.begin(route.tier)
    try:
        await state.queue.enqueue(route.stream, payload, maxlen)
    except BaseException as exc:
        state.waiters.discard(request_id)
        metrics.interrupted(route.tier, exc)
        raise
    try:
        reply = await waiting
    except BaseException as exc:
        metrics.interrupted(route.tier, exc)
        raise
    total_ms = (time.perf_counter() - started) * 1000.0
    if isinstance(reply, protocol.Failure):
        metrics.failed(route.tier, reply.code, reply.pool)
        raise from_code(reply.code, reply.message)
    metrics.done(reply, total_ms)
    log.info(
        "request done",
        extra={
            "id": request_id,
            "model": body.model,
            "tier": route.tier,
            "pool": reply.pool,
            "total_ms": round(total_ms, 3),
            "queue_ms": reply.queue_ms,
            "worker": reply.worker,
            "batch_size": reply.batch_size,
        },
    )
    return json_response(result_body(state, reply, total_ms))


async def request_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = request.match_info["id"]
    stored = await state.queue.stored(request_id)
    if stored is None:
        raise NotFound(f"no request with id {request_id!r} (unknown, or its result expired)")
    if isinstance(stored, protocol.Accepted):
        return json_response({"id": stored.id, "status": "queued", "model": stored.model, "tier": stored.tier})
    if isinstance(stored, protocol.Failure):
        error = from_code(stored.code, stored.message)
        return json_response(
            {"id": stored.id, "status": "failed", "error": {"type": error.code, "message": error.message}}
        )
    total_ms = stored.finished_at_ms - stored.enqueued_at_ms
    return json_response(result_body(state, stored, total_ms, status="done"))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if await state.queue.ping():
        return json_response({"status": "ready", "gateway": state.gateway_id})
    return json_response(
        {"status": "unavailable", "error": {"type": "redis_unavailable", "message": "Redis is unreachable"}}, status=503
    )
