"""The HTTP driver: one request per arrival to the gateway's native API (`POST /v1/infer`) or,
with `stream=True`, to the OpenAI-compatible `POST /v1/chat/completions` with `"stream": true`
(Server-Sent Events), where it also measures the time to the first token.

All its I/O is through one shared aiohttp ClientSession.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from .schedule import Arrival, input_text
from .stats import Sample

CLIENT_SLACK_S = 5.0  # the gateway answers 504 itself at the deadline; the client waits this much longer
TIER_HEADER = "X-Tiergate-Tier"


def outcome_of(status: int) -> str:
    if status == 200:
        return "ok"
    if status == 429:
        return "shed"
    if status == 504:
        return "deadline"
    return "errors"


class HttpDriver:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        deadlines_ms: Mapping[str, int],
        stream: bool = False,
        deadline_ms: int | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.deadlines_ms = deadlines_ms  # each tier's default deadline, for the client-side timeout
        self.stream = stream
        self.deadline_ms = deadline_ms  # sent with every request when set

    async def fire(self, index: int, arrival: Arrival, intended: float, started: float) -> Sample:
        loop = asyncio.get_running_loop()
        budget_ms = self.deadline_ms or self.deadlines_ms.get(arrival.tier, 60_000)
        timeout = aiohttp.ClientTimeout(total=budget_ms / 1000.0 + CLIENT_SLACK_S)
        text = input_text(index, arrival.input_chars)
        status, server_ms, ttft_at = 0, None, None
        try:
            if self.stream:
                status, ttft_at = await self._chat_stream(arrival, text, timeout)
            else:
                status, server_ms = await self._infer(arrival, text, timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = 0
        done = loop.time()
        return Sample(
            index=index,
            tier=arrival.tier,
            outcome=outcome_of(status),
            latency_ms=(done - intended) * 1000.0,
            done_s=done - started,
            server_ms=server_ms,
            ttft_ms=None if ttft_at is None else (ttft_at - intended) * 1000.0,
            status=status,
        )

    async def _infer(
        self, arrival: Arrival, text: str, client_timeout: aiohttp.ClientTimeout
    ) -> tuple[int, float | None]:
        body: dict[str, Any] = {"model": arrival.model, "input": text, "tier": arrival.tier}
        if self.deadline_ms is not None:
            body["deadline_ms"] = self.deadline_ms
        async with self.session.post(f"{self.base_url}/v1/infer", json=body, timeout=client_timeout) as response:
            payload = await response.read()
            if response.status != 200:
                return response.status, None
            timings = json.loads(payload).get("timings") or {}
            total = timings.get("total_ms")
            return 200, None if total is None else float(total)

    async def _chat_stream(
        self, arrival: Arrival, text: str, client_timeout: aiohttp.ClientTimeout
    ) -> tuple[int, float | None]:
        """POST a streaming chat completion; (status, loop time of the first token or None).

        A stream that ends without `data: [DONE]`, or carries an error event, counts as status 0.
        """
        body = {"model": arrival.model, "messages": [{"role": "user", "content": text}], "stream": True}
        headers = {TIER_HEADER: arrival.tier, "Accept": "text/event-stream"}
        url = f"{self.base_url}/v1/chat/completions"
        first_token: float | None = None
        async with self.session.post(url, json=body, headers=headers, timeout=client_timeout) as response:
            if response.status != 200:
                await response.read()
                return response.status, None
            async for raw in response.content:
                event = parse_sse_line(raw)
                if event is None:
                    continue
                if event == "[DONE]":
                    return 200, first_token
                chunk = json.loads(event)
                if "error" in chunk:
                    return 0, first_token
                if first_token is None and chunk_has_token(chunk):
                    first_token = asyncio.get_running_loop().time()
        return 0, first_token


def parse_sse_line(raw: bytes) -> str | None:
    """The payload of a `data:` line, or None for comments, other fields and blank lines."""
    line = raw.decode("utf-8").rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    return line[5:].lstrip(" ")


def chunk_has_token(chunk: Mapping[str, Any]) -> bool:
    """Whether a `chat.completion.chunk` carries generated text (not just the role)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content"):
            return True
    return False
