"""Server-Sent Events for the OpenAI-compatible API: turns a streaming request's chunks, read by
the gateway's one reply reader, into OpenAI chunk objects as they arrive, ending with
`data: [DONE]`. Headers go out with the first chunk, so they carry the time to first token;
an error before it is an ordinary JSON error, one after it an SSE `error` event. The request's
`Call` counts its outcome; this module only renders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from core import protocol
from core.errors import RequestError

from .calls import Call
from .http_shared import GATEWAY_HEADER
from .state import STATE

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


@dataclass(slots=True)
class StreamCall:
    """What the renderer needs to know about one streaming request."""

    kind: str  # "chat" or "completion"
    request_id: str
    model: str
    created: int
    include_usage: bool
    service_tier: str | None


def usage(result: protocol.Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def error_object(error: RequestError) -> dict[str, Any]:
    return error_body(error.status, error.code, error.message)


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


class _Writer:
    def __init__(self, request: web.Request, call: StreamCall) -> None:
        self.request = request
        self.call = call
        self.response: web.StreamResponse | None = None
        self.sent: list[str] = []
        self.passed = False  # an upstream's own choices went out (they carry the role)
        prefix, self.object = (
            ("chatcmpl", "chat.completion.chunk") if call.kind == "chat" else ("cmpl", "text_completion")
        )
        self.id = f"{prefix}-{call.request_id}"

    async def open(self, tier: str, pool: str, queue_ms: float, ttft_ms: float) -> None:
        """Start the event stream at the first token, its headers carrying the tier and timings."""
        await self._prepare(
            {
                "X-Tiergate-Tier": tier,
                "X-Tiergate-Pool": pool,
                "X-Tiergate-Queue-Ms": f"{queue_ms:g}",
                "X-Tiergate-TTFT-Ms": f"{ttft_ms:g}",
            }
        )

    async def open_early(self, tier: str, comment: str) -> None:
        """Start the event stream before any token, with an SSE comment (the queue position)."""
        await self._prepare({"X-Tiergate-Tier": tier})
        assert self.response is not None
        await self.response.write(f": {comment}\n\n".encode())

    async def _prepare(self, headers: dict[str, str]) -> None:
        gateway = {GATEWAY_HEADER: self.request.app[STATE].gateway_id}  # sent before the front (app.py) sees it
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **gateway, **headers}
        )
        await response.prepare(self.request)
        self.response = response

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if self.call.kind == "completion":
            return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        delta: dict[str, str] = {}
        if text is not None:
            delta["content"] = text
            if not self.sent and not self.passed:
                delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def _chunk(self, choices: list[dict[str, Any]] | msgspec.Raw, **extra: Any) -> dict[str, Any]:
        body = {"id": self.id, "object": self.object, "created": self.call.created, "model": self.call.model}
        body["choices"] = choices
        if self.call.kind == "chat" and self.call.service_tier:
            body["service_tier"] = self.call.service_tier
        return body | extra

    async def send(self, body: object) -> None:
        assert self.response is not None
        await self.response.write(b"data: " + _json.encode(body) + b"\n\n")

    async def text(self, text: str) -> None:
        await self.send(self._chunk([self._choice(text, None)]))
        self.sent.append(text)

    async def choices(self, choices: bytes) -> None:
        """An upstream's streamed choices (tool call deltas, other choices), as it sent them."""
        await self.send(self._chunk(msgspec.Raw(choices)))
        self.passed = True

    async def finish(self, result: protocol.Result, total_ms: float, ttft_ms: float) -> None:
        streamed = "".join(self.sent)
        output = result.output if isinstance(result.output, str) else ""
        if output.startswith(streamed) and len(output) > len(streamed):  # chunks lost on the way
            await self.text(output[len(streamed) :])
        timings = {
            "tier": result.tier,
            "pool": result.pool,
            "processor": result.processor,
            "queue_ms": result.queue_ms,
            "service_ms": result.service_ms,
            "total_ms": total_ms,
            "ttft_ms": ttft_ms,
        }
        await self.send(self._chunk([self._choice(None, result.finish_reason or "stop")], tiergate=timings))
        if self.call.include_usage:
            await self.send(self._chunk([], usage=usage(result)))
        await self.response.write(b"data: [DONE]\n\n")  # type: ignore[union-attr]


async def stream_reply(
    request: web.Request, info: StreamCall, call: Call, early: tuple[str, str] | None = None
) -> web.StreamResponse:
    """Queue a streaming request and relay its events to the client until its Result or its
    error; `call` counts the outcome, and cancels the request if the client goes away first.

    `early` (tier, comment) opens the stream before the first token with that SSE comment.
    """
    writer = _Writer(request, info)
    try:
        async with call:
            if early is not None:
                await writer.open_early(*early)
            return await _relay(writer, call)
    except ConnectionResetError:
        log.info("stream client went away", extra={"id": info.request_id})
        return writer.response or web.Response(status=499)


async def _relay(writer: _Writer, call: Call) -> web.StreamResponse:
    try:
        async for event in call:
            ttft_ms = call.ttft_ms or 0.0  # set at the first Chunk or Result
            if writer.response is None:
                await writer.open(event.tier, event.pool, event.queue_ms, ttft_ms)
            if isinstance(event, protocol.Chunk) and event.choices:
                await writer.choices(event.choices)
            elif isinstance(event, protocol.Chunk):
                await writer.text(event.text)
            else:
                await writer.finish(event, call.total_ms, ttft_ms)  # end to end: until the final Result
    except RequestError as error:
        if writer.response is None:
            raise
        log.info("stream failed", extra={"id": call.id, "tier": call.route.tier, "error": error.code})
        await writer.send(error_object(error))
    return writer.response  # type: ignore[return-value]
