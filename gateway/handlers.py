"""HTTP handlers of the native API: `POST /v1/infer`, `GET` and `DELETE /v1/requests/{id}`,
health checks.

Each handler decodes, routes, admits, hands the request to its `Call` (gateway/calls.py) and
renders the outcome; all Redis I/O is behind `RequestQueue` and `ResultReader`. Errors are
raised as `RequestError`s and rendered by the front in `app.py`.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from core import protocol
from core.clock import round_ms
from core.errors import CANCELLED, NOT_READY, REDIS_UNAVAILABLE, AlreadyFinished, Cancelled, NotFound, from_code

from . import usage
from .calls import CALLS, Call
from .http_shared import (
    QUEUE_INFO_HEADER,
    REPLAYED_HEADER,
    decode_json,
    grant_of,
    idempotency_key,
    json_response,
    placement,
)
from .metrics import USAGE_STORE
from .state import STATE, GatewayState

log = logging.getLogger(__name__)


class InferBody(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=128)]
    input: Annotated[str, Meta(min_length=1)]
    tier: Annotated[str, Meta(min_length=1)] | None = None
    deadline_ms: Annotated[int, Meta(gt=0, le=3_600_000)] | None = None
    wait: bool = True
    region: Annotated[str, Meta(min_length=1)] | None = None
    sensitivity: Annotated[str, Meta(min_length=1)] | None = None  # public, internal or restricted


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


def decode_body(raw: bytes) -> InferBody:
    body: InferBody = decode_json(_infer_decoder, raw)
    return body


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
        timings=Timings(result.queue_ms, result.service_ms, round_ms(total_ms)),
        slo_met=total_ms <= slo.latency_ms,
        energy_j=result.energy_j,
        cost=result.cost,
        status=status,
    )


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()
    calls = request.app[CALLS]
    state = calls.state  # one lookup in the app, not two: this runs on every request
    body = decode_body(await request.read())
    grant = grant_of(request)
    region, data_class = placement(grant, body.region, body.sensitivity)
    route = state.router.route(body.model, len(body.input), body.tier, region, body.deadline_ms, data_class)
    admission = calls.admit(route, body.model, grant)
    envelope = calls.envelope(route, body.model, body.input, grant)
    call = calls.call(route, envelope, started, idempotency_key(request), request.headers, grant)
    if body.wait:
        response = _answer(state, call, await call.result())
    else:
        request_id = await call.accept()
        response = json_response({"id": request_id, "status_url": f"/v1/requests/{request_id}"}, status=202)
    if QUEUE_INFO_HEADER in request.headers and not call.replayed:
        response.headers["X-Tiergate-Queue-Position"] = str(admission.position)
        wait_ms = "unknown" if admission.wait_ms is None else f"{admission.wait_ms:.1f}"
        response.headers["X-Tiergate-Estimated-Wait-Ms"] = wait_ms
    return response


def _answer(state: GatewayState, call: Call, result: protocol.Result) -> web.Response:
    """The answer of a waited request; a retry's (the first request's result, replayed) says so."""
    if not call.replayed:
        return json_response(result_body(state, result, call.total_ms))
    response = json_response(result_body(state, result, result.finished_at_ms - result.enqueued_at_ms))
    response.headers[REPLAYED_HEADER] = "true"
    return response


async def request_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = request.match_info["id"]
    stored = await state.queue.stored(request_id, grant_of(request).tenant)
    if stored is None:
        raise NotFound(f"no request with id {request_id!r} (unknown, or its result expired)")
    if isinstance(stored, protocol.Accepted):
        return json_response({"id": stored.id, "status": "queued", "model": stored.model, "tier": stored.tier})
    if isinstance(stored, protocol.Failure):
        if stored.code == Cancelled.code:
            return json_response({"id": stored.id, "status": CANCELLED})
        error = from_code(stored.code, stored.message)
        return json_response(
            {"id": stored.id, "status": "failed", "error": {"type": error.code, "message": error.message}}
        )
    total_ms = stored.finished_at_ms - stored.enqueued_at_ms
    return json_response(result_body(state, stored, total_ms, status="done"))


async def cancel_request(request: web.Request) -> web.Response:
    """`DELETE /v1/requests/{id}`: cancel a request sent with `"wait": false`, from any gateway.

    200 once it is cancelled (again: a second DELETE finds it cancelled); 409 when it already
    has its answer; 404 when the id is unknown, expired, a waited request's (those have no
    stored state: closing their connection cancels them), or, with API keys, another tenant's.
    """
    state = request.app[STATE]
    request_id = request.match_info["id"]
    stored = await state.queue.stored(request_id, grant_of(request).tenant)
    if stored is None:
        raise NotFound(f"no request with id {request_id!r} to cancel (unknown, waited on, or its result expired)")
    if isinstance(stored, protocol.Accepted):
        if not stored.region:  # recorded by an older gateway: its region is most likely the default
            stored = msgspec.structs.replace(stored, region=state.settings.gateway.region)
        stored = await state.queue.cancel(stored)
    if isinstance(stored, protocol.Failure) and stored.code == Cancelled.code:
        request.app[CALLS].limits.cancelled(request_id)
        log.info("request cancelled", extra={"id": request_id, "tier": stored.tier, "reason": "DELETE"})
        return json_response({"id": request_id, "status": CANCELLED})
    outcome = "done" if isinstance(stored, protocol.Result) else "failed"
    raise AlreadyFinished(f"request {request_id} already finished ({outcome}); there is nothing to cancel")


async def usage_report(request: web.Request) -> web.Response:
    """`GET /v1/usage?period=hour|day&from=&to=&tenant=`: requests, tokens, energy and cost per
    period, tenant, tier and model. A key of a tenant sees only its own; a caller without a
    tenant (an open gateway's) sees every tenant's."""
    state = request.app[STATE]
    now_s = int(state.clock.now_ms() // 1000)
    query = usage.parse_query(dict(request.query), now_s, grant_of(request).tenant)
    found = await request.app[USAGE_STORE].read(query.period, query.first, query.last)
    size = usage.PERIOD_S[query.period]
    body = {
        "period": query.period,
        "from": usage.iso(query.first * size),
        "to": usage.iso((query.last + 1) * size),
        "usage": usage.rows(query.period, found, query.tenant),
    }
    return json_response(body)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while Redis answers, once every pool this gateway routes to has had a live worker (a
    fresh heartbeat at a queue sample: a worker heartbeats once its model is loaded; pools that
    may scale to zero are not waited for), else 503."""
    state = request.app[STATE]
    if not await state.queue.ping():
        error = {"type": REDIS_UNAVAILABLE, "message": "Redis is unreachable"}
        return json_response({"status": "unavailable", "gateway": state.gateway_id, "error": error}, status=503)
    waiting = state.pools_waiting
    if waiting is None or waiting:
        message = (
            "the queues were not sampled yet"
            if waiting is None
            else f"no live worker yet in pool{'s' if len(waiting) > 1 else ''} {', '.join(waiting)}"
        )
        error = {"type": NOT_READY, "message": message}
        return json_response({"status": "starting", "gateway": state.gateway_id, "error": error}, status=503)
    return json_response({"status": "ready", "gateway": state.gateway_id})
