"""HTTP handlers of the native API: `POST /v1/infer`, `GET` and `DELETE /v1/requests/{id}`,
health checks.

Each handler validates, routes and hands over to the queue and the waiters; all Redis I/O is
behind `RequestQueue` and `ResultReader`. Errors are raised as `RequestError`s and rendered by
the error middleware in `app.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from core import protocol
from core.errors import (
    AlreadyFinished,
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    QueueFull,
    RequestError,
    for_request,
    from_code,
)

from .metrics import METRICS
from .routing import Route
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


IDEMPOTENCY_HEADER = "Idempotency-Key"
QUEUE_INFO_HEADER = "X-Tiergate-Queue-Info"  # a client sends it (any value) to learn its queue position
REPLAY_POLL_S = 0.05
REPLAYED_HEADER = "Idempotent-Replayed"


async def infer(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[STATE]
    body = decode_body(await request.read())
    route = state.router.route(body.model, len(body.input), body.tier, body.region, body.deadline_ms)
    try:
        admission = state.admit(route)
    except QueueFull:
        request.app[METRICS].refused(route.tier)
        raise
    request_id = protocol.new_request_id()
    first = await claim_idempotency(request, request_id)
    if first is not None:
        return await _replay(state, first, route, body.wait)
    now_ms = state.clock.now_ms()
    envelope = protocol.Envelope(
        id=request_id,
        model=body.model,
        input=body.input,
        tier=route.tier,
        region=route.region,
        reply_to=state.gateway_id,
        deadline_at_ms=int(now_ms) + route.deadline_ms,
        sent_at_ms=round(now_ms, 3),
    )
    if body.wait:
        response = await _run_and_wait(request, state, envelope, route, started)
    else:
        response = await _accept(state, envelope, route)
    if QUEUE_INFO_HEADER in request.headers:
        response.headers["X-Tiergate-Queue-Position"] = str(admission.position)
        wait_ms = "unknown" if admission.wait_ms is None else f"{admission.wait_ms:.1f}"
        response.headers["X-Tiergate-Estimated-Wait-Ms"] = wait_ms
    return response


def _queued(envelope: protocol.Envelope, route: Route, reply_to: str = "") -> protocol.Accepted:
    """Where `envelope` is queued: what `RequestQueue.cancel` needs."""
    return protocol.Accepted(
        id=envelope.id,
        model=envelope.model,
        tier=route.tier,
        deadline_at_ms=envelope.deadline_at_ms,
        region=route.region,
        reply_to=reply_to,
    )


async def _accept(state: GatewayState, envelope: protocol.Envelope, route: Route) -> web.Response:
    """Queue an async request with its `Accepted` state; answer 202 with where to find it."""
    accepted = _queued(envelope, route, reply_to=state.gateway_id)
    key = protocol.accepted_key(envelope.id)
    state_entry = (key, protocol.encoder.encode(accepted), state.settings.gateway.result_ttl_s)
    state.waiters.accept(envelope.id, route.tier, route.deadline_ms / 1000.0)  # before: its reply may come first
    try:
        entry_id = await state.queue.enqueue(route.stream, protocol.encoder.encode(envelope), state_entry)
    except BaseException:
        state.waiters.take_async(envelope.id)
        raise
    # The stream entry id is Redis's answer to the XADD, so the record written with it cannot
    # hold it. It is written again with the id in the next tick's pipeline, alongside whatever
    # else that tick sends and never waited on: no round trip of its own on this request's path.
    # A DELETE in between finds no entry id and cancels through the workers' cancel channel only.
    state.queue.restate(key, protocol.encoder.encode(msgspec.structs.replace(accepted, entry_id=entry_id.decode())))
    log.info("request accepted", extra={"id": envelope.id, "model": envelope.model, "tier": route.tier})
    return json_response({"id": envelope.id, "status_url": f"/v1/requests/{envelope.id}"}, status=202)


async def wait_for_result(request: web.Request, route: Route, envelope: protocol.Envelope) -> protocol.Result:
    """Queue `envelope` and wait for its result, counted in flight meanwhile. A failure is
    counted and raised carrying the request id; the caller counts a success."""
    state, metrics = request.app[STATE], request.app[METRICS]
    waiting = state.waiters.add(envelope.id, route.deadline_ms / 1000.0)
    metrics.begin(route.tier)
    enqueued = state.queue.enqueue(route.stream, protocol.encoder.encode(envelope))
    try:
        await asyncio.shield(enqueued)  # a hang-up leaves the XADD running: its cancel needs the entry id
        reply = await waiting
    except asyncio.CancelledError:
        state.waiters.discard(envelope.id)
        hung_up(request, route, envelope, enqueued, keep=IDEMPOTENCY_HEADER in request.headers)
        raise
    except BaseException as exc:
        state.waiters.discard(envelope.id)
        metrics.interrupted(route.tier, exc)
        _mark(exc, envelope.id)
        raise
    if isinstance(reply, protocol.Failure):
        metrics.failed(route.tier, reply.code, reply.pool)
        raise for_request(from_code(reply.code, reply.message), envelope.id)
    return reply


async def _run_and_wait(
    request: web.Request, state: GatewayState, envelope: protocol.Envelope, route: Route, started: float
) -> web.Response:
    reply = await wait_for_result(request, route, envelope)
    total_ms = (time.perf_counter() - started) * 1000.0
    request.app[METRICS].done(reply, total_ms)
    log.info(
        "request done",
        extra={
            "id": envelope.id,
            "model": envelope.model,
            "tier": route.tier,
            "pool": reply.pool,
            "total_ms": round(total_ms, 3),
            "queue_ms": reply.queue_ms,
            "worker": reply.worker,
            "batch_size": reply.batch_size,
        },
    )
    return json_response(result_body(state, reply, total_ms))


def hung_up(
    request: web.Request,
    route: Route,
    envelope: protocol.Envelope,
    enqueued: asyncio.Future[bytes],
    keep: bool = False,
) -> None:
    """The client went away before its answer: cancel its request in the background (a worker
    that has not started it skips it) and count it cancelled, once. `keep`: the request carries
    an `Idempotency-Key`, so a retry may come back for its outcome: it runs, and is not counted."""
    metrics = request.app[METRICS]
    if keep:
        metrics.abandon(route.tier)
        return
    metrics.cancelled(route.tier)
    request.app[STATE].queue.cancel_soon(_queued(envelope, route), enqueued)
    log.info("request cancelled", extra={"id": envelope.id, "tier": route.tier, "reason": "client went away"})


def _mark(exc: BaseException, request_id: str) -> None:
    if isinstance(exc, RequestError):
        exc.request_id = request_id


async def claim_idempotency(request: web.Request, request_id: str) -> str | None:
    """With an `Idempotency-Key` header: None when this request is the first with that key (it
    runs), else the id of the first one (whose outcome this retry gets)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise InvalidRequest(f"the {IDEMPOTENCY_HEADER} header must be 1 to 255 characters, not {len(key)}")
    state = request.app[STATE]
    return await state.queue.claim_idempotency(key, request_id, state.settings.gateway.result_ttl_s)


async def first_result(state: GatewayState, first_id: str, route: Route) -> protocol.Result:
    """The result of the first request sent with an idempotency key, waiting for it while it runs
    (a rare path: it polls the stored answer rather than holding a waiter in another gateway)."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + route.deadline_ms / 1000.0
    while True:
        stored = await state.queue.stored(first_id)
        if isinstance(stored, protocol.Result):
            return stored
        if isinstance(stored, protocol.Failure):
            raise for_request(from_code(stored.code, stored.message), first_id)
        if loop.time() >= give_up_at:
            raise DeadlineExceeded(f"the first request with this idempotency key ({first_id}) has not finished")
        await asyncio.sleep(REPLAY_POLL_S)


async def _replay(state: GatewayState, first_id: str, route: Route, wait: bool) -> web.Response:
    """Answer a retry with the first request's outcome."""
    if not wait:
        return json_response({"id": first_id, "status_url": f"/v1/requests/{first_id}"}, status=202)
    result = await first_result(state, first_id, route)
    response = json_response(result_body(state, result, result.finished_at_ms - result.enqueued_at_ms))
    response.headers[REPLAYED_HEADER] = "true"
    return response


async def request_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = request.match_info["id"]
    stored = await state.queue.stored(request_id)
    if stored is None:
        raise NotFound(f"no request with id {request_id!r} (unknown, or its result expired)")
    if isinstance(stored, protocol.Accepted):
        return json_response({"id": stored.id, "status": "queued", "model": stored.model, "tier": stored.tier})
    if isinstance(stored, protocol.Failure):
        if stored.code == Cancelled.code:
            return json_response({"id": stored.id, "status": "cancelled"})
        error = from_code(stored.code, stored.message)
        return json_response(
            {"id": stored.id, "status": "failed", "error": {"type": error.code, "message": error.message}}
        )
    total_ms = stored.finished_at_ms - stored.enqueued_at_ms
    return json_response(result_body(state, stored, total_ms, status="done"))


async def cancel_request(request: web.Request) -> web.Response:
    """`DELETE /v1/requests/{id}`: cancel a request sent with `"wait": false`, from any gateway.

    200 once it is cancelled (again: a second DELETE finds it cancelled); 409 when it already
    has its answer; 404 when the id is unknown, expired, or a waited request's (those have no
    stored state: closing their connection cancels them). Anyone who knows an id may cancel it.
    """
    state = request.app[STATE]
    request_id = request.match_info["id"]
    stored = await state.queue.stored(request_id)
    if stored is None:
        raise NotFound(f"no request with id {request_id!r} to cancel (unknown, waited on, or its result expired)")
    if isinstance(stored, protocol.Accepted):
        if not stored.region:  # recorded by an older gateway: its region is most likely the default
            stored = msgspec.structs.replace(stored, region=state.settings.gateway.region)
        stored = await state.queue.cancel(stored)
    if isinstance(stored, protocol.Failure) and stored.code == Cancelled.code:
        log.info("request cancelled", extra={"id": request_id, "tier": stored.tier, "reason": "DELETE"})
        return json_response({"id": request_id, "status": "cancelled"})
    outcome = "done" if isinstance(stored, protocol.Result) else "failed"
    raise AlreadyFinished(f"request {request_id} already finished ({outcome}); there is nothing to cancel")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if await state.queue.ping():
        return json_response({"status": "ready", "gateway": state.gateway_id})
    return json_response(
        {"status": "unavailable", "error": {"type": "redis_unavailable", "message": "Redis is unreachable"}}, status=503
    )
