"""The OpenAI-compatible front door: `POST /v1/chat/completions`, `/v1/completions`,
`/v1/embeddings` and `GET /v1/models`, in the request and response shapes the official SDK
sends and reads. Requests go through the same routing, tick-pipelined queue and reply reader
as the native API; errors come back in OpenAI's error shape. No Redis I/O of its own.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from . import protocol
from .admission import Admission
from .errors import InvalidRequest, QueueFull, RequestError, from_code
from .handlers import QUEUE_INFO_HEADER, json_response
from .metrics import METRICS
from .openai_stream import StreamCall, error_type, stream_reply, usage
from .results import StreamEvent
from .routing import Route
from .state import STATE, GatewayState

log = logging.getLogger(__name__)
ADMISSION: web.RequestKey[Admission] = web.RequestKey("admission", Admission)

TIER_HEADER = "X-Tiergate-Tier"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Body(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Request bodies: every field OpenAI documents is accepted, anything else is a 400."""


class TextPart(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    text: str = ""


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


MaxTokens = Annotated[int, Meta(gt=0)]


class _Sampling(_Body):
    """Fields shared by chat and text completions; sampling settings are accepted and ignored."""

    model: Annotated[str, Meta(min_length=1, max_length=128)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    service_tier: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = []
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: Any = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] = ""
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(_Body):
    model: Annotated[str, Meta(min_length=1, max_length=128)]
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
_PARAM = re.compile(r" - at `?\$\.?([^`]*)`?$")


def openai_errors(handler: Handler) -> Handler:
    """Render `RequestError`s as `{"error": {"message", "type", "param", "code"}}`."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            match = _PARAM.search(exc.message)
            log.info("request refused", extra={"path": request.path, "status": exc.status, "error": exc.code})
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


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc


def _unsupported(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{field} is not supported: {why} - at `$.{field}`")


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


def _check_model(state: GatewayState, model: str, kind: str) -> None:
    spec = state.settings.models.get(model)
    if spec is None:
        return  # the router names the known models
    if (spec.kind == "embed") != (kind == "embed"):
        endpoint = "/v1/embeddings" if spec.kind == "embed" else "/v1/chat/completions or /v1/completions"
        raise InvalidRequest(f"model {model!r} is a {spec.kind} model; use {endpoint} - at `$.model`")


def _route(request: web.Request, state: GatewayState, model: str, chars: int, service_tier: str | None) -> Route:
    route = state.router.route(model, chars, pick_tier(request, state, service_tier))
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
    return protocol.Envelope(
        id=protocol.new_request_id(),
        model=model,
        input=text,
        tier=route.tier,
        region=route.region,
        reply_to=state.gateway_id,
        deadline_at_ms=int(state.clock.now_ms()) + route.deadline_ms,
        **extra,
    )


async def _wait(state: GatewayState, route: Route, env: protocol.Envelope) -> protocol.Result:
    waiting = state.waiters.add(env.id, route.deadline_ms / 1000.0)
    try:
        await state.queue.enqueue(route.stream, protocol.encoder.encode(env))
        reply = await waiting
    finally:
        state.waiters.discard(env.id)
    if isinstance(reply, protocol.Failure):
        raise from_code(reply.code, reply.message)
    return reply


async def _stream(
    request: web.Request, state: GatewayState, route: Route, env: protocol.Envelope, call: StreamCall
) -> web.StreamResponse:
    events: asyncio.Queue[StreamEvent] = state.waiters.add_stream(env.id, route.deadline_ms / 1000.0)
    comment = _queue_comment(request)
    try:
        await state.queue.enqueue(route.stream, protocol.encoder.encode(env))
        return await stream_reply(request, call, events, None if comment is None else (route.tier, comment))
    finally:
        state.waiters.discard(env.id)


def _timing_headers(results: list[protocol.Result], started: float) -> dict[str, str]:
    total_ms = (time.perf_counter() - started) * 1000.0
    return {
        TIER_HEADER: results[0].tier,
        "X-Tiergate-Pool": results[0].pool,
        "X-Tiergate-Queue-Ms": f"{max(r.queue_ms for r in results):g}",
        "X-Tiergate-Service-Ms": f"{max(r.service_ms for r in results):g}",
        "X-Tiergate-Total-Ms": f"{round(total_ms, 3):g}",
    }


def _tiergate(result: protocol.Result, started: float) -> dict[str, Any]:
    return {
        "tier": result.tier,
        "pool": result.pool,
        "processor": result.processor,
        "batch_size": result.batch_size,
        "queue_ms": result.queue_ms,
        "service_ms": result.service_ms,
        "total_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "energy_j": result.energy_j,
        "cost": result.cost,
    }


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content if part.type == "text")


def _check_sampling(body: _Sampling) -> None:
    if body.n is not None and body.n != 1:
        raise _unsupported("n", "one choice per request")


def _check_limits(state: GatewayState, body: _Sampling) -> None:
    """The gateway's limits on output tokens and conversation length ([gateway] in the config)."""
    limits = state.settings.gateway
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, field, None)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequest(f"{field} is {value}; the limit is {limits.max_tokens} - at `$.{field}`")
    count = len(getattr(body, "messages", ()))
    if count > limits.max_messages:
        raise InvalidRequest(f"messages holds {count} messages; the limit is {limits.max_messages} - at `$.messages`")


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body: ChatRequest = _decode(_chat_decoder, await request.read())
    _check_sampling(body)
    _check_limits(state, body)
    if not body.messages:
        raise InvalidRequest("messages must hold at least one message - at `$.messages`")
    for field in ("tools", "functions"):
        if getattr(body, field):
            raise _unsupported(field, "tiergate's models answer with text only")
    if body.logprobs:
        raise _unsupported("logprobs", "tiergate's models report no log probabilities")
    _check_model(state, body.model, "chat")
    messages = tuple(protocol.ChatMessage(m.role, _text(m.content), m.name or "") for m in body.messages)
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
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        call = StreamCall("chat", env.id, body.model, int(time.time()), started, include_usage, tier_name)
        return await _stream(request, state, route, env, call)
    result = await _wait(state, route, env)
    answer = {
        "id": f"chatcmpl-{env.id}",
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
        "tiergate": _tiergate(result, started),
    }
    response = json_response(answer)
    response.headers.update(_timing_headers([result], started))
    return response


@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body: CompletionRequest = _decode(_completion_decoder, await request.read())
    _check_sampling(body)
    _check_limits(state, body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise InvalidRequest("prompt must be one non-empty string - at `$.prompt`")
    if body.echo or body.best_of not in (None, 1) or body.logprobs is not None or body.suffix:
        raise InvalidRequest("echo, best_of, logprobs and suffix are not supported - at `$.prompt`")
    _check_model(state, body.model, "completion")
    route = _route(request, state, body.model, len(prompts[0]), body.service_tier)
    env = _envelope(state, route, body.model, prompts[0], stream=bool(body.stream), max_tokens=body.max_tokens or 0)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        call = StreamCall("completion", env.id, body.model, int(time.time()), started, include_usage, None)
        return await _stream(request, state, route, env, call)
    result = await _wait(state, route, env)
    answer = {
        "id": f"cmpl-{env.id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {"index": 0, "text": result.output, "finish_reason": result.finish_reason or "stop", "logprobs": None}
        ],
        "usage": usage(result),
        "tiergate": _tiergate(result, started),
    }
    response = json_response(answer)
    response.headers.update(_timing_headers([result], started))
    return response


def _vector(values: str | list[float], encoding: str | None) -> list[float] | str:
    vector = list(values) if isinstance(values, list) else []
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@openai_errors
async def embeddings(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    body: EmbeddingRequest = _decode(_embedding_decoder, await request.read())
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(texts):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings - at `$.input`")
    _check_model(state, body.model, "embed")
    spec = state.settings.models.get(body.model)  # an unknown model is the router's 404 below
    if spec is not None and body.dimensions is not None and body.dimensions != spec.dimensions:
        raise InvalidRequest(f"model {body.model!r} has {spec.dimensions} dimensions - at `$.dimensions`")
    routes = [_route(request, state, body.model, len(text), None) for text in texts]
    # Every input is its own request; all of them join the same tick's pipeline.
    results = await asyncio.gather(
        *(
            _wait(state, route, _envelope(state, route, body.model, text))
            for route, text in zip(routes, texts, strict=True)
        )
    )
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
    response.headers.update(_timing_headers(list(results), started))
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
