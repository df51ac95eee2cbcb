"""A tier's queued requests are run tenant by tenant, by each key's weight: a light tenant's
request joins the next batch rather than waiting behind a flooding tenant's queue. Real Redis,
a gateway with API keys on a real port, one worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from tests.integration.conftest import Stack, wait_until
from tests.integration.test_tenants import make_key, post

StartStack = Callable[..., Any]
POOL = "h100-interactive"


def _one_worker(make_settings: Callable[..., Settings]) -> Settings:
    """Keys on; batches of four that take 100 ms each (so each batch ends on its own millisecond)."""
    return make_settings(
        auth__mode="keys",
        pools__h100_interactive__max_batch=4,
        pools__h100_interactive__max_wait_ms=0,
        processors__h100__latency={"kind": "fixed", "min_ms": 100},
    )


async def _queue(s: Stack, key: str, names: list[str]) -> dict[str, str]:
    """Queue one `wait: false` request per name (its input); request id -> name."""
    ids = {}
    for name in names:
        status, body, _ = await post(s, key, input=name, tier="interactive", wait=False)
        assert status == 202, body
        ids[body["id"]] = name
    return ids


async def _batches(redis_url: str, ids: dict[str, str]) -> list[list[str]]:
    """The requests' names grouped by the batch that ran them, in the order the batches ran."""
    client = aioredis.Redis.from_url(redis_url)

    async def stored() -> list[Any]:
        answers = await client.mget([protocol.request_key(i) for i in ids])
        return [None if raw is None else protocol.stored_decoder.decode(raw) for raw in answers]

    try:
        await wait_until(lambda: _all_results(stored()), timeout_s=20)
        results = await stored()
    finally:
        await client.aclose()
    by_end: dict[int, list[str]] = {}
    for result in sorted(results, key=lambda r: r.finished_at_ms):
        assert result.output == ids[result.id][::-1]
        by_end.setdefault(result.finished_at_ms, []).append(ids[result.id])
    return [sorted(names) for _, names in sorted(by_end.items())]


async def _all_results(pending: Any) -> bool:
    return all(isinstance(r, protocol.Result) for r in await pending)


async def test_a_light_tenants_request_runs_in_the_next_batch_not_behind_a_flooders_queue(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = _one_worker(make_settings)
    s: Stack = await stack(settings=settings, pools=[])
    (key_a, _), (key_b, _) = [await make_key(redis_url, settings, t) for t in ("tenant-a", "tenant-b")]
    ids = await _queue(s, key_a, [f"a{i}" for i in range(6)])
    ids |= await _queue(s, key_b, ["b0"])  # queued last, behind six of a's
    await s.start_workers([POOL])
    # The worker reads all seven at once; first come, first served would run b0 in the second batch.
    assert await _batches(redis_url, ids) == [["a0", "a1", "a2", "b0"], ["a3", "a4", "a5"]]


async def test_a_keys_weight_sets_its_tenants_turns(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = _one_worker(make_settings)
    s: Stack = await stack(settings=settings, pools=[])
    key_c, _ = await make_key(redis_url, settings, "tenant-c")
    key_h, _ = await make_key(redis_url, settings, "tenant-h", weight=3.0)
    ids = await _queue(s, key_c, [f"c{i}" for i in range(4)])
    ids |= await _queue(s, key_h, [f"h{i}" for i in range(4)])
    await s.start_workers([POOL])
    # c's turn first (its requests came first), then three of h's, by its key's weight of 3.
    assert await _batches(redis_url, ids) == [["c0", "h0", "h1", "h2"], ["c1", "c2", "c3", "h3"]]
