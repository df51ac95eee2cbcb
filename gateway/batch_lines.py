"""The lines of a batch's input file: judging each one exactly as the endpoint it names would judge
its body (with the batch API's own checks: the method, the URL, a unique custom_id), and running
one as an ordinary request on the batch tier through its `Call`, its answer rendered as that
endpoint renders it. No Redis I/O of its own (its calls' is `RequestQueue`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from core import protocol
from core.errors import BackendUnavailable, DeadlineExceeded, InvalidRequest, QueueFull, RequestError
from core.protocol import OPEN_GRANT, Grant
from core.settings import Settings

from . import openai_api
from .calls import Call, Calls, gather_results
from .http_shared import placement
from .openai_forward import refuse_unsupported
from .openai_schema import decode_chat, decode_completion, decode_embedding, message_text
from .openai_stream import error_body
from .routing import Route, Router

BATCH_TIER = "batch"
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)
MAX_ERRORS = 1000  # a refused batch names at most this many bad lines
RETRY = (QueueFull, BackendUnavailable)  # a line refused with one of these is offered again later
ATTEMPTS = 3  # idempotency keys a line goes through when it finds its first copies never queued
# Judging a file works this long, then rests as long: the requests on the event loop wait at most
# this, and get at least half of it (a 100 MB file took 0.9 s; see docs/benchmarks.md).
HOLD_S = 0.001


class _Shape(msgspec.Struct):
    custom_id: Annotated[str, Meta(min_length=1, max_length=512)]
    method: str
    url: str
    body: msgspec.Raw


_shape = msgspec.json.Decoder(_Shape)


@dataclass(slots=True, frozen=True)
class Line:
    number: int  # 0-based position in the input file
    custom_id: str
    body: bytes  # the request body, as JSON


async def parse(
    settings: Settings, router: Router, endpoint: str, pieces: AsyncIterable[bytes]
) -> tuple[list[Line], list[protocol.BatchError]]:
    """Every line of an input file, given as `pieces` of its bytes in order, and, when any line is
    bad, what is wrong with each (1-based lines).

    It runs on the event loop, `HOLD_S` at a time with as long a rest between. A thread would not
    spare the requests in flight: it holds the GIL for the interpreter's switch interval (5 ms)
    at a time, and the loop waits for it."""
    lines: list[Line] = []
    errors: list[protocol.BatchError] = []
    seen: set[str] = set()
    limits = settings.batches
    held_since = time.perf_counter()
    number = -1
    async with contextlib.aclosing(_lines(pieces)) as raws:
        async for raw in raws:
            number += 1
            if time.perf_counter() - held_since > HOLD_S:
                await asyncio.sleep(HOLD_S)
                held_since = time.perf_counter()
            if not raw.strip():
                continue
            try:
                line = _judge(settings, router, endpoint, number, raw)
                if line.custom_id in seen:
                    raise _Bad(
                        "duplicate_custom_id", f"custom_id {line.custom_id!r} is used by an earlier line", "custom_id"
                    )
            except _Bad as bad:
                errors.append(protocol.BatchError(bad.code, bad.message, number + 1, bad.param))
                if len(errors) >= MAX_ERRORS:
                    break
                continue
            seen.add(line.custom_id)
            lines.append(line)
    if not lines and not errors:
        errors.append(protocol.BatchError("empty_file", "the input file holds no lines"))
    if len(lines) > limits.max_lines:
        errors.append(
            protocol.BatchError("too_many_lines", f"the file holds {len(lines)} lines; the limit is {limits.max_lines}")
        )
    return lines, errors


async def _lines(pieces: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    """The lines of a file given in pieces cut anywhere, as `bytes.splitlines` would give them from
    the whole file: a piece is split up to its last newline, and what follows waits for the
    next. The whole file is never split at once (a 100 MB file took 60 ms)."""
    held: list[bytes] = []  # the start of a line that goes on in a later piece
    async for piece in pieces:
        end = piece.rfind(b"\n") + 1
        if not end:
            held.append(piece)
            continue
        head = b"".join((*held, piece[:end])) if held else piece[:end]
        held = [piece[end:]] if end < len(piece) else []
        for raw in head.splitlines():
            yield raw
    for raw in b"".join(held).splitlines():
        yield raw


class _Bad(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _judge(settings: Settings, router: Router, endpoint: str, number: int, raw: bytes) -> Line:
    if len(raw) > settings.batches.max_line_bytes:
        raise _Bad("line_too_large", f"the line is {len(raw)} bytes; the limit is {settings.batches.max_line_bytes}")
    try:
        shape = _shape.decode(raw)
    except msgspec.ValidationError as exc:
        try:  # a line that is not JSON at all may fail the shape's check first
            msgspec.json.decode(raw)
        except msgspec.DecodeError as bad:
            raise _Bad("invalid_json", f"the line is not valid JSON: {bad}") from bad
        raise _Bad("invalid_request", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise _Bad("invalid_json", f"the line is not valid JSON: {exc}") from exc
    if shape.method != "POST":
        raise _Bad("invalid_method", f"method is {shape.method!r}; a batch line must be a POST", "method")
    if shape.url != endpoint:
        raise _Bad("invalid_url", f"url is {shape.url!r}; this batch's endpoint is {endpoint}", "url")
    body = bytes(shape.body)
    try:
        model, chars, stream = _decode(settings, endpoint, body)
        if stream:
            raise InvalidRequest("a batch line cannot stream its answer - at `$.stream`")
        router.route(model, chars, BATCH_TIER)
    except RequestError as exc:
        raise _Bad(exc.code, exc.message, "body") from exc
    return Line(number, shape.custom_id, body)


def _decode(settings: Settings, endpoint: str, body: bytes) -> tuple[str, int, bool]:
    """The model, input characters and stream flag of a line's body, decoded as its endpoint would."""
    if endpoint == CHAT:
        chat = decode_chat(settings, body)
        return chat.model, sum(len(message_text(m.content)) for m in chat.messages), bool(chat.stream)
    if endpoint == COMPLETIONS:
        completion, prompt = decode_completion(settings, body)
        return completion.model, len(prompt), bool(completion.stream)
    embedding, texts = decode_embedding(settings, body)
    return embedding.model, max(len(t) for t in texts), False


def idempotency_key(batch_id: str, custom_id: str, attempt: int = 0) -> str:
    """One line's idempotency key: a line sent again (a runner taking over) never runs twice.
    `attempt` counts the first copies found never queued (`run`)."""
    digest = hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()
    return f"batch.{batch_id}.{digest}" + (f".{attempt}" if attempt else "")


async def run(calls: Calls, record: protocol.BatchRecord, line: Line) -> protocol.LineOutcome:
    """Run one line of `record` on the batch tier, sent with the key that created the batch, and
    render its outcome as an output (or error) file line.
    A refusal by admission, or Redis out of reach, is raised (`RETRY`): the line is offered again.

    A line sent again after its runner died waits for its first copy (the same idempotency key).
    A first copy that was never queued (its runner died between claiming the key and queueing
    it) leaves that wait without an answer until a deadline has passed, after which no worker
    would run the copy anyway: the line is then sent under its next key."""
    for attempt in range(ATTEMPTS):
        try:
            key = idempotency_key(record.id, line.custom_id, attempt)
            request_id, answer = await _answer(calls, record.endpoint, line.body, key, record.grant or OPEN_GRANT)
        except RETRY:
            raise
        except _Abandoned:
            continue
        except RequestError as exc:
            body = error_body(exc.status, exc.code, exc.message)
            return _outcome(line, exc.request_id, exc.status, body, failed=True)
        return _outcome(line, request_id, 200, answer, failed=False)
    error = DeadlineExceeded(f"no copy of this line was answered in {ATTEMPTS} tries")
    return _outcome(line, "", error.status, error_body(error.status, error.code, error.message), failed=True)


class _Abandoned(Exception):
    """The copy of a line this one waited for was never queued."""


async def _result(call: Call) -> protocol.Result:
    """The call's Result; `_Abandoned` when it waited in vain for a first copy never queued (a
    replay's own timeout carries no request id; a stored failure carries the first copy's)."""
    try:
        return await call.result()
    except DeadlineExceeded as exc:
        if call.replayed and not exc.request_id:
            raise _Abandoned from exc
        raise


def expired(line: Line) -> protocol.LineOutcome:
    error = {"code": "batch_expired", "message": "the batch's completion window ended before this line ran"}
    return _error_outcome(line, error)


def cancelled(line: Line) -> protocol.LineOutcome:
    error = {"code": "batch_cancelled", "message": "the batch was cancelled before this line ran"}
    return _error_outcome(line, error)


def _outcome(line: Line, request_id: str, status: int, body: Any, failed: bool) -> protocol.LineOutcome:
    response = {"status_code": status, "request_id": request_id, "body": body}
    out = {"id": f"batch_req_{request_id}", "custom_id": line.custom_id, "response": response, "error": None}
    return protocol.LineOutcome(line=line.number, failed=failed, json=msgspec.json.encode(out))


def _error_outcome(line: Line, error: dict[str, str]) -> protocol.LineOutcome:
    out = {"id": f"batch_req_{line.number}", "custom_id": line.custom_id, "response": None, "error": error}
    return protocol.LineOutcome(line=line.number, failed=True, json=msgspec.json.encode(out))


def _router(calls: Calls, grant: Grant) -> openai_api.RouteFor:
    """Every line goes to the batch tier, in its key's data region and class, through the checks
    and admission of the endpoint's own."""
    state = calls.state
    region, data_class = placement(grant, None, None)

    def route_for(model: str, chars: int, service_tier: str | None, used: dict[str, str]) -> Route:
        route = state.router.route(model, chars, BATCH_TIER, region, sensitivity=data_class)
        refuse_unsupported(state.settings, route.pools, used)
        calls.admit(route, model, grant, offered_again=True)
        return route

    return route_for


async def _answer(calls: Calls, endpoint: str, body: bytes, key: str, grant: Grant) -> tuple[str, dict[str, Any]]:
    """(the request id, the endpoint's answer) of one line's body, sent with `grant`'s key."""
    settings, route_for, started = calls.state.settings, _router(calls, grant), time.perf_counter()
    if endpoint == CHAT:
        chat = decode_chat(settings, body)
        call, tier_name = openai_api.chat_call(calls, chat, route_for, started, key, None, grant)
        call.offered_again = True
        result = await _result(call)
        return result.id, openai_api.chat_answer(chat, result, call.total_ms, tier_name)
    if endpoint == COMPLETIONS:
        completion, prompt = decode_completion(settings, body)
        call = openai_api.completion_call(calls, completion, prompt, route_for, started, key, None, grant)
        call.offered_again = True
        result = await _result(call)
        return result.id, openai_api.completion_answer(completion, result, call.total_ms)
    embedding, texts = decode_embedding(settings, body)
    keys: list[str | None] = [f"{key}.{i}" for i in range(len(texts))]
    inputs = openai_api.embedding_calls(calls, embedding, texts, route_for, started, keys, None, grant)
    for call in inputs:
        call.offered_again = True
    try:
        results = await gather_results(inputs)
    except DeadlineExceeded as exc:
        if any(call.replayed for call in inputs) and not exc.request_id:
            raise _Abandoned from exc
        raise
    return results[0].id, openai_api.embedding_answer(embedding, results)
