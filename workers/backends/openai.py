"""The `openai` backend: runs a pool's requests on an OpenAI-compatible server (vLLM, TGI,
SGLang, llama.cpp, a hosted API) over one pooled aiohttp client session per worker process.

A batch becomes concurrent upstream requests carrying every field the client sent (the
conversation and the generation fields, JSON values as the client wrote them); streaming requests
are relayed chunk by chunk. What the upstream answers beyond one text (tool calls, several choices,
log probabilities) goes back as its own `choices`. Every upstream failure becomes that request's
error, naming the pool and the cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec

from core.capabilities import SUPPORTS
from core.errors import DEADLINE_EXCEEDED, INVALID_REQUEST, QUEUE_FULL, WORKER_ERROR
from core.protocol import GENERATION_JSON_FIELDS, GENERATION_VALUE_FIELDS, ChatMessage, Envelope
from core.settings import Settings, UpstreamSettings

from . import Completion, TokenSink

log = logging.getLogger(__name__)

ERROR_BODY_CHARS = 300
JSON_HEADERS = {"Content-Type": "application/json"}

# Fields of a choice (or of its message or delta) that make it more than one text.
_BEYOND_TEXT = ("tool_calls", "function_call", "audio", "refusal")

_encoder = msgspec.json.Encoder()
_json_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


class UpstreamError(Exception):
    def __init__(self, message: str, code: str = WORKER_ERROR) -> None:
        super().__init__(message)
        self.code = code


class OpenAIBackend:
    supports = SUPPORTS["openai"]

    def __init__(self, settings: Settings, pool_name: str) -> None:
        pool = settings.pools[pool_name]
        assert pool.upstream is not None  # settings validation refuses an openai pool without one
        self.pool_name = pool_name
        self.upstream: UpstreamSettings = pool.upstream
        self.base_url = pool.upstream.base_url.rstrip("/")
        self.models = settings.models
        processor = settings.processors[pool.processor]
        accounting = settings.accounting
        self._joules_per_flop = 1.0 / (processor.energy_efficiency * accounting.baseline_flops_per_joule)
        self._usd_per_flop = processor.cost_per_flop * accounting.baseline_usd_per_pflop / 1e15
        key = os.environ.get(pool.upstream.api_key_env, "") if pool.upstream.api_key_env else ""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.upstream.max_connections),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(sock_connect=self.upstream.connect_timeout_s),
            )
        return self._session

    async def run(
        self, batch: Sequence[Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(i, env, sink) for i, env in enumerate(batch))))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _one(self, position: int, env: Envelope, sink: TokenSink | None) -> Completion:
        remaining_s = env.deadline_at_ms / 1000.0 - time.time()
        timeout_s = max(0.001, min(self.upstream.request_timeout_s, remaining_s))
        try:
            async with asyncio.timeout(timeout_s):
                return await self._call(position, env, sink)
        except TimeoutError:
            cause = f"the upstream did not answer within {timeout_s:g} s"
            return self._error(UpstreamError(cause, DEADLINE_EXCEEDED))
        except UpstreamError as exc:
            return self._error(exc)
        except aiohttp.ClientConnectorError as exc:
            return self._error(UpstreamError(f"cannot connect to the upstream {self.base_url}: {exc.os_error}"))
        except (aiohttp.ClientError, OSError) as exc:
            return self._error(UpstreamError(f"the upstream connection failed: {type(exc).__name__}: {exc}"))

    def _error(self, exc: UpstreamError) -> Completion:
        log.warning("upstream request failed", extra={"pool": self.pool_name, "error": str(exc)})
        return Completion(output="", energy_j=0.0, cost=0.0, error=f"pool {self.pool_name}: {exc}", error_code=exc.code)

    def _request(self, env: Envelope) -> tuple[str, dict[str, Any]]:
        model = self.upstream.upstream_model or env.model
        if self.models[env.model].kind == "embed":
            user = env.generation.user if env.generation is not None else None
            return "/embeddings", {"model": model, "input": env.input} | ({"user": user} if user else {})
        body: dict[str, Any] = {"model": model} | _generation(env)
        if env.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if env.messages:
            return "/chat/completions", body | {"messages": [_message(m) for m in env.messages]}
        return "/completions", body | {"prompt": env.input}

    async def _call(self, position: int, env: Envelope, sink: TokenSink | None) -> Completion:
        path, body = self._request(env)
        data = _encoder.encode(body)
        async with self._client().post(self.base_url + path, data=data, headers=JSON_HEADERS) as response:
            if response.status >= 400:
                text = (await response.text(errors="replace"))[:ERROR_BODY_CHARS]
                code = {400: INVALID_REQUEST, 422: INVALID_REQUEST, 429: QUEUE_FULL}.get(response.status)
                raise UpstreamError(f"the upstream answered {response.status}: {text}", code or WORKER_ERROR)
            if env.stream and sink is not None and path != "/embeddings":
                return await self._relay(position, env, response, sink)
            raw = await response.read()
        return self._answer(env, path, _json(raw))

    async def _relay(
        self, position: int, env: Envelope, response: aiohttp.ClientResponse, sink: TokenSink
    ) -> Completion:
        pieces: list[str] = []
        finish_reason = "stop"
        counts: dict[str, Any] = {}
        async for raw_line in response.content:
            line = raw_line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = _json(data)
            counts = event.get("usage") or counts
            choices = event.get("choices") or []
            finish_reason = next(
                (c["finish_reason"] for c in choices if _first(c) and c.get("finish_reason")), finish_reason
            )
            text = "".join(_piece(c) for c in choices if _text_only(c))
            if text:
                pieces.append(text)
                sink(position, text)
            if beyond := [c for c in choices if not _text_only(c)]:
                sink(position, "", _encoder.encode(beyond))
        return self._completion(env, "".join(pieces), counts, finish_reason)

    def _answer(self, env: Envelope, path: str, body: dict[str, Any]) -> Completion:
        try:
            first = body["data" if path == "/embeddings" else "choices"][0]
            if path == "/embeddings":
                output: str | list[float] = [float(v) for v in first["embedding"]]
            elif path == "/chat/completions":
                output = str(first["message"].get("content") or "")
            else:
                output = str(first["text"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"the upstream sent a malformed body (no {exc} where expected)") from exc
        choices = [] if path == "/embeddings" else body["choices"]
        beyond = b"" if len(choices) < 2 and all(map(_text_only, choices)) else _encoder.encode(choices)
        return self._completion(env, output, body.get("usage") or {}, first.get("finish_reason") or "stop", beyond)

    def _completion(
        self, env: Envelope, output: str | list[float], counts: dict[str, Any], finish_reason: str, choices: bytes = b""
    ) -> Completion:
        prompt = int(counts.get("prompt_tokens") or 0)
        generated = int(counts.get("completion_tokens") or 0)
        flops = 2.0 * self.models[env.model].params * max(1, prompt + generated)
        return Completion(
            output=output,
            energy_j=flops * self._joules_per_flop,
            cost=flops * self._usd_per_flop,
            prompt_tokens=prompt,
            completion_tokens=generated,
            finish_reason=finish_reason,
            choices=choices,
        )


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        excerpt = raw[:80].decode(errors="replace")
        raise UpstreamError(f"the upstream sent a malformed body (not JSON: {excerpt!r})") from exc
    if not isinstance(body, dict):
        raise UpstreamError("the upstream sent a malformed body (not a JSON object)")
    return body


def _generation(env: Envelope) -> dict[str, Any]:
    """The request's generation fields as the client sent them; `max_tokens` for a request
    without them (the native API's)."""
    gen = env.generation
    body: dict[str, Any] = {}
    if gen is not None:
        body = {name: value for name in GENERATION_VALUE_FIELDS if (value := getattr(gen, name)) is not None}
        body |= {name: msgspec.Raw(raw) for name in GENERATION_JSON_FIELDS if (raw := getattr(gen, name))}
        body |= _json_object.decode(gen.extra) if gen.extra else {}
    if env.max_tokens and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = env.max_tokens
    return body


def _message(m: ChatMessage) -> dict[str, Any]:
    """One message of the conversation as the client sent it."""
    message: dict[str, Any] = {"role": m.role, "content": msgspec.Raw(m.parts) if m.parts else m.content}
    if m.name:
        message["name"] = m.name
    if m.tool_calls:
        message["tool_calls"] = msgspec.Raw(m.tool_calls)
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    return message | _json_object.decode(m.extra) if m.extra else message


def _first(choice: dict[str, Any]) -> bool:
    return bool(choice.get("index", 0) == 0)


def _text_only(choice: Any) -> bool:
    """Whether a choice (or a streamed one) is the first choice's text alone, which travels as text."""
    if not isinstance(choice, dict) or not _first(choice) or choice.get("logprobs"):
        return False
    inner = choice.get("message") or choice.get("delta") or {}
    return isinstance(inner, dict) and not any(inner.get(name) for name in _BEYOND_TEXT)


def _piece(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")
