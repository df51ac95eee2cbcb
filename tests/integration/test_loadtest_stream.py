"""`--stream`: time to first token over Server-Sent Events, against the gateway's streaming chat
completions and against a small SSE server whose timing the test controls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.settings import Settings
from loadtest import runner
from loadtest.schedule import Arrival
from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
FIRST_TOKEN_AFTER_S = 0.15
DONE_AFTER_S = 0.3


def chunk(content: str | None) -> bytes:
    delta = {"role": "assistant"} if content is None else {"content": content}
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(body)}\n\n".encode()


GAPS_MS: list[float] = []  # per request the server answered: from its role chunk to its first token


async def slow_sse(request: web.Request) -> web.StreamResponse:
    """A role chunk at once, the first token after FIRST_TOKEN_AFTER_S, [DONE] after DONE_AFTER_S;
    a request whose tier header is `batch` gets a 429 instead. Notes in GAPS_MS how long after
    the role chunk it wrote the first token."""
    body = await request.json()
    assert body["stream"] is True and body["messages"][0]["role"] == "user"
    if request.headers.get("X-Tiergate-Tier") == "batch":
        return web.json_response({"error": {"type": "queue_full", "message": "full"}}, status=429)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b": keep-alive comment\n\n" + chunk(None))
    role_sent_s = time.perf_counter()
    await asyncio.sleep(FIRST_TOKEN_AFTER_S)
    await response.write(chunk("hel"))
    GAPS_MS.append((time.perf_counter() - role_sent_s) * 1000)
    await asyncio.sleep(DONE_AFTER_S - FIRST_TOKEN_AFTER_S)
    await response.write(chunk("lo") + b"data: [DONE]\n\n")
    return response


@pytest.fixture
async def sse_server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow_sse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_ttft_counts_from_the_first_token_not_the_role_chunk(
    sse_server: TestServer, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    GAPS_MS.clear()
    arrivals = [Arrival(0.01 * i, "interactive", "sim-echo", 16) for i in range(5)]
    arrivals.append(Arrival(0.05, "batch", "sim-echo", 16))
    target = runner.Target(url=str(sse_server.make_url("")), stream=True)
    recorder = await runner.play(settings, target, arrivals, 0.1)
    assert recorder.samples is not None
    interactive = [x for x in recorder.samples if x.tier == "interactive"]
    assert [x.outcome for x in interactive] == ["ok"] * 5
    # Counted from the role chunk, a request's time to first token would be shorter than the gap
    # the server left between that chunk and the first token; counted from the send, it is longer.
    assert len(GAPS_MS) == 5
    for x in interactive:
        assert x.ttft_ms is not None
        assert min(GAPS_MS) <= x.ttft_ms < x.latency_ms  # the first token came before the end
    (shed,) = [x for x in recorder.samples if x.tier == "batch"]
    assert (shed.outcome, shed.status, shed.ttft_ms) == ("shed", 429, None)
    assert recorder.tiers["interactive"].ttft.get_total_count() == 5


async def test_streaming_chat_completions_through_the_gateway(stack: StartStack) -> None:
    s: Stack = await stack()
    arrivals = [Arrival(0.02 * i, tier, "sim-echo", 24) for i, tier in enumerate(["realtime", "interactive"] * 3)]
    recorder = await runner.play(s.settings, runner.Target(url=s.url, stream=True), arrivals, 0.2)
    assert recorder.samples is not None
    assert [x.outcome for x in recorder.samples] == ["ok"] * len(arrivals), [x.status for x in recorder.samples]
    assert all(x.ttft_ms is not None and 0 < x.ttft_ms <= x.latency_ms for x in recorder.samples)
