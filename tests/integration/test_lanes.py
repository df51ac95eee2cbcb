"""Pools of one tier serving different models, against a real Redis: `tpu-interactive` also serves
`sim-large`, which no other interactive pool serves. Its requests reach only that pool, through a
stream of their own; the pool reads both of its interactive streams and heartbeats on each, and
the queue metrics are labelled by stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis import asyncio as aioredis

from core import protocol
from core.settings import Settings, parse_settings
from tests.conftest import default_raw
from tests.integration.conftest import Stack, wait_until

pytestmark = pytest.mark.redis_server

PER_MODEL = 24


def settings_with_a_large_model() -> Settings:
    raw = default_raw()
    raw["models"]["sim-large"] = {"kind": "echo", "params": 70_000_000_000}
    raw["pools"]["tpu-interactive"]["models"] = ["sim-echo", "sim-embed", "sim-large"]
    return parse_settings(raw)


async def test_a_model_served_by_one_pool_of_a_tier_reaches_only_that_pool(
    stack: Callable[..., Any], redis_url: str
) -> None:
    settings = settings_with_a_large_model()
    s: Stack = await stack(settings, pools=["h100-interactive", "tpu-interactive"])
    asked = [(model, f"{model} request {i}") for i in range(PER_MODEL) for model in ("sim-large", "sim-echo")]
    answers = await asyncio.gather(*(s.infer(model=model, input=text) for model, text in asked))
    assert [status for status, _ in answers] == [200] * 2 * PER_MODEL, answers[:2]
    assert [answer["output"] for _, answer in answers] == [text[::-1] for _, text in asked]
    pools = {model: set() for model, _ in asked}
    for (model, _), (_, answer) in zip(asked, answers, strict=True):
        pools[model].add(answer["pool"])
    assert pools["sim-large"] == {"tpu-interactive"}
    assert pools["sim-echo"] <= {"h100-interactive", "tpu-interactive"}

    lanes = {lane.models: lane for lane in settings.lanes() if lane.tier == "interactive"}
    only_tpu = lanes["sim-large",]
    assert only_tpu.pools == ("tpu-interactive",)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for lane in (only_tpu, lanes["sim-echo", "sim-embed"]):  # the tpu worker heartbeats on both
            beats = await client.hgetall(protocol.heartbeat_key(lane.name))
            pools = {protocol.heartbeat_decoder.decode(raw).pool for raw in beats.values()}
            assert "tpu-interactive" in pools
    finally:
        await client.aclose()


async def test_the_queue_metrics_are_labelled_by_stream(stack: Callable[..., Any]) -> None:
    s: Stack = await stack(settings_with_a_large_model(), pools=[])
    status, body = await s.infer(model="sim-large", input="waits", wait=False)
    assert status == 202, body

    async def depth_of_tpu_only_stream() -> bool:
        async with s.http.get(f"{s.url}/metrics") as response:
            text = await response.text()
        return 'tiergate_queue_depth{pools="tpu-interactive",region="default",tier="interactive"} 1.0' in text

    await wait_until(depth_of_tpu_only_stream, timeout_s=10)
