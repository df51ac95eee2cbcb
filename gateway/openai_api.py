"""The OpenAI-compatible front door: `POST /v1/chat/completions`, `/v1/completions`,
`/v1/embeddings` and `GET /v1/models`, in the request and response shapes the official SDK
sends and reads. Requests go through the same routing and admission as the native API, and
each is owned by its `Call` (gateway/calls.py); errors come back in OpenAI's error shape. No
Redis I/O of its own.
"""

from __future__ import annotations

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
from .calls import CALLS, Call, Calls, gather_results
from .http_shared import QUEUE_INFO_HEADER, REPLAYED_HEADER, idempotency_key, json_response
from .openai_schema import decode_chat, decode_completion, decode_embedding, message_text
from .openai_stream import StreamCall, error_type, stream_reply, usage
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


def _route(request: web.Request, calls: Calls, model: str, chars: int, service_tier: str | None) -> Route:
    route = calls.state.router.route(model, chars, pick_tier(request, calls.state, service_tier))
    deadline_ms = client_deadline_ms(request, route.deadline_ms)
    if deadline_ms != route.deadline_ms:
        route = dataclasses.replace(route, deadline_ms=deadline_ms)
    request[ADMISSION] = calls.admit(route)
    return route


def _early(request: web.Request, route: Route) -> tuple[str, str] | None:
    """The stream's tier and SSE comment with the queue position, for a client that sent the
    queue-info header: the stream opens with it, before the first token."""
    if QUEUE_INFO_HEADER not in request.headers:
        return None
    admission: Admission = request[ADMISSION]
    wait_ms = "unknown" if admission.wait_ms is None else f"{admission.wait_ms:.1f}"
    return route.tier, f"queue position={admission.position} estimated_wait_ms={wait_ms}"


def _with_headers(response: web.Response, result: protocol.Result, call: Call) -> web.Response:
    response.headers.update(_timing_headers([result], call.total_ms))
    if call.replayed:
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
    state, calls = request.app[STATE], request.app[CALLS]
    body = decode_chat(state.settings, await request.read())
    messages = tuple(protocol.ChatMessage(m.role, message_text(m.content), m.name or "") for m in body.messages)
    text = next((m.content for m in reversed(messages) if m.role == "user"), messages[-1].content)
    route = _route(request, calls, body.model, sum(len(m.content) for m in messages), body.service_tier)
    env = calls.envelope(
        route,
        body.model,
        text,
        stream=bool(body.stream),
        max_tokens=body.max_completion_tokens or body.max_tokens or 0,
        messages=messages,
    )
    tier_name = body.service_tier if body.service_tier not in (None, "auto") else _service_tier_name(state, route.tier)
    if body.stream:
        info = StreamCall("chat", env.id, body.model, int(time.time()), body.include_usage, tier_name)
        streaming = calls.call(route, env, started, None, request.headers)
        return await stream_reply(request, info, streaming, _early(request, route))
    call = calls.call(route, env, started, idempotency_key(request), request.headers)
    result = await call.result()
    total_ms = call.total_ms
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
    return _with_headers(json_response(answer), result, call)


@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    calls = request.app[CALLS]
    body, prompt = decode_completion(calls.state.settings, await request.read())
    route = _route(request, calls, body.model, len(prompt), body.service_tier)
    env = calls.envelope(route, body.model, prompt, stream=bool(body.stream), max_tokens=body.max_tokens or 0)
    if body.stream:
        info = StreamCall("completion", env.id, body.model, int(time.time()), body.include_usage, None)
        streaming = calls.call(route, env, started, None, request.headers)
        return await stream_reply(request, info, streaming, _early(request, route))
    call = calls.call(route, env, started, idempotency_key(request), request.headers)
    result = await call.result()
    total_ms = call.total_ms
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
    return _with_headers(json_response(answer), result, call)


def _vector(values: str | list[float], encoding: str | None) -> list[float] | str:
    vector = list(values) if isinstance(values, list) else []
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@openai_errors
async def embeddings(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    calls = request.app[CALLS]
    body, texts = decode_embedding(calls.state.settings, await request.read())
    routes = [_route(request, calls, body.model, len(text), None) for text in texts]
    # Every input is its own request; all of them join the same tick's pipeline, and each one
    # answered counts with the latency of the whole answer.
    inputs = [
        calls.call(route, calls.envelope(route, body.model, text), started, None, request.headers)
        for route, text in zip(routes, texts, strict=True)
    ]
    results = await gather_results(inputs)
    total_ms = inputs[0].total_ms
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
