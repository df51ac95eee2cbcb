"""A pool with backend `openai` in front of a fake OpenAI-compatible server (an aiohttp app on a
free port): answers, streaming passed through chunk by chunk, and every failure mode becoming a
clear error that names the pool and the cause."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.settings import Settings
from ops.embedded import free_port
from tests.integration.conftest import Stack

StartStack = Callable[..., Any]


class FakeUpstream:
    """Answers by the last message's text: "fail 503", "hang", "malformed", else its upper case."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []  # (path, authorization, body)
        self.release_last_chunk = asyncio.Event()
        self.release_hang = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, request.headers.get("Authorization", ""), body))
        text = body["messages"][-1]["content"]
        if text.startswith("fail "):
            status = int(text.split()[1])
            return web.json_response({"error": {"message": f"upstream says {status}"}}, status=status)
        if text == "hang":
            await asyncio.wait_for(self.release_hang.wait(), 10)
        if text == "malformed":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if body.get("stream"):
            return await self.stream(request, text.upper().split())
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        choice = {"index": 0, "message": {"role": "assistant", "content": text.upper()}, "finish_reason": "stop"}
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})

    async def stream(self, request: web.Request, words: list[str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            if i == len(words) - 1:  # the client must have seen the first word before the last is sent
                await asyncio.wait_for(self.release_last_chunk.wait(), 10)
            chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": 4, "completion_tokens": len(words), "total_tokens": 4 + len(words)}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, request.headers.get("Authorization", ""), body))
        return web.json_response({"data": [{"index": 0, "embedding": [0.6, 0.8]}], "usage": {"prompt_tokens": 1}})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/v1"))
    fake.release_hang.set()
    fake.release_last_chunk.set()
    await server.close()


def upstream_settings(make_settings: Callable[..., Settings], base_url: str) -> Settings:
    pools = {
        "vllm": {
            "processor": "h100",
            "tiers": ["interactive"],
            "models": ["sim-echo", "sim-embed"],
            "max_batch": 8,
            "max_wait_ms": 2,
            "backend": "openai",
            "upstream": {
                "base_url": base_url,
                "api_key_env": "TIERGATE_TEST_UPSTREAM_KEY",
                "upstream_model": "fake-llm",
                "request_timeout_s": 0.5,
            },
        },
        "rt": {
            "processor": "groq-lpu",
            "tiers": ["realtime"],
            "models": ["sim-echo", "sim-embed"],
            "mode": "deterministic",
        },
        "bt": {"processor": "cerebras-cs3", "tiers": ["batch"], "models": ["sim-echo", "sim-embed"]},
    }
    return make_settings(pools=pools)


def client(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=5.0)


async def test_upstream_answers_chat_and_embeddings(
    stack: StartStack, make_settings: Any, upstream: tuple[FakeUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERGATE_TEST_UPSTREAM_KEY", "sk-test")
    fake, url = upstream
    s: Stack = await stack(settings=upstream_settings(make_settings, url), pools=["vllm"])
    aio = client(s)
    answers = await asyncio.gather(
        *(
            aio.chat.completions.create(model="sim-echo", messages=[{"role": "user", "content": f"hi {i}"}])
            for i in range(5)
        )
    )
    assert [a.choices[0].message.content for a in answers] == [f"HI {i}" for i in range(5)]
    assert answers[0].usage is not None and answers[0].usage.total_tokens == 5
    vector = await aio.embeddings.create(model="sim-embed", input="x", encoding_format="float")
    assert vector.data[0].embedding == pytest.approx([0.6, 0.8])
    assert {(path, auth, body["model"]) for path, auth, body in fake.seen} == {
        ("/v1/chat/completions", "Bearer sk-test", "fake-llm"),
        ("/v1/embeddings", "Bearer sk-test", "fake-llm"),
    }
    await aio.close()


async def test_upstream_stream_is_passed_through_chunk_by_chunk(
    stack: StartStack, make_settings: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, url = upstream
    s: Stack = await stack(settings=upstream_settings(make_settings, url), pools=["vllm"])
    aio = client(s)
    stream = await aio.chat.completions.create(
        model="sim-echo",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            fake.release_last_chunk.set()  # only now may the upstream send its last word
        usage = chunk.usage or usage
    assert pieces == ["ONE ", "TWO ", "THREE "]
    assert usage is not None and usage.completion_tokens == 3
    await aio.close()


@pytest.mark.parametrize(
    ("prompt", "error", "cause"),
    [
        ("fail 400", openai.BadRequestError, "the upstream answered 400"),
        ("fail 503", openai.InternalServerError, "the upstream answered 503"),
        ("malformed", openai.InternalServerError, "malformed body"),
        ("hang", openai.InternalServerError, "did not answer within 0.5 s"),
    ],
)
async def test_upstream_failures_name_the_pool_and_cause(
    stack: StartStack,
    make_settings: Any,
    upstream: tuple[FakeUpstream, str],
    prompt: str,
    error: type[openai.APIStatusError],
    cause: str,
) -> None:
    _, url = upstream
    s: Stack = await stack(settings=upstream_settings(make_settings, url), pools=["vllm"])
    aio = client(s)
    with pytest.raises(error) as raised:
        await aio.chat.completions.create(model="sim-echo", messages=[{"role": "user", "content": prompt}])
    assert "pool vllm" in raised.value.message and cause in raised.value.message
    ok = await aio.chat.completions.create(model="sim-echo", messages=[{"role": "user", "content": "still here"}])
    assert ok.choices[0].message.content == "STILL HERE"  # the worker survived
    await aio.close()


async def test_refused_connection_names_the_pool(stack: StartStack, make_settings: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    s: Stack = await stack(settings=upstream_settings(make_settings, url), pools=["vllm"])
    aio = client(s)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as raised:
            answer = await aio.chat.completions.create(
                model="sim-echo", messages=[{"role": "user", "content": "anyone?"}], stream=stream
            )
            if stream:
                async for _ in answer:  # type: ignore[union-attr]
                    pass
        assert "pool vllm" in raised.value.message and "cannot connect" in raised.value.message
    await aio.close()
