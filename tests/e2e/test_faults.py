"""Faults under a steady load, with real processes: a worker SIGKILLed mid-batch, every worker of
the pool killed and restarted, Redis killed and restarted with AOF, the gateway SIGTERMed. Each
test counts: every request the gateway accepted got exactly one answer, and none is missing.

Each test owns a `redis-server` on a free port (AOF on, `appendfsync always`) and a small config
with a slow processor, so batches are in flight when the fault strikes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis

from core import protocol
from ops.embedded import free_port, wait_for_ping
from tests.processes import Proc, start

# Skipped where redis-server is missing, and failed instead where Redis is required (tests/conftest.py).
pytestmark = pytest.mark.redis_server

STREAM = protocol.stream_key(protocol.lane_name("interactive", "default", ["slow"]))
CONFIG = """
[gateway]
result_ttl_s = 600
shutdown_grace_s = 5.0
[delivery]
claim_idle_min_ms = 300
claim_service_multiple = 1.0
claim_token_budget = 0
claim_interval_s = 0.2
[tiers.realtime]
slo = { latency_ms = 1000 }
default_deadline_ms = 60000
max_queue = 10000
[tiers.interactive]
slo = { latency_ms = 1000 }
default_deadline_ms = 60000
max_queue = 10000
[tiers.batch]
slo = { latency_ms = 1000 }
default_deadline_ms = 60000
max_queue = 10000
[processors.slow]
latency = { kind = "fixed", min_ms = 250 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.slow]
processor = "slow"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 5
"""


class RedisProcess:
    """A test-owned redis-server with AOF (fsync on every write), restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            str(shutil.which("redis-server")), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir), "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_ping(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Cluster:
    redis: RedisProcess
    config: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, *args: str, timeout_s: float = 30) -> Proc:
        proc = start(*args, "--config", str(self.config), "--redis-url", self.redis.url, timeout_s=timeout_s)
        self.procs.append(proc)
        return proc

    def gateway(self) -> Proc:
        return self.spawn("gateway", "--port", "0")

    def worker(self) -> Proc:
        return self.spawn("worker", "--pool", "slow", "--replicas", "1")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=5)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="tiergate-faults-") as workdir:
        config = Path(workdir) / "tiergate.toml"
        config.write_text(CONFIG)
        (Path(workdir) / "redis").mkdir()
        r = RedisProcess(Path(workdir) / "redis")
        r.start()
        c = Cluster(r, config)
        try:
            yield c
        finally:
            for proc in reversed(c.procs):
                proc.stop()
            r.stop()


@dataclass
class Load:
    """A steady stream of async requests (`wait: false`); what the gateway answered to each."""

    accepted: dict[str, str] = field(default_factory=dict)  # request id -> input
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (503 while Redis is down)
    unreachable: int = 0  # connection refused: the gateway was not listening


async def drive(url: str, load: Load, count: int, interval_s: float, tag: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for i in range(count):
            text = f"{tag} request {i}"
            try:
                async with http.post(f"{url}/v1/infer", json={"model": "sim-echo", "input": text, "wait": False}) as r:
                    body = await r.json()
                    if r.status == 202:
                        load.accepted[body["id"]] = text
                    else:
                        assert body["error"]["type"] in ("redis_unavailable", "queue_full"), body
                        load.refused[r.status] = load.refused.get(r.status, 0) + 1
            except aiohttp.ClientConnectionError:
                load.unreachable += 1
            await asyncio.sleep(interval_s)


async def outcomes(url: str, ids: dict[str, str], timeout_s: float = 40) -> dict[str, dict]:  # type: ignore[type-arg]
    """Poll until every request has left "queued"; returns each one's final status body."""
    final: dict[str, dict] = {}  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while len(final) < len(ids) and time.monotonic() < deadline:
            for request_id in [i for i in ids if i not in final]:
                async with http.get(f"{url}/v1/requests/{request_id}") as r:
                    body = await r.json()
                    if r.status == 200 and body["status"] != "queued":
                        final[request_id] = body
            await asyncio.sleep(0.2)
    return final


def check_every_answer(final: dict[str, dict], accepted: dict[str, str]) -> None:  # type: ignore[type-arg]
    missing = sorted(set(accepted) - set(final))
    assert missing == [], f"{len(missing)} of {len(accepted)} accepted requests never got an answer"
    wrong = {i: b for i, b in final.items() if b["status"] != "done" or b["output"] != accepted[i][::-1]}
    assert wrong == {}
    assert {b["id"] for b in final.values()} == set(accepted)


def request_of(client: redis.Redis, entry_id: bytes) -> str:
    ((_, fields),) = client.xrange(STREAM, min=entry_id, max=entry_id)
    return protocol.envelope_decoder.decode(fields[protocol.PAYLOAD_FIELD]).id


def finisher(client: redis.Redis, request_id: str) -> str:
    stored = protocol.stored_decoder.decode(client.get(protocol.request_key(request_id)))  # type: ignore[arg-type]
    assert isinstance(stored, protocol.Result)
    return stored.worker


def pending_of(client: redis.Redis, worker: str) -> list[bytes]:
    entries = client.xpending_range(STREAM, protocol.GROUP, "-", "+", 100, consumername=worker)
    return [e["message_id"] for e in entries]


async def wait_for(condition, timeout_s: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_worker_killed_mid_batch_its_requests_are_reclaimed_and_answered(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    doomed, survivor = cluster.worker(), cluster.worker()
    client = cluster.client()
    load = Load()
    driving = asyncio.create_task(drive(gateway.ready["url"], load, 120, 0.02, "kill"))
    await wait_for(lambda: len(pending_of(client, doomed.ready["worker"])) > 0)  # a batch in flight
    doomed.signal(signal.SIGKILL)
    in_flight = [request_of(client, e) for e in pending_of(client, doomed.ready["worker"])]
    await driving
    final = await outcomes(gateway.ready["url"], load.accepted)

    check_every_answer(final, load.accepted)
    assert (load.refused, load.unreachable, len(load.accepted)) == ({}, 0, 120)
    # The batch the dead worker held was run again, and answered, by the survivor
    assert in_flight and pending_of(client, doomed.ready["worker"]) == []
    assert {finisher(client, i) for i in in_flight} == {survivor.ready["worker"]}
    assert client.xlen(STREAM) == 0 and client.xpending(STREAM, protocol.GROUP)["pending"] == 0
    client.close()


async def test_every_worker_of_the_pool_killed_then_restarted(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    first = [cluster.worker(), cluster.worker()]
    client = cluster.client()
    load = Load()
    driving = asyncio.create_task(drive(gateway.ready["url"], load, 100, 0.02, "all"))
    await wait_for(lambda: sum(len(pending_of(client, w.ready["worker"])) for w in first) > 0)
    for w in first:
        w.signal(signal.SIGKILL)
    stranded = sum(len(pending_of(client, w.ready["worker"])) for w in first)
    await asyncio.sleep(0)  # the load goes on with nobody serving: requests queue up
    await wait_for(lambda: client.xlen(STREAM) > stranded)
    replacements = [cluster.worker(), cluster.worker()]
    await driving
    final = await outcomes(gateway.ready["url"], load.accepted)

    check_every_answer(final, load.accepted)
    assert (load.refused, load.unreachable, len(load.accepted)) == ({}, 0, 100)
    assert stranded > 0 and all(pending_of(client, w.ready["worker"]) == [] for w in first)
    assert all(w.process.poll() is None for w in replacements)
    client.close()


async def test_redis_killed_and_restarted_with_aof_loses_no_accepted_request(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.worker()
    client = cluster.client()
    url = gateway.ready["url"]
    before, during = Load(), Load()
    await drive(url, before, 40, 0.005, "before")  # faster than the pool: a backlog builds up
    assert client.xlen(STREAM) > 0
    cluster.redis.kill()
    await drive(url, during, 5, 0.05, "during")
    assert during.refused == {503: 5} and during.accepted == {}  # 503 redis_unavailable, nothing lost
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
        assert r.status == 200
    cluster.redis.start()
    after = Load()
    await wait_for_async_accept(url, after)
    await drive(url, after, 20, 0.02, "after")
    final = await outcomes(url, {**before.accepted, **after.accepted})

    check_every_answer(final, {**before.accepted, **after.accepted})
    assert len(before.accepted) == 40 and before.refused == {}
    client.close()


async def wait_for_async_accept(url: str, load: Load, timeout_s: float = 20) -> None:
    """The gateway recovers by itself: poll until it accepts again."""
    deadline = time.monotonic() + timeout_s
    while not load.accepted:
        assert time.monotonic() < deadline, "the gateway did not recover after Redis came back"
        await drive(url, load, 1, 0.1, "probe")


async def test_gateway_sigterm_under_load_answers_in_flight_and_results_outlive_it(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    cluster.worker()
    url = gateway.ready["url"]
    load = Load()
    sync_answers: list[tuple[str, int, dict]] = []  # type: ignore[type-arg]
    broken: list[BaseException] = []

    async def sync_request(http: aiohttp.ClientSession, i: int) -> None:
        try:
            async with http.post(f"{url}/v1/infer", json={"model": "sim-echo", "input": f"sync {i}"}) as r:
                sync_answers.append((f"sync {i}", r.status, await r.json()))
        except aiohttp.ClientConnectionError as exc:
            broken.append(exc)

    async with aiohttp.ClientSession() as http:
        await drive(url, load, 30, 0.005, "async")
        in_flight = [asyncio.create_task(sync_request(http, i)) for i in range(20)]
        await wait_for(lambda: queued_sync(cluster) == 20)  # all 20 inside the gateway, queued
        gateway.signal(signal.SIGTERM)
        await asyncio.gather(*in_flight)
    assert await asyncio.to_thread(gateway.wait) == 0

    assert broken == [] and len(sync_answers) == 20  # each in-flight request got exactly one answer
    assert [(status, body["output"]) for text, status, body in sync_answers] == [
        (200, text[::-1]) for text, _, _ in sync_answers
    ]
    successor = cluster.gateway()  # async results stay retrievable through a new gateway
    final = await outcomes(successor.ready["url"], load.accepted)
    check_every_answer(final, load.accepted)
    assert len(load.accepted) == 30


def queued_sync(cluster: Cluster) -> int:
    """Synchronous requests queued in the stream (pending ones included: they are deleted on ack)."""
    with cluster.client() as client:
        entries = client.xrange(STREAM)
    decoded = [protocol.envelope_decoder.decode(fields[protocol.PAYLOAD_FIELD]) for _, fields in entries]
    return sum(env.input.startswith("sync") for env in decoded)


@pytest.fixture(autouse=True)
def _no_stray_env() -> Iterator[None]:
    """Each process reads its config and Redis from the flags, never from the environment."""
    saved = {k: os.environ.pop(k) for k in ("TIERGATE_REDIS_URL", "TIERGATE_CONFIG") if k in os.environ}
    yield
    os.environ.update(saved)


async def test_worker_sigterm_finishes_and_acknowledges_its_batch_then_exits(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    leaving = cluster.worker()
    client = cluster.client()
    load = Load()
    await drive(gateway.ready["url"], load, 40, 0.002, "term")
    await wait_for(lambda: len(pending_of(client, leaving.ready["worker"])) > 0)
    held = [request_of(client, e) for e in pending_of(client, leaving.ready["worker"])]
    leaving.signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.wait) == 0
    assert pending_of(client, leaving.ready["worker"]) == []  # it acknowledged all it had read
    assert {finisher(client, i) for i in held} == {leaving.ready["worker"]}  # and answered them itself
    cluster.worker()  # the rest of the queue is served by the next worker
    final = await outcomes(gateway.ready["url"], load.accepted)
    check_every_answer(final, load.accepted)
    assert len(load.accepted) == 40
    client.close()
