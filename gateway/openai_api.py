"""The OpenAI-compatible front door: `POST /v1/chat/completions`, `/v1/completions`,
`/v1/embeddings` and `GET /v1/models`, in the request and response shapes the official SDK
sends and reads. Requests go through the same routing, tick-pipelined queue and reply reader
as the native API; errors come back in OpenAI's error shape. No Redis I/O of its own.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from core import protocol
from core.errors import InvalidRequest, QueueFull, RequestError

from .admission import Admission
from .handlers import (
    QUEUE_INFO_HEADER,
    REPLAYED_HEADER,
    claim_idempotency,
    first_result,
    hung_up,
    json_response,
    wait_for_result,
)
from .metrics import METRICS
from .openai_schema import decode_chat, decode_completion, decode_embedding, message_text
from .openai_stream import StreamCall, error_type, stream_reply, usage
from .results import StreamEvent
from .routing import Route
from .state import STATE, GatewayState

log = logging.getLogger(__name__)
DEADLINE_HEADER = "X-Tiergate-Deadline-Ms"
SDK_TIMEOUT_HEADER = "X-Stainless-Read-Timeout"  # the official SDK's timeout, in seconds
ADMISSION: web.RequestKey[Admission] = web.RequestKey("admission", Admission)

TIER_HEADER = "X-Tiergate-Tier"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_PARAM = re.compile(r" - at `?\$\.?([^`]*)`?$")


def openai_errors(handler: Handler) -> Handler:
    """Render `RequestError`s as `{"error": {"message", "type", "param", "code"}}`."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            match = _PARAM.search(exc.message)
            log.info("request refused", extra=exc.log_fields(request.path))
            error = {
                "message": exc.message,
                "type": error_type(exc.status),
                "param": (match.group(1) or None) if match else None,
                "code": exc.code,
            }
            response = json_response({"error": error}, status=exc.status)
            if isinstance(exc, QueueFull):
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response

    return wrapped


def pick_tier(request: web.Request, state: GatewayState, service_tier: str | None) -> str | None:
    """The `X-Tiergate-Tier` header, else the tier `service_tier` maps to, else None (the model's own)."""
    header = request.headers.get(TIER_HEADER)
    if header:
        return header
    if service_tier is None or service_tier == "auto":
        return None
    tier = state.settings.openai.service_tiers.get(service_tier)
    if tier is None:
        known = ", ".join(["auto", *state.settings.openai.service_tiers])
        raise InvalidRequest(f"unknown service_tier {service_tier!r} (expected one of {known}) - at `$.service_tier`")
    return tier


def _service_tier_name(state: GatewayState, tier: str) -> str | None:
    return next((name for name, t in state.settings.openai.service_tiers.items() if t == tier), None)


def client_deadline_ms(request: web.Request, tier_default_ms: int) -> int:
    """`X-Tiergate-Deadline-Ms` when sent; else the SDK's own read timeout, which the official
    SDK sends on every request, when it is shorter than the tier's default; else that default."""
    explicit = request.headers.get(DEADLINE_HEADER)
    if explicit is not None:
        value = _positive(explicit, DEADLINE_HEADER, "a whole number of milliseconds")
        return min(int(value), 3_600_000)
    sdk = request.headers.get(SDK_TIMEOUT_HEADER)
    if sdk is not None:
        return min(tier_default_ms, max(1, int(_positive(sdk, SDK_TIMEOUT_HEADER, "a number of seconds") * 1000)))
    return tier_default_ms


def _positive(text: str, header: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidRequest(f"the {header} header must be {what} above 0, not {text!r}")
    return value


def _route(request: web.Request, state: GatewayState, model: str, chars: int, service_tier: str | None) -> Route:
    route = state.router.route(model, chars, pick_tier(request, state, service_tier))
    deadline_ms = client_deadline_ms(request, route.deadline_ms)
    if deadline_ms != route.deadline_ms:
        route = dataclasses.replace(route, deadline_ms=deadline_ms)
    try:
        request[ADMISSION] = state.admit(route)
    except QueueFull:
        request.app[METRICS].refused(route.tier)
        raise
    return route


def _queue_comment(request: web.Request) -> str | None:
    """The SSE comment with the queue position, for a client that sent the queue-info header."""
    if QUEUE_INFO_HEADER not in request.headers:
        return None
    admission: Admission = request[ADMISSION]
    wait_ms = "unknown" if admission.wait_ms is None else f"{admission.wait_ms:.1f}"
    return f"queue position={admission.position} estimated_wait_ms={wait_ms}"


def _envelope(state: GatewayState, route: Route, model: str, text: str, **extra: Any) -> protocol.Envelope:
    now_ms = state.clock.now_ms()
    return protocol.Envelope(
        id=protocol.new_request_id(),
        model=model,
        input=text,
        tier=route.tier,
        region=route.region,
        reply_to=state.gateway_id,
        deadline_at_ms=int(now_ms) + route.deadline_ms,
        sent_at_ms=round(now_ms, 3),
        **extra,
    )


async def _stream(
    request: web.Request, state: GatewayState, route: Route, env: protocol.Envelope, call: StreamCall
) -> web.StreamResponse:
    """Queue a streaming request and relay it; `stream_reply` counts its outcome."""
    events: asyncio.Queue[StreamEvent] = state.waiters.add_stream(env.id, route.deadline_ms / 1000.0)
    comment = _queue_comment(request)
    metrics = request.app[METRICS]
    metrics.begin(route.tier)
    enqueued = state.queue.enqueue(route.stream, protocol.encoder.encode(env))
    gone = functools.partial(hung_up, request, route, env, enqueued)
    try:
        await asyncio.shield(enqueued)  # a hang-up leaves the XADD running: its cancel needs the entry id
    except asyncio.CancelledError:
        state.waiters.discard(env.id)
        gone()
        raise
    except BaseException as exc:
        state.waiters.discard(env.id)
        metrics.interrupted(route.tier, exc)
        if isinstance(exc, RequestError):
            exc.request_id = env.id
        raise
    try:
        return await stream_reply(request, call, events, None if comment is None else (route.tier, comment), gone)
    finally:
        state.waiters.discard(env.id)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


def _answered(request: web.Request, result: protocol.Result, started: float) -> float:
    """Count a non-streamed answer done; its end-to-end latency (ms), as the client is told."""
    total_ms = _elapsed_ms(started)
    request.app[METRICS].done(result, total_ms)
    return total_ms


async def _run_once(
    request: web.Request, state: GatewayState, route: Route, env: protocol.Envelope, started: float
) -> tuple[protocol.Result, float, bool]:
    """Run `env` and count it, unless its `Idempotency-Key` names an earlier request: then that
    one's result, not counted again. The result, the latency to report, and whether it is a replay."""
    first = await claim_idempotency(request, env.id)
    if first is None:
        result = await wait_for_result(request, route, env)
        return result, _answered(request, result, started), False
    return await first_result(state, first, route), _elapsed_ms(started), True


def _with_headers(response: web.Response, result: protocol.Result, total_ms: float, replayed: bool) -> web.Response:
    response.headers.update(_timing_headers([result], total_ms))
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def _timing_headers(results: list[protocol.Result], total_ms: float) -> dict[str, str]:
    return {
        TIER_HEADER: results[0].tier,
        "X-Tiergate-Pool": results[0].pool,
        "X-Tiergate-Queue-Ms": f"{max(r.queue_ms for r in results):g}",
        "X-Tiergate-Service-Ms": f"{max(r.service_ms for r in results):g}",
        "X-Tiergate-Total-Ms": f"{total_ms:g}",
    }


def _tiergate(result: protocol.Result, total_ms: float) -> dict[str, Any]:
    return {
        "tier": result.tier,
        "pool": result.pool,
        "processor": result.processor,
        "batch_size": result.batch_size,
        "queue_ms": result.queue_ms,
        "service_ms": result.service_ms,
        "total_ms": total_ms,
        "energy_j": result.energy_j,
        "cost": result.cost,
    }


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body = decode_chat(state.settings, await request.read())
    messages = tuple(protocol.ChatMessage(m.role, message_text(m.content), m.name or "") for m in body.messages)
    text = next((m.content for m in reversed(messages) if m.role == "user"), messages[-1].content)
    route = _route(request, state, body.model, sum(len(m.content) for m in messages), body.service_tier)
    env = _envelope(
        state,
        route,
        body.model,
        text,
        stream=bool(body.stream),
        max_tokens=body.max_completion_tokens or body.max_tokens or 0,
        messages=messages,
    )
    tier_name = body.service_tier if body.service_tier not in (None, "auto") else _service_tier_name(state, route.tier)
    if body.stream:
        call = StreamCall(
            "chat", env.id, body.model, int(time.time()), started, body.include_usage, tier_name, route.tier
        )
        return await _stream(request, state, route, env, call)
    result, total_ms, replayed = await _run_once(request, state, route, env, started)
    answer = {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.output, "refusal": None},
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "service_tier": tier_name,
        "system_fingerprint": None,
        "tiergate": _tiergate(result, total_ms),
    }
    return _with_headers(json_response(answer), result, total_ms, replayed)


@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body, prompt = decode_completion(state.settings, await request.read())
    route = _route(request, state, body.model, len(prompt), body.service_tier)
    env = _envelope(state, route, body.model, prompt, stream=bool(body.stream), max_tokens=body.max_tokens or 0)
    if body.stream:
        call = StreamCall(
            "completion", env.id, body.model, int(time.time()), started, body.include_usage, None, route.tier
        )
        return await _stream(request, state, route, env, call)
    result, total_ms, replayed = await _run_once(request, state, route, env, started)
    answer = {
        "id": f"cmpl-{result.id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {"index": 0, "text": result.output, "finish_reason": result.finish_reason or "stop", "logprobs": None}
        ],
        "usage": usage(result),
        "tiergate": _tiergate(result, total_ms),
    }
    return _with_headers(json_response(answer), result, total_ms, replayed)


def _vector(values: str | list[float], encoding: str | None) -> list[float] | str:
    vector = list(values) if isinstance(values, list) else []
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@openai_errors
async def embeddings(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body, texts = decode_embedding(state.settings, await request.read())
    routes = [_route(request, state, body.model, len(text), None) for text in texts]
    # Every input is its own request; all of them join the same tick's pipeline.
    outcomes = await asyncio.gather(
        *(
            wait_for_result(request, route, _envelope(state, route, body.model, text))
            for route, text in zip(routes, texts, strict=True)
        ),
        return_exceptions=True,
    )
    results = [r for r in outcomes if isinstance(r, protocol.Result)]
    total_ms = _elapsed_ms(started)
    for result in results:  # each answered input counts, with the latency of the whole answer
        request.app[METRICS].done(result, total_ms)
    error = next((r for r in outcomes if isinstance(r, BaseException)), None)
    if error is not None:
        raise error
    prompt_tokens = sum(r.prompt_tokens for r in results)
    answer = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(r.output, body.encoding_format)}
            for i, r in enumerate(results)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    response = json_response(answer)
    response.headers.update(_timing_headers(results, total_ms))
    return response


@openai_errors
async def models(request: web.Request) -> web.StreamResponse:
    settings = request.app[STATE].settings
    served = sorted(
        {m for pool in settings.pools.values() if pool.region == settings.gateway.region for m in pool.models}
    )
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "tiergate"} for name in served]
    return json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
