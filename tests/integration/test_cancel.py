"""Cancellation over real HTTP against a real Redis: `DELETE /v1/requests/{id}` and a client
that hangs up cancel a request no worker has started (it never runs, and is counted cancelled);
a request already running finishes and its answer is discarded.

One single-request worker (groq-realtime, max_batch 1) whose backend holds every batch until
the test releases it: the first request runs and holds the worker, the next two wait in the
worker's buffer (read, not started), and any later one waits in the stream, unread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from core import protocol
from core.protocol import Envelope
from core.redis_client import connect
from core.settings import RedisSettings
from gateway.metrics import METRICS
from tests.conftest import default_lane
from tests.integration.conftest import Stack, wait_until
from workers.backends import Backend, Completion, TokenSink
from workers.process import WorkerProcess

StartStack = Callable[..., Any]
POOL, TIER = "groq-realtime", "realtime"
STREAM = default_lane(TIER, "default").stream
DEADLINE_MS = 60_000


class GatedBackend:
    """Records every request id it is given, and holds each batch until `gate` is set."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.seen: list[str] = []
        self.gate = asyncio.Event()

    async def run(
        self, batch: Sequence[Envelope], sink: TokenSink | None = None, started_s: float | None = None
    ) -> list[Completion]:
        self.seen += [env.id for env in batch]
        await self.gate.wait()
        return await self.inner.run(batch, sink)  # timed from now: the gate held it

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def redis_client(redis_url: str) -> Any:
    client = await connect(RedisSettings(), redis_url)  # a cluster client where `redis_url` is a cluster's
    yield client
    await client.aclose()


Gated = tuple[Stack, WorkerProcess, GatedBackend]


@pytest.fixture
async def gated(stack: StartStack) -> AsyncIterator[Gated]:
    """A gateway and the gated worker; the gate opens at the end whatever happened, so it stops."""
    s: Stack = await stack(pools=[POOL])
    worker = s.workers[POOL][0]
    backend = GatedBackend(worker.executor.backend)
    worker.executor.backend = backend
    yield s, worker, backend
    backend.gate.set()


async def accept(s: Stack, text: str) -> str:
    status, body = await s.infer(model="sim-echo", input=text, tier=TIER, deadline_ms=DEADLINE_MS, wait=False)
    assert status == 202, body
    return str(body["id"])


async def delete(s: Stack, request_id: str) -> tuple[int, dict[str, Any]]:
    async with s.http.delete(f"{s.url}/v1/requests/{request_id}") as response:
        return response.status, await response.json()


async def status_is(s: Stack, request_id: str, status: str) -> bool:
    return bool((await s.get(f"/v1/requests/{request_id}"))[1].get("status") == status)


async def stream_holds(client: aioredis.Redis, entries: int) -> bool:
    return bool(await client.xlen(STREAM) == entries)


async def queued_ids(client: aioredis.Redis) -> list[str]:
    """The request ids in the stream, oldest first."""
    return [
        protocol.envelope_decoder.decode(fields[protocol.PAYLOAD_FIELD]).id for _, fields in await client.xrange(STREAM)
    ]


def worker_count(worker: WorkerProcess, outcome: str) -> float:
    labels = {"pool": POOL, "processor": "groq-lpu", "tier": TIER, "outcome": outcome}
    return worker.metrics.registry.get_sample_value("tiergate_worker_requests_total", labels) or 0.0


def gateway_count(s: Stack, outcome: str) -> float:
    pool, processor = (POOL, "groq-lpu") if outcome == "ok" else ("none", "none")
    labels = {"tier": TIER, "pool": pool, "processor": processor, "outcome": outcome}
    return s.server.app[METRICS].registry.get_sample_value("tiergate_requests_total", labels) or 0.0


async def send_waiting(s: Stack, text: str) -> asyncio.Task[tuple[int, dict[str, Any]]]:
    return asyncio.create_task(s.infer(model="sim-echo", input=text, tier=TIER, deadline_ms=DEADLINE_MS))


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_delete_cancels_queued_requests_and_no_worker_runs_them(
    gated: Gated, redis_client: aioredis.Redis
) -> None:
    s, worker, backend = gated
    a = await accept(s, "runs first")
    await wait_until(lambda: backend.seen == [a])
    b, c, d = [await accept(s, f"queued {i}") for i in range(3)]
    await wait_until(lambda: len(worker.batcher) == 2)  # b and c read by the worker; d stays in the stream
    stored = await redis_client.get(protocol.accepted_key(d))
    assert protocol.stored_decoder.decode(stored).entry_id  # type: ignore[union-attr]

    for request_id in (b, d):
        assert await delete(s, request_id) == (200, {"id": request_id, "status": "cancelled"})
    assert await delete(s, b) == (200, {"id": b, "status": "cancelled"})  # again: still cancelled
    assert await queued_ids(redis_client) == [a, c]  # b and d deleted; the worker holds b, d it never read
    await wait_until(lambda: b in worker.cancelled)

    backend.gate.set()
    await wait_until(lambda: status_is(s, c, "done"))
    await wait_until(lambda: gateway_count(s, "ok") == 2)  # a and c, read after b's worker reply
    assert backend.seen == [a, c]
    for request_id in (b, d):
        assert await s.get(f"/v1/requests/{request_id}") == (200, {"id": request_id, "status": "cancelled"})
    assert worker_count(worker, "cancelled") == 1  # b; d never reached a worker
    assert gateway_count(s, "cancelled") == 2  # each once, though b was answered twice
    await wait_until(lambda: stream_holds(redis_client, 0))


async def test_clients_that_hang_up_before_their_requests_start_cancel_them(
    gated: Gated, redis_client: aioredis.Redis
) -> None:
    s, worker, backend = gated
    a = await accept(s, "runs first")
    await wait_until(lambda: backend.seen == [a])
    clients = []
    for i, buffered in enumerate((1, 2, 2)):  # b and c wait in the worker, d in the stream
        clients.append(await send_waiting(s, f"waiting {i}"))
        await wait_until(lambda n=i: stream_holds(redis_client, n + 2))
        await wait_until(lambda n=buffered: len(worker.batcher) == n)
    _, b, c, d = await queued_ids(redis_client)
    for client in (clients[0], clients[2]):
        client.cancel()  # the client closes its connection
    await wait_until(lambda: b in worker.cancelled and d in worker.cancelled)
    await wait_until(lambda: stream_holds(redis_client, 2))  # b's and d's entries deleted; d unread
    assert gateway_count(s, "cancelled") == 2

    backend.gate.set()
    status, body = await clients[1]
    assert (status, body["id"]) == (200, c)
    assert backend.seen == [a, c]
    assert worker_count(worker, "cancelled") == 1  # b; d never reached a worker
    for request_id in (b, d):
        assert await s.get(f"/v1/requests/{request_id}") == (200, {"id": request_id, "status": "cancelled"})
    assert (await s.infer(model="sim-echo", input="later", tier=TIER))[0] == 200  # b's worker reply was read
    assert gateway_count(s, "cancelled") == 2


async def test_a_request_already_running_finishes_and_its_answer_is_discarded(
    gated: Gated, redis_client: aioredis.Redis
) -> None:
    s, worker, backend = gated
    a = await accept(s, "running")
    await wait_until(lambda: backend.seen == [a])
    assert await delete(s, a) == (200, {"id": a, "status": "cancelled"})
    backend.gate.set()
    await wait_until(lambda: worker_count(worker, "ok") == 1)  # it ran to the end
    await wait_until(lambda: stream_holds(redis_client, 0))
    assert await s.get(f"/v1/requests/{a}") == (200, {"id": a, "status": "cancelled"})
    assert (await s.infer(model="sim-echo", input="later", tier=TIER))[0] == 200  # a's reply was read
    assert (gateway_count(s, "cancelled"), gateway_count(s, "ok")) == (1, 1)  # a cancelled; "later" ok


async def test_delete_of_an_answered_request_is_409_and_of_an_unknown_one_404(stack: StartStack) -> None:
    s: Stack = await stack(pools=[POOL])
    a = await accept(s, "quick")
    await wait_until(lambda: status_is(s, a, "done"))
    assert await delete(s, a) == (
        409,
        {
            "error": {
                "type": "already_finished",
                "message": f"request {a} already finished (done); there is nothing to cancel",
            }
        },
    )
    assert await status_is(s, a, "done")
    status, body = await delete(s, "f" * 32)
    assert status == 404 and body["error"]["type"] == "not_found"


async def test_an_openai_stream_whose_client_hangs_up_cancels_its_queued_request(
    gated: Gated, redis_client: aioredis.Redis
) -> None:
    s, worker, backend = gated
    a = await accept(s, "runs first")
    await wait_until(lambda: backend.seen == [a])

    async def stream() -> None:
        body = {"model": "sim-echo", "messages": [{"role": "user", "content": "hello"}], "stream": True}
        headers = {"X-Tiergate-Tier": TIER, "X-Tiergate-Deadline-Ms": str(DEADLINE_MS)}
        async with s.http.post(f"{s.url}/v1/chat/completions", json=body, headers=headers) as response:
            await response.read()

    client = asyncio.create_task(stream())
    await wait_until(lambda: len(worker.batcher) == 1)  # read by the worker, not started
    _, b = await queued_ids(redis_client)
    client.cancel()
    await wait_until(lambda: b in worker.cancelled)
    assert gateway_count(s, "cancelled") == 1
    backend.gate.set()
    await wait_until(lambda: worker_count(worker, "cancelled") == 1)
    assert backend.seen == [a]
    assert await s.get(f"/v1/requests/{b}") == (200, {"id": b, "status": "cancelled"})
    with pytest.raises(asyncio.CancelledError):
        await client


async def hears(client: aioredis.Redis, worker: WorkerProcess, probe_id: str) -> bool:
    """Publish a cancel of `probe_id` on the worker's channel; whether the worker has it yet."""
    notice = protocol.Cancel(id=probe_id, deadline_at_ms=int(worker.clock.now_ms()) + DEADLINE_MS)
    await client.publish(protocol.cancel_channel(default_lane(TIER, "default").name), protocol.encoder.encode(notice))
    return probe_id in worker.cancelled


async def test_a_worker_that_loses_its_cancel_channel_subscribes_again(
    gated: Gated, redis_client: aioredis.Redis
) -> None:
    s, worker, backend = gated
    await wait_until(lambda: hears(redis_client, worker, "before"))
    assert await redis_client.client_kill_filter(_type="pubsub") == 1
    await wait_until(lambda: hears(redis_client, worker, "after"), interval_s=0.05)
    a = await accept(s, "runs first")
    await wait_until(lambda: backend.seen == [a])
    b = await accept(s, "queued")
    await wait_until(lambda: len(worker.batcher) == 1)
    assert await delete(s, b) == (200, {"id": b, "status": "cancelled"})
    await wait_until(lambda: b in worker.cancelled)
    backend.gate.set()
    await wait_until(lambda: worker_count(worker, "cancelled") == 1)
    assert backend.seen == [a]
