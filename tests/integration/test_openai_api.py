"""The official `openai` SDK against a gateway on a real port, with in-process workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from tests.integration.conftest import Stack
from workers.models import embed

StartStack = Callable[..., Any]
INTERACTIVE = ["h100-interactive", "tpu-interactive", "inferentia-mixed"]


def clients(s: Stack, timeout_s: float = 20.0) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    base = f"{s.url}/v1"
    return (
        openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=timeout_s),
        openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=timeout_s),
    )


async def test_chat_completion_answers_through_sync_and_async_clients(stack: StartStack) -> None:
    s: Stack = await stack(pools=INTERACTIVE)
    sync, aio = clients(s)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello tiergate"}]
    raw = await aio.chat.completions.with_raw_response.create(model="sim-echo", messages=messages, temperature=0.2)
    chat = raw.parse()
    assert chat.choices[0].message.content == "etagreit olleh"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens == 4 and chat.usage.prompt_tokens == 2 + 4
    assert raw.headers["X-Tiergate-Tier"] == "interactive"
    assert raw.headers["X-Tiergate-Pool"] in INTERACTIVE
    queue_ms, service_ms = float(raw.headers["X-Tiergate-Queue-Ms"]), float(raw.headers["X-Tiergate-Service-Ms"])
    assert float(raw.headers["X-Tiergate-Total-Ms"]) >= service_ms > 0 and queue_ms >= 0
    threaded = await asyncio.to_thread(
        sync.chat.completions.create, model="sim-echo", messages=[{"role": "user", "content": "sync"}], user="u1"
    )
    assert threaded.choices[0].message.content == "cnys"
    await aio.close()
    sync.close()


async def test_completion_embeddings_and_model_list(stack: StartStack) -> None:
    s: Stack = await stack(pools=INTERACTIVE)
    sync, aio = clients(s)
    done = await aio.completions.create(model="sim-echo", prompt="abcdefgh", max_tokens=1)
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("hgfe", "length")
    vectors = await aio.embeddings.create(model="sim-embed", input=["one", "two"])  # the SDK asks for base64
    assert [d.embedding for d in vectors.data] == [pytest.approx(embed(t, 16), abs=1e-6) for t in ("one", "two")]
    floats = await asyncio.to_thread(sync.embeddings.create, model="sim-embed", input="one", encoding_format="float")
    assert floats.data[0].embedding == embed("one", 16)
    listed = await aio.models.list()
    assert sorted(m.id for m in listed.data) == ["sim-echo", "sim-embed"]
    await aio.close()
    sync.close()


async def test_service_tier_and_header_choose_the_tier(stack: StartStack) -> None:
    s: Stack = await stack()
    _, aio = clients(s)
    ask = [{"role": "user", "content": "which tier"}]
    for service_tier, tier in (("priority", "realtime"), ("flex", "batch"), ("default", "interactive")):
        raw = await aio.chat.completions.with_raw_response.create(
            model="sim-echo", messages=ask, service_tier=service_tier
        )  # type: ignore[arg-type]
        assert raw.headers["X-Tiergate-Tier"] == tier
        assert raw.parse().model_extra["tiergate"]["pool"] in s.settings.pools_for(tier, "default")  # type: ignore[index]
    raw = await aio.chat.completions.with_raw_response.create(
        model="sim-echo", messages=ask, service_tier="flex", extra_headers={"X-Tiergate-Tier": "realtime"}
    )
    assert raw.headers["X-Tiergate-Tier"] == "realtime"
    await aio.close()


async def test_stream_delivers_tokens_before_the_worker_finishes(stack: StartStack, make_settings: Any) -> None:
    settings: Settings = make_settings(processors__h100__latency={"kind": "fixed", "min_ms": 5, "per_token_ms": 25})
    s: Stack = await stack(settings=settings, pools=["h100-interactive"])  # the only reader of its stream
    _, aio = clients(s)
    text = "stream me token by token please"
    r = aioredis.Redis.from_url(s.redis_url)
    stream = await aio.chat.completions.create(
        model="sim-echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    stored_at_first: object = "unset"
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            if not pieces:  # the Result is stored when the worker finishes: it must not exist yet
                stored_at_first = await r.get(protocol.request_key(chunk.id.removeprefix("chatcmpl-")))
            pieces.append(chunk.choices[0].delta.content)
    await r.aclose()
    assert "".join(pieces) == text[::-1]
    assert len(pieces) == 8  # 31 characters: eight 4-character tokens, each its own chunk
    assert stored_at_first is None
    assert usage is not None and usage.completion_tokens == 8
    await aio.close()


async def test_error_classes(stack: StartStack, make_settings: Any) -> None:
    settings: Settings = make_settings(tiers__interactive__max_queue=1)
    s: Stack = await stack(settings=settings, pools=[])
    _, aio = clients(s, timeout_s=0.5)
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        await aio.chat.completions.create(model="no-such-model", messages=ask)
    assert "no-such-model" in missing.value.message and missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await aio.chat.completions.create(model="sim-echo", messages=ask, extra_body={"colour": "blue"})
    assert "colour" in bad.value.message
    with pytest.raises(openai.BadRequestError) as tier:
        await aio.chat.completions.create(model="sim-echo", messages=ask, service_tier="scale")
    assert tier.value.param == "service_tier"
    with pytest.raises(openai.APITimeoutError):  # no worker: nothing answers within the client's 0.5 s
        await aio.chat.completions.create(model="sim-echo", messages=ask)
    with pytest.raises(openai.RateLimitError) as full:  # the unanswered request fills the 1-long queue
        await aio.chat.completions.create(model="sim-echo", messages=ask)
    assert full.value.code == "queue_full" and int(full.value.response.headers["Retry-After"]) >= 1
    await aio.close()
