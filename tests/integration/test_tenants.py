"""API keys against gateways on real ports and the real Redis: 401, 403, another tenant's request
as 404, and one key's limits shared by two gateways (each with its own Redis client, cache and
counters in memory), on the native API and through the official `openai` SDK."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai
import pytest

from core import protocol, redis_client
from core.settings import Settings
from gateway.auth import hash_key, new_key
from gateway.tenant_store import Held, TenantStore
from tests.integration.conftest import Stack, wait_until

StartStack = Callable[..., Any]
ECHO = ["h100-interactive"]
ASK = [{"role": "user", "content": "hello"}]


async def make_key(redis_url: str, settings: Settings, tenant: str, **limits: Any) -> tuple[str, str]:
    """A key created as `tiergate keys create` does; (key, id)."""
    key, key_id = new_key()
    redis = await redis_client.connect(settings.redis, redis_url)
    try:
        grant = protocol.Grant(key_id=key_id, tenant=tenant, **limits)
        await TenantStore(redis).create(hash_key(key), protocol.KeyRecord(grant=grant))
    finally:
        await redis.aclose()
    return key, key_id


async def post(s: Stack, key: str | None, **body: object) -> tuple[int, dict[str, Any], Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    body = {"model": "sim-echo", "input": "hello", **body}
    async with s.http.post(f"{s.url}/v1/infer", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def send(s: Stack, key: str | None, method: str, path: str) -> tuple[int, dict[str, Any]]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with s.http.request(method, f"{s.url}{path}", headers=headers) as response:
        return response.status, await response.json()


def sdk(s: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def keyed(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(auth__mode="keys")


async def test_a_missing_or_unknown_key_is_refused_with_401_and_health_stays_open(
    stack: StartStack, keyed: Settings
) -> None:
    s: Stack = await stack(settings=keyed, pools=ECHO)
    status, body, headers = await post(s, None)
    assert (status, body["error"]["type"]) == (401, "unauthorized") and "Bearer" in body["error"]["message"]
    assert headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = await post(s, "tg-not-a-key")
    assert (status, body["error"]["message"]) == (401, "unknown or revoked API key")
    assert (await send(s, None, "GET", "/healthz"))[0] == 200
    # Readiness answers without a key: 503 here only because the config's other pools run no worker.
    status, body = await send(s, None, "GET", "/readyz")
    assert (status, body["status"]) in ((200, "ready"), (503, "starting"))
    async with sdk(s, "tg-not-a-key") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model="sim-echo", messages=ASK)  # type: ignore[arg-type]
    assert refused.value.code == "unauthorized"
    key, _ = await make_key(s.redis_url, keyed, "acme")
    status, body, _ = await post(s, key)
    assert (status, body["output"]) == (200, "olleh")
    async with sdk(s, key) as client:
        chat = await client.chat.completions.create(model="sim-echo", messages=ASK)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == "olleh"


async def test_what_a_key_does_not_allow_is_refused_with_403_naming_it(stack: StartStack, keyed: Settings) -> None:
    s: Stack = await stack(settings=keyed, pools=ECHO)
    key, _ = await make_key(s.redis_url, keyed, "acme", tiers=("interactive",), models=("sim-echo",))
    status, body, _ = await post(s, key, tier="batch")
    assert (status, body["error"]["type"]) == (403, "forbidden")
    assert body["error"]["message"] == "this API key may not use the tier 'batch' (it allows interactive)"
    status, body, _ = await post(s, key, model="sim-embed")
    assert status == 403 and "the model 'sim-embed'" in body["error"]["message"]
    async with sdk(s, key) as client:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.embeddings.create(model="sim-embed", input="x")
        assert refused.value.code == "forbidden" and "sim-embed" in refused.value.message
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="sim-echo",
                messages=ASK,  # type: ignore[arg-type]
                service_tier="flex",
            )
    assert (await post(s, key, tier="interactive"))[0] == 200


async def test_a_tenant_sees_and_cancels_only_its_own_requests(stack: StartStack, keyed: Settings) -> None:
    s: Stack = await stack(settings=keyed, pools=[])  # no worker: the request stays queued
    mine, _ = await make_key(s.redis_url, keyed, "acme")
    also_mine, _ = await make_key(s.redis_url, keyed, "acme")
    theirs, _ = await make_key(s.redis_url, keyed, "globex")
    status, body, _ = await post(s, mine, wait=False)
    assert status == 202
    path = body["status_url"]
    status, body = await send(s, theirs, "GET", path)
    assert status == 404 and body["error"]["type"] == "not_found"
    assert (await send(s, theirs, "DELETE", path))[0] == 404
    assert (await send(s, mine, "GET", path))[1]["status"] == "queued"
    assert (await send(s, also_mine, "GET", path))[1]["status"] == "queued"  # another key of the same tenant
    assert (await send(s, also_mine, "DELETE", path))[1]["status"] == "cancelled"


async def _start_of_a_minute(s: Stack) -> None:
    """Wait until at least 20 s remain in the current minute on Redis's clock: the per-minute
    counts a test reads must not roll over in the middle of it."""
    redis = await redis_client.connect(s.settings.redis, s.redis_url)

    async def early() -> bool:
        seconds, _ = await redis.time()
        return int(seconds) % 60 < 40

    try:
        await wait_until(early, timeout_s=30, interval_s=0.5)
    finally:
        await redis.aclose()


async def test_one_key_through_two_gateways_gets_exactly_its_requests_a_minute(
    stack: StartStack, keyed: Settings
) -> None:
    one: Stack = await stack(settings=keyed, pools=ECHO)
    two: Stack = await stack(settings=keyed, pools=[])
    key, _ = await make_key(one.redis_url, keyed, "acme", rpm=12)
    await _start_of_a_minute(one)
    answers = await asyncio.gather(*(post(one if i % 2 else two, key) for i in range(40)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 12, 429: 28}
    refused = [(body, headers) for status, body, headers in answers if status == 429]
    assert {body["error"]["type"] for body, _ in refused} == {"rate_limited"}
    assert {body["error"]["message"] for body, _ in refused} == {
        "this API key is over its limit of 12 requests a minute (rpm)"
    }
    assert all(1 <= int(headers["Retry-After"]) <= 60 for _, headers in refused)
    async with sdk(two, key) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="sim-echo", messages=ASK)  # type: ignore[arg-type]
    assert limited.value.code == "rate_limited"


async def test_concurrency_is_shared_by_two_gateways_and_freed_at_every_outcome(
    stack: StartStack, keyed: Settings
) -> None:
    one: Stack = await stack(settings=keyed, pools=[])  # no worker: requests wait until their deadline
    two: Stack = await stack(settings=keyed, pools=[])
    key, key_id = await make_key(one.redis_url, keyed, "acme", max_concurrency=3)
    waiting = [asyncio.create_task(post(gw, key, deadline_ms=3000)) for gw in (one, two, one)]
    redis = await redis_client.connect(keyed.redis, one.redis_url)
    slots = protocol.inflight_key(key_id)
    try:
        await wait_until(lambda: _equals(redis.zcard(slots), 3))
        status, body, _ = await post(two, key)
        assert (status, body["error"]["message"]) == (
            429,
            "this API key is over its limit of 3 requests at once (max_concurrency)",
        )
        assert [status for status, _, _ in await asyncio.gather(*waiting)] == [504, 504, 504]
        await wait_until(lambda: _equals(redis.zcard(slots), 0))  # released by the deadlines' outcomes
        await one.start_workers(ECHO)
        assert (await post(two, key))[0] == 200
        await wait_until(lambda: _equals(redis.zcard(slots), 0))
    finally:
        await redis.aclose()


async def test_tokens_a_minute_count_each_results_tokens(stack: StartStack, keyed: Settings) -> None:
    s: Stack = await stack(settings=keyed, pools=ECHO)
    key, key_id = await make_key(s.redis_url, keyed, "acme", tpm=20)
    await _start_of_a_minute(s)
    redis = await redis_client.connect(keyed.redis, s.redis_url)
    try:
        used = 0
        for _ in range(20):
            status, body, _ = await post(s, key, input="eight characters")  # 4 prompt + 4 output tokens
            if status != 200:
                break
            used += 8
            counter = protocol.rate_key(key_id, "tpm", int((await redis.time())[0]) // 60)
            await wait_until(lambda c=counter, n=used: _equals(redis.get(c), str(n).encode()))
        assert used == 24  # admitted while the minute's count was below 20: 0, 8, 16
        assert (status, body["error"]["type"]) == (429, "rate_limited")
        assert body["error"]["message"] == "this API key is over its limit of 20 tokens a minute (tpm)"
    finally:
        await redis.aclose()


async def test_a_revoked_key_is_refused_by_every_gateway(stack: StartStack, keyed: Settings) -> None:
    one: Stack = await stack(settings=keyed, pools=ECHO)
    two: Stack = await stack(settings=keyed, pools=[])
    key, key_id = await make_key(one.redis_url, keyed, "acme")
    assert [(await post(gw, key))[0] for gw in (one, two)] == [200, 200]  # now cached by both
    redis = await redis_client.connect(keyed.redis, one.redis_url)
    try:
        assert await TenantStore(redis).revoke(key_id)
    finally:
        await redis.aclose()
    for gw in (one, two):  # each polls the keys' version every second
        await wait_until(lambda gw=gw: _status_is(post(gw, key), 401), timeout_s=5, interval_s=0.1)


async def _status_is(answer: Any, status: int) -> bool:
    return bool((await answer)[0] == status)


async def _equals(value: Any, expected: object) -> bool:
    return bool(await value == expected)


async def test_a_key_listed_hashed_in_the_config_needs_no_redis_record(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    static = {"sha256": hash_key("tg-static-key"), "tenant": "ops", "models": ["sim-echo"]}
    settings = make_settings(auth={"mode": "keys", "keys": {"ops-key": static}})
    s: Stack = await stack(settings=settings, pools=ECHO)
    status, body, _ = await post(s, "tg-static-key")
    assert (status, body["output"]) == (200, "olleh")
    status, body, _ = await post(s, "tg-static-key", model="sim-embed")
    assert status == 403 and "sim-embed" in body["error"]["message"]


async def test_a_tenant_lists_only_its_models_and_never_replays_another_tenants_idempotency_key(
    stack: StartStack, keyed: Settings
) -> None:
    s: Stack = await stack(settings=keyed, pools=ECHO)
    echo_only, _ = await make_key(s.redis_url, keyed, "acme", models=("sim-echo",))
    other, _ = await make_key(s.redis_url, keyed, "globex")
    async with sdk(s, echo_only) as client:
        assert [m.id for m in (await client.models.list()).data] == ["sim-echo"]
    answers = []
    for key, text in ((echo_only, "first"), (other, "second")):
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "same-key"}
        body = {"model": "sim-echo", "input": text}
        async with s.http.post(f"{s.url}/v1/infer", json=body, headers=headers) as response:
            answers.append(
                (response.status, (await response.json())["output"], "Idempotent-Replayed" in response.headers)
            )
    assert answers == [(200, "tsrif", False), (200, "dnoces", False)]


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_key_records_and_limit_scripts_work_on_one_server_and_a_cluster(redis_url: str, keyed: Settings) -> None:
    redis = await redis_client.connect(keyed.redis, redis_url)
    store = TenantStore(redis)
    try:
        grant = protocol.Grant(key_id="key_c1", tenant="acme", rpm=2, max_concurrency=1)
        await store.create(hash_key("tg-k"), protocol.KeyRecord(grant=grant))
        assert await store.lookup(hash_key("tg-k")) == grant and await store.version() == 1
        now_ms = int((await redis.time())[0]) * 1000
        first, second, third = (Held("key_c1", f"r{i}", now_ms // 60_000, now_ms + 60_000) for i in range(3))
        assert await store.acquire(grant, first, now_ms) is None
        assert await store.acquire(grant, second, now_ms) == "max_concurrency"
        await store.release(first, tokens=7)
        assert await store.acquire(grant, second, now_ms) is None
        await store.release(second, tokens=0)
        assert await store.acquire(grant, third, now_ms) == "rpm"
        assert await store.revoke("key_c1") and await store.lookup(hash_key("tg-k")) is None
        assert await store.version() == 2 and not await store.revoke("key_c1")
    finally:
        await redis.aclose()
