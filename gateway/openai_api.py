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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from core import protocol
from core.capabilities import fields_used
from core.errors import InvalidRequest, QueueFull, RequestError
from core.protocol import Grant

from .admission import Admission
from .calls import CALLS, Call, Calls, gather_results
from .http_shared import QUEUE_INFO_HEADER, REPLAYED_HEADER, grant_of, idempotency_key, json_response, placement
from .openai_forward import (
    chat_generation,
    chat_message,
    completion_generation,
    embedding_generation,
    refuse_unsupported,
)
from .openai_schema import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    decode_chat,
    decode_completion,
    decode_embedding,
)
from .openai_stream import StreamCall, error_body, stream_reply, usage
from .routing import Route
from .state import STATE, GatewayState

log = logging.getLogger(__name__)
DEADLINE_HEADER = "X-Tiergate-Deadline-Ms"
SDK_TIMEOUT_HEADER = "X-Stainless-Read-Timeout"  # the official SDK's timeout, in seconds
ADMISSION: web.RequestKey[Admission] = web.RequestKey("admission", Admission)

TIER_HEADER = "X-Tiergate-Tier"
REGION_HEADER = "X-Tiergate-Region"  # the request's data region (default: its key's, else the gateway's)
SENSITIVITY_HEADER = "X-Tiergate-Sensitivity"  # its data class (default: its key's, else public)
PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
# The service_tier values OpenAI's published response schema allows (openai-openapi 2.3.0); an
# answer names its tier only with one of these, and otherwise leaves the field out.
ANSWER_SERVICE_TIERS = frozenset({"scale", "default"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Headers = Mapping[str, str] | None


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
            param = (match.group(1) or None) if match else None
            response = json_response(error_body(exc.status, exc.code, exc.message, param), status=exc.status)
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


def _service_tier_name(state: GatewayState, asked: str | None, tier: str) -> str | None:
    """The `service_tier` an answer names: the one asked for, else the name of the tier it ran
    in; None (the field left out) unless OpenAI's response schema has that value."""
    if asked in (None, "auto"):
        asked = next((name for name, t in state.settings.openai.service_tiers.items() if t == tier), None)
    return asked if asked in ANSWER_SERVICE_TIERS else None


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


def _route(
    request: web.Request, calls: Calls, model: str, chars: int, service_tier: str | None, used: dict[str, str]
) -> Route:
    """Route, refuse what a pool that may receive it cannot do (before it is queued), admit."""
    settings = calls.state.settings
    headers = request.headers
    region, data_class = placement(grant_of(request), headers.get(REGION_HEADER), headers.get(SENSITIVITY_HEADER))
    tier = pick_tier(request, calls.state, service_tier)
    route = calls.state.router.route(model, chars, tier, region, sensitivity=data_class)
    refuse_unsupported(settings, route.pools, used)
    deadline_ms = client_deadline_ms(request, route.deadline_ms)
    if deadline_ms != route.deadline_ms:
        route = dataclasses.replace(route, deadline_ms=deadline_ms)
    request[ADMISSION] = calls.admit(route, model, grant_of(request))
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


_choices = msgspec.json.Decoder(list[dict[str, Any]])


def _chat_choices(result: protocol.Result) -> object:
    """An upstream's own choices (tool calls, several choices, log probabilities) as it sent them,
    with the fields OpenAI's schema requires that it left out; else the one text answer."""
    if result.choices:
        choices = _choices.decode(result.choices)
        for i, choice in enumerate(choices):
            _complete(choice, i, result)
            message = choice.setdefault("message", {})
            for key, value in (("role", "assistant"), ("content", None), ("refusal", None)):
                message.setdefault(key, value)
            if isinstance(choice["logprobs"], dict):
                choice["logprobs"].setdefault("content", None)
                choice["logprobs"].setdefault("refusal", None)
        return choices
    message = {"role": "assistant", "content": result.output, "refusal": None}
    return [{"index": 0, "message": message, "finish_reason": result.finish_reason or "stop", "logprobs": None}]


def _completion_choices(result: protocol.Result) -> object:
    if result.choices:
        choices = _choices.decode(result.choices)
        for i, choice in enumerate(choices):
            _complete(choice, i, result)
            choice.setdefault("text", "")
        return choices
    return [{"index": 0, "text": result.output, "finish_reason": result.finish_reason or "stop", "logprobs": None}]


def _complete(choice: dict[str, Any], position: int, result: protocol.Result) -> None:
    choice.setdefault("index", position)
    choice["finish_reason"] = choice.get("finish_reason") or result.finish_reason or "stop"
    choice.setdefault("logprobs", None)


# How a request of this dialect gets its route: (model, input characters, service_tier, fields
# used) -> an admitted Route. The handlers route by the HTTP request's headers; a batch line
# (gateway/batch_lines.py) by its batch's tier.
RouteFor = Callable[[str, int, "str | None", dict[str, str]], Route]


def _http_route(request: web.Request, calls: Calls) -> RouteFor:
    def route_for(model: str, chars: int, service_tier: str | None, used: dict[str, str]) -> Route:
        return _route(request, calls, model, chars, service_tier, used)

    return route_for


def chat_call(
    calls: Calls, body: ChatRequest, route_for: RouteFor, started: float, key: str | None, headers: Headers,
    grant: Grant,
) -> tuple[Call, str | None]:  # fmt: skip
    """The call of a decoded chat request sent with `grant`'s key, and the `service_tier` its
    answer names."""
    messages = tuple(chat_message(m) for m in body.messages)
    generation = chat_generation(body)
    text = next((m.content for m in reversed(messages) if m.role == "user"), messages[-1].content)
    chars = sum(len(m.content) for m in messages)
    route = route_for(body.model, chars, body.service_tier, fields_used(generation, messages))
    env = calls.envelope(
        route,
        body.model,
        text,
        grant,
        stream=bool(body.stream),
        max_tokens=body.max_completion_tokens or body.max_tokens or 0,
        messages=messages,
        generation=generation,
    )
    call = calls.call(route, env, started, key, headers, grant)
    return call, _service_tier_name(calls.state, body.service_tier, route.tier)


def chat_answer(body: ChatRequest, result: protocol.Result, total_ms: float, tier_name: str | None) -> dict[str, Any]:
    """The body of a chat completion's answer."""
    return {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": _chat_choices(result),
        "usage": usage(result),
        **({"service_tier": tier_name} if tier_name else {}),
        "tiergate": _tiergate(result, total_ms),
    }


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state, calls = request.app[STATE], request.app[CALLS]
    body = decode_chat(state.settings, await request.read())
    key = None if body.stream else idempotency_key(request)
    route_for, grant = _http_route(request, calls), grant_of(request)
    call, tier_name = chat_call(calls, body, route_for, started, key, request.headers, grant)
    if body.stream:
        info = StreamCall("chat", call.id, body.model, int(time.time()), body.include_usage, tier_name)
        return await stream_reply(request, info, call, _early(request, call.route))
    result = await call.result()
    return _with_headers(json_response(chat_answer(body, result, call.total_ms, tier_name)), result, call)


def completion_call(
    calls: Calls, body: CompletionRequest, prompt: str, route_for: RouteFor, started: float, key: str | None,
    headers: Headers, grant: Grant,
) -> Call:  # fmt: skip
    """The call of a decoded text completion request sent with `grant`'s key."""
    generation = completion_generation(body)
    route = route_for(body.model, len(prompt), body.service_tier, fields_used(generation))
    stream, max_tokens = bool(body.stream), body.max_tokens or 0
    env = calls.envelope(route, body.model, prompt, grant, stream=stream, max_tokens=max_tokens, generation=generation)
    return calls.call(route, env, started, key, headers, grant)


def completion_answer(body: CompletionRequest, result: protocol.Result, total_ms: float) -> dict[str, Any]:
    """The body of a text completion's answer."""
    return {
        "id": f"cmpl-{result.id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": _completion_choices(result),
        "usage": usage(result),
        "tiergate": _tiergate(result, total_ms),
    }


@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    calls = request.app[CALLS]
    body, prompt = decode_completion(calls.state.settings, await request.read())
    key = None if body.stream else idempotency_key(request)
    route_for, grant = _http_route(request, calls), grant_of(request)
    call = completion_call(calls, body, prompt, route_for, started, key, request.headers, grant)
    if body.stream:
        info = StreamCall("completion", call.id, body.model, int(time.time()), body.include_usage, None)
        return await stream_reply(request, info, call, _early(request, call.route))
    result = await call.result()
    return _with_headers(json_response(completion_answer(body, result, call.total_ms)), result, call)


def _vector(values: str | list[float], encoding: str | None) -> list[float] | str:
    vector = list(values) if isinstance(values, list) else []
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embedding_calls(
    calls: Calls, body: EmbeddingRequest, texts: list[str], route_for: RouteFor, started: float,
    keys: list[str | None], headers: Headers, grant: Grant,
) -> list[Call]:  # fmt: skip
    """The calls of a decoded embeddings request sent with `grant`'s key: every input is its own
    request (`keys`: the idempotency key of each, or None)."""
    generation = embedding_generation(body)
    routes = [route_for(body.model, len(text), None, fields_used(generation)) for text in texts]
    return [
        calls.call(
            route, calls.envelope(route, body.model, text, grant, generation=generation), started, key, headers, grant
        )
        for route, text, key in zip(routes, texts, keys, strict=True)
    ]


def embedding_answer(body: EmbeddingRequest, results: list[protocol.Result]) -> dict[str, Any]:
    """The body of an embeddings answer."""
    prompt_tokens = sum(r.prompt_tokens for r in results)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(r.output, body.encoding_format)}
            for i, r in enumerate(results)
        ],
        "model": body.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@openai_errors
async def embeddings(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    calls = request.app[CALLS]
    body, texts = decode_embedding(calls.state.settings, await request.read())
    keys: list[str | None] = [None] * len(texts)
    # All of them join the same tick's pipeline, and each one answered counts with the latency of
    # the whole answer.
    route_for, grant = _http_route(request, calls), grant_of(request)
    inputs = embedding_calls(calls, body, texts, route_for, started, keys, request.headers, grant)
    results = await gather_results(inputs)
    response = json_response(embedding_answer(body, results))
    response.headers.update(_timing_headers(results, inputs[0].total_ms))
    return response


@openai_errors
async def models(request: web.Request) -> web.StreamResponse:
    settings = request.app[STATE].settings
    allowed = grant_of(request).models  # empty: any
    served = sorted(
        {
            m
            for pool in settings.pools.values()
            if pool.region == settings.gateway.region
            for m in pool.models
            if not allowed or m in allowed
        }
    )
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "tiergate"} for name in served]
    return json_response({"object": "list", "data": data})


ROUTES = [
    web.post("/v1/chat/completions", chat_completions),
    web.post("/v1/completions", completions),
    web.post("/v1/embeddings", embeddings),
    web.get("/v1/models", models),
]
