"""Under overload a worker spends its processor only on work that can still make its deadline,
and a pool shared by two tiers leaves the stricter tier's requests to a free pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from tests.integration.conftest import Stack, wait_until
from workers.backends import Backend, Completion, TokenSink
from workers.process import WorkerProcess

StartStack = Callable[..., Any]


class Recording:
    """A backend that runs as the wrapped one does and remembers which requests ran."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.ran: list[str] = []

    async def run(
        self, batch: Sequence[protocol.Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]:
        self.ran += [env.id for env in batch]
        return await self.inner.run(batch, sink, started_s)

    async def close(self) -> None:
        await self.inner.close()


async def _stored(redis_url: str, ids: list[str]) -> list[protocol.Stored | None]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        answers = await client.mget([protocol.request_key(i) for i in ids])
    finally:
        await client.aclose()
    return [None if raw is None else protocol.stored_decoder.decode(raw) for raw in answers]


async def _answered(redis_url: str, ids: list[str]) -> bool:
    return all(a is not None for a in await _stored(redis_url, ids))


async def _until_redis_time_passes(redis_url: str, ms: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        seconds, micros = await client.time()
        until_ms = seconds * 1000 + micros / 1000 + ms

        async def passed() -> bool:
            now_s, now_us = await client.time()
            return now_s * 1000 + now_us / 1000 >= until_ms

        await wait_until(passed, timeout_s=5)
    finally:
        await client.aclose()


async def _run_worker(settings: Settings, pool: str, redis_url: str) -> tuple[WorkerProcess, Recording, Any]:
    worker = WorkerProcess(settings, pool, redis_url)
    recording = Recording(worker.executor.backend)
    worker.executor.backend = recording
    return worker, recording, asyncio.create_task(worker.run())


async def test_a_worker_answers_at_once_and_unrun_what_can_no_longer_make_its_deadline(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(processors__cerebras_cs3__latency={"kind": "fixed", "min_ms": 50})
    s: Stack = await stack(settings=settings, pools=[])
    ids = []
    for i in range(3):  # queued while no worker runs: admission only applies the queue limit
        status, body = await s.infer(model="sim-echo", input=f"late {i}", tier="batch", deadline_ms=300, wait=False)
        assert status == 202
        ids.append(body["id"])
    status, body = await s.infer(model="sim-echo", input="on time", tier="batch", deadline_ms=60_000, wait=False)
    ids.append(body["id"])
    await _until_redis_time_passes(redis_url, 400)  # the first three are past their deadline
    worker, recording, task = await _run_worker(settings, "cerebras-batch", redis_url)
    try:
        await wait_until(lambda: _answered(redis_url, ids), timeout_s=10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    answers = await _stored(redis_url, ids)
    for answer in answers[:3]:
        assert isinstance(answer, protocol.Failure) and answer.code == "deadline_exceeded"
        assert answer.id in answer.message
    assert isinstance(answers[3], protocol.Result) and answers[3].output == "emit no"
    assert recording.ran == [ids[3]]  # the late ones never reached the processor


async def test_a_shared_pool_busy_with_batch_leaves_interactive_to_a_free_pool(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    # inferentia-mixed takes a second per batch-tier batch; tpu-interactive is quick and free.
    settings = make_settings(
        processors__inferentia2__latency={"kind": "fixed", "min_ms": 1000},
        pools__inferentia_mixed__max_batch=1,
        pools__inferentia_mixed__max_wait_ms=0,
    )
    s: Stack = await stack(settings=settings, pools=["tpu-interactive"])
    mixed, recording, task = await _run_worker(settings, "inferentia-mixed", redis_url)
    try:
        status, body = await s.infer(model="sim-embed", input="bulk", tier="batch", wait=False)
        assert status == 202
        await wait_until(lambda: recording.ran == [body["id"]], timeout_s=10)
        answers = [await s.infer(model="sim-embed", input=f"now {i}", tier="interactive") for i in range(5)]
        assert [status for status, _ in answers] == [200] * 5
        assert {answer["pool"] for _, answer in answers} == {"tpu-interactive"}
        assert recording.ran == [body["id"]]  # the busy mixed pool took none of them
    finally:
        mixed.stop()
        await asyncio.wait_for(task, 10)
