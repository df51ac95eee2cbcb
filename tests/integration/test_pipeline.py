"""HTTP -> tier stream -> worker -> reply stream -> HTTP, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from gateway.state import STATE
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until
from workers.models import embed

StartStack = Callable[..., Any]


def expected_output(model: str, text: str) -> object:
    return text[::-1] if model == "sim-echo" else embed(text, 16)


ON_ONE_SERVER_AND_A_CLUSTER = pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)


@ON_ONE_SERVER_AND_A_CLUSTER
async def test_every_tier_and_model_answers_its_own_request(stack: StartStack) -> None:
    s: Stack = await stack()
    for tier in ("realtime", "interactive", "batch"):
        for model in ("sim-echo", "sim-embed"):
            text = f"{tier} {model} question"
            status, body = await s.infer(model=model, input=text, tier=tier)
            assert status == 200, body
            assert body["output"] == expected_output(model, text)
            assert (body["model"], body["tier"]) == (model, tier)
            assert body["pool"] in s.settings.pools_for(tier, "default")
            assert body["processor"] == s.settings.pools[body["pool"]].processor
            timings = body["timings"]
            assert timings["queue_ms"] >= 0 and timings["service_ms"] > 0
            assert timings["total_ms"] >= timings["service_ms"]
            assert body["slo_met"] == (timings["total_ms"] <= s.settings.tiers[tier].slo.latency_ms)
            assert body["energy_j"] > 0 and body["cost"] > 0


@ON_ONE_SERVER_AND_A_CLUSTER
async def test_batched_pool_runs_concurrent_requests_in_batches(stack: StartStack) -> None:
    s: Stack = await stack(pools=["cerebras-batch", "groq-realtime", "h100-interactive"])
    texts = [f"request number {i}" for i in range(64)]
    answers = await asyncio.gather(*(s.infer(model="sim-echo", input=t, tier="batch") for t in texts))
    assert [status for status, _ in answers] == [200] * 64
    assert [body["output"] for _, body in answers] == [t[::-1] for t in texts]
    assert {body["pool"] for _, body in answers} == {"cerebras-batch"}
    assert max(body["batch_size"] for _, body in answers) > 1
    assert len({body["id"] for _, body in answers}) == 64


async def test_deterministic_pool_runs_one_at_a_time(stack: StartStack) -> None:
    s: Stack = await stack(pools=["groq-realtime", "h100-interactive", "cerebras-batch"])
    answers = await asyncio.gather(*(s.infer(model="sim-echo", input=f"rt {i}", tier="realtime") for i in range(20)))
    assert all(status == 200 for status, _ in answers)
    assert {body["batch_size"] for _, body in answers} == {1}
    assert all(body["output"] == f"rt {i}"[::-1] for i, (_, body) in enumerate(answers))


@ON_ONE_SERVER_AND_A_CLUSTER
async def test_async_request_is_queued_then_done(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])
    status, body = await s.infer(model="sim-echo", input="later please", wait=False)
    assert status == 202
    assert body["status_url"] == f"/v1/requests/{body['id']}"
    status, queued = await s.get(body["status_url"])
    assert (status, queued["status"], queued["tier"]) == (200, "queued", "interactive")
    await s.start_workers(["h100-interactive", "tpu-interactive", "inferentia-mixed"])

    async def done() -> bool:
        return (await s.get(body["status_url"]))[1]["status"] == "done"

    await wait_until(done)
    _, result = await s.get(body["status_url"])
    assert result["output"] == "esaelp retal" and result["id"] == body["id"]
    assert result["timings"]["total_ms"] >= result["timings"]["service_ms"]


async def test_unknown_request_id_is_404(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])
    status, body = await s.get("/v1/requests/0123456789abcdef")
    assert status == 404
    assert body == {
        "error": {
            "type": "not_found",
            "message": "no request with id '0123456789abcdef' (unknown, or its result expired)",
        }
    }


async def test_bad_requests_get_400_naming_the_field(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])
    cases = [
        ({"input": "x"}, "Object missing required field `model`"),
        ({"model": "sim-echo", "input": 5}, "Expected `str`, got `int` - at `$.input`"),
        ({"model": "sim-echo", "input": "x", "colour": 1}, "Object contains unknown field `colour`"),
        ({"model": "sim-echo", "input": "x", "deadline_ms": 0}, "Expected `int` >= 1 - at `$.deadline_ms`"),
        ({"model": "sim-echo", "input": "x", "tier": "urgent"}, "unknown tier 'urgent'"),
        ({"model": "sim-echo", "input": ""}, "Expected `str` of length >= 1 - at `$.input`"),
    ]
    for body, message in cases:
        status, answer = await s.infer(**body)
        assert status == 400, body
        assert answer["error"]["type"] == "invalid_request"
        assert message in answer["error"]["message"]
    async with s.http.post(f"{s.url}/v1/infer", data=b"{not json") as response:
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]
    status, answer = await s.infer(model="gpt-9", input="x")
    assert (status, answer["error"]["type"]) == (404, "model_not_found")


async def test_oversized_body_is_413(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    s: Stack = await stack(settings=make_settings(gateway__max_body_bytes=1000), pools=[])
    status, body = await s.infer(model="sim-echo", input="x" * 2000)
    assert status == 413
    assert body["error"] == {"type": "payload_too_large", "message": "the body exceeds the limit of 1000 bytes"}


async def test_deadline_passes_504_and_the_expired_request_is_never_run(stack: StartStack, redis_url: str) -> None:
    s: Stack = await stack(pools=[])
    status, body = await s.infer(model="sim-echo", input="too late", tier="batch", deadline_ms=150)
    assert status == 504
    assert body["error"]["type"] == "deadline_exceeded"
    assert "within its deadline of 150 ms" in body["error"]["message"]
    await s.start_workers(["cerebras-batch", "inferentia-mixed"])
    stream = default_lane("batch", "default").stream
    client = aioredis.Redis.from_url(redis_url)
    try:
        await wait_until(lambda: _stream_drained(client, stream))
        # The worker answered it as expired instead of running it: its stored state says so.
        keys = [k async for k in client.scan_iter(match="tg:{req.*")]
        assert len(keys) == 1
        stored = protocol.stored_decoder.decode(await client.get(keys[0]))
        assert isinstance(stored, protocol.Failure) and stored.code == "deadline_exceeded"
    finally:
        await client.aclose()


async def _stream_drained(client: aioredis.Redis, stream: str) -> bool:
    pending = await client.xpending(stream, protocol.GROUP)
    return pending["pending"] == 0 and await client.xlen(stream) == 0


async def test_full_queue_is_refused_with_429(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    s: Stack = await stack(settings=make_settings(tiers__batch__max_queue=3), pools=[])
    statuses = [(await s.infer(model="sim-echo", input=f"q{i}", tier="batch", wait=False))[0] for i in range(3)]
    assert statuses == [202, 202, 202]
    async with s.http.post(f"{s.url}/v1/infer", json={"model": "sim-echo", "input": "one", "tier": "batch"}) as r:
        status, body, retry_after = r.status, await r.json(), r.headers.get("Retry-After")
    assert (status, retry_after) == (429, "1")
    assert body["error"] == {
        "type": "queue_full",
        "message": "the batch queue is full (3 requests waiting, limit 3); retry later",
    }


async def test_redis_unreachable_is_503_and_healthz_stays_up(stack: StartStack) -> None:
    from ops.embedded import free_port

    s: Stack = await stack(pools=[], url=f"redis://127.0.0.1:{free_port()}/0")
    status, body = await s.infer(model="sim-echo", input="x")
    assert status == 503
    assert body["error"]["type"] == "redis_unavailable"
    assert body["error"]["message"].startswith("Redis is unreachable")
    assert (await s.get("/readyz"))[0] == 503
    assert await s.get("/healthz") == (200, {"status": "ok"})


async def test_readyz_waits_until_every_pool_has_had_a_live_worker(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])

    async def readyz_says(expected: str) -> bool:
        status, body = await s.get("/readyz")
        return status == 200 if expected == "ready" else body.get("error", {}).get("message") == expected

    # cerebras-batch serves the batch tier alone: it may scale to zero, so readiness never waits for it.
    await wait_until(
        lambda: readyz_says(
            "no live worker yet in pools groq-realtime, h100-interactive, inferentia-mixed, tpu-interactive"
        )
    )
    await s.start_workers(["h100-interactive", "inferentia-mixed", "tpu-interactive"])
    await wait_until(lambda: readyz_says("no live worker yet in pool groq-realtime"))
    status, body = await s.get("/readyz")
    assert (status, body["status"], body["error"]["type"]) == (503, "starting", "not_ready")
    await s.start_workers(["groq-realtime"])
    await wait_until(lambda: readyz_says("ready"))
    # Ready once, it stays ready while Redis answers: losing a pool's workers does not take every tier away.
    await s.stop_workers()  # they withdraw their heartbeats: the next sample finds no live worker
    state = s.server.app[STATE]
    await wait_until(lambda: state.capacity and all(capacity is None for capacity in state.capacity.values()))
    assert (await s.get("/readyz"))[0] == 200


async def test_undecodable_entry_is_dead_lettered_and_the_worker_keeps_serving(
    stack: StartStack, redis_url: str
) -> None:
    s: Stack = await stack(pools=["groq-realtime", "h100-interactive", "cerebras-batch"])
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xadd(default_lane("realtime", "default").stream, {protocol.PAYLOAD_FIELD: b"\xc1garbage"})
        status, body = await s.infer(model="sim-echo", input="still here", tier="realtime")
        assert (status, body["output"]) == (200, "ereh llits")
        dead = protocol.dead_letter_key(default_lane("realtime", "default").name)
        await wait_until(lambda: client.xlen(dead))
        ((_, fields),) = await client.xrange(dead)
        letter = protocol.dead_letter_decoder.decode(fields[protocol.PAYLOAD_FIELD])
        assert letter.payload == b"\xc1garbage" and "undecodable entry" in letter.reason
    finally:
        await client.aclose()


async def test_a_client_that_hangs_up_frees_its_waiter_at_once(stack: StartStack) -> None:
    s: Stack = await stack(pools=[])  # no worker: the request would wait for its 120 s deadline
    waiters = s.server.app[STATE].waiters
    client = asyncio.create_task(s.infer(model="sim-echo", input="never mind", tier="batch"))
    await wait_until(lambda: len(waiters) == 1)
    client.cancel()  # the client closes its connection
    await wait_until(lambda: len(waiters) == 0, timeout_s=5)
