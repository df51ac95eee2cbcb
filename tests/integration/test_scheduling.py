"""Deadlines, admission, tier priority and deadline-aware batching, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from gateway.state import STATE
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until

StartStack = Callable[..., Any]


async def _wait_for_capacity(s: Stack, tier: str) -> None:
    state = s.server.app[STATE]
    stream = default_lane(tier, "default").stream
    await wait_until(lambda: state.capacity.get(stream) is not None, timeout_s=10)


async def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    # One batch-tier worker that takes 600 ms per request: under two requests a second.
    settings = make_settings(
        processors__cerebras_cs3__latency={"kind": "fixed", "min_ms": 600},
        pools__cerebras_batch__max_batch=1,
        pools__cerebras_batch__max_wait_ms=0,
    )
    s: Stack = await stack(settings=settings, pools=["cerebras-batch"])
    await _wait_for_capacity(s, "batch")
    for i in range(3):
        status, _ = await s.infer(model="sim-embed", input=f"filler {i}", tier="batch", wait=False)
        assert status == 202
    async with s.http.post(
        f"{s.url}/v1/infer",
        json={"model": "sim-embed", "input": "urgent", "tier": "batch", "deadline_ms": 1000},
        headers={"X-Tiergate-Queue-Info": "1"},
    ) as response:
        body = await response.json()
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
    assert body["error"]["type"] == "queue_full"
    assert "deadline of 1000 ms cannot be met on the batch tier" in body["error"]["message"]
    # A deadline that fits the queue is admitted and told its position.
    async with s.http.post(
        f"{s.url}/v1/infer",
        json={"model": "sim-embed", "input": "patient", "tier": "batch", "wait": False},
        headers={"X-Tiergate-Queue-Info": "1"},
    ) as response:
        assert response.status == 202
        assert int(response.headers["X-Tiergate-Queue-Position"]) >= 2
        assert float(response.headers["X-Tiergate-Estimated-Wait-Ms"]) >= 1000


async def test_the_stricter_tier_is_served_first(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(
        pools__inferentia_mixed__max_batch=1,
        pools__inferentia_mixed__max_wait_ms=0,
        pools__inferentia_mixed__min_share=0.0,
    )
    s: Stack = await stack(settings=settings, pools=[])
    ids: dict[str, str] = {}
    for tier in ("batch", "interactive"):  # the batch requests are queued first
        for i in range(2):
            status, body = await s.infer(model="sim-embed", input=f"{tier} {i}", tier=tier, wait=False)
            assert status == 202
            ids[body["id"]] = tier
    await s.start_workers(["inferentia-mixed"])

    client = aioredis.Redis.from_url(redis_url)

    async def stored() -> list[Any]:
        answers = await client.mget(map(protocol.request_key, ids))
        return [None if raw is None else protocol.stored_decoder.decode(raw) for raw in answers]

    try:
        await wait_until(lambda: _all_results(stored()))
        results = sorted(await stored(), key=lambda r: r.finished_at_ms)
    finally:
        await client.aclose()
    # Both tiers came in the worker's first read; the interactive ones ran first.
    assert [r.tier for r in results] == ["interactive", "interactive", "batch", "batch"]


async def _all_results(pending: Any) -> bool:
    return all(isinstance(r, protocol.Result) for r in await pending)


async def test_a_batch_closes_early_for_its_deadline(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    # Batches wait up to ten seconds for company, but a request due in three cannot wait that long:
    # only the deadline rule can close its batch in time, so an answer (not a 504) shows it did.
    # A 200 ms batch: the batch closes with about 400 ms left, plenty for a loaded machine.
    settings = make_settings(
        pools__cerebras_batch__max_wait_ms=10_000,
        processors__cerebras_cs3__latency={"kind": "fixed", "min_ms": 200},
    )
    s: Stack = await stack(settings=settings, pools=["cerebras-batch"])
    status, body = await s.infer(model="sim-echo", input="in a hurry", tier="batch", deadline_ms=3000)
    assert status == 200, body
    assert (body["output"], body["batch_size"]) == ("yrruh a ni", 1)  # it ran alone, without waiting for company


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_result(stack: StartStack) -> None:
    s: Stack = await stack(pools=["groq-realtime", "h100-interactive", "tpu-interactive", "inferentia-mixed"])
    headers = {"Idempotency-Key": "order-42"}
    request = {"model": "sim-echo", "input": "charge once", "tier": "interactive"}
    first, second = await asyncio.gather(
        s.http.post(f"{s.url}/v1/infer", json=request, headers=headers),
        s.http.post(f"{s.url}/v1/infer", json=request, headers=headers),
    )
    bodies = [await first.json(), await second.json()]
    assert first.status == second.status == 200
    assert bodies[0]["id"] == bodies[1]["id"] and bodies[0]["output"] == "ecno egrahc"
    assert "true" in (first.headers.get("Idempotent-Replayed"), second.headers.get("Idempotent-Replayed"))
    third = await s.http.post(f"{s.url}/v1/infer", json=request, headers=headers)
    assert (await third.json())["id"] == bodies[0]["id"]
    other = await s.infer(**request)
    assert other[1]["id"] != bodies[0]["id"]
