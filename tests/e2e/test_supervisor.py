"""`tiergate up` heals instead of dying: a worker SIGKILLed under load is restarted, every request
it held is answered, and the stack keeps serving; a gateway that cannot listen stops the stack with
a message naming its address. Real processes, real HTTP, a small config with a slow batch pool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.embedded import EmbeddedRedis
from tests.conftest import TEST_REDIS
from tests.processes import QUICK_RECOVERY, Proc, spawn, start

# Skipped where redis-server is missing, and failed instead where Redis is required (tests/conftest.py).
pytestmark = pytest.mark.redis_server

REQUESTS = 300
CONFIG = (
    QUICK_RECOVERY
    + """
[processors.fast]
latency = { kind = "fixed", min_ms = 1 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[processors.slow]
latency = { kind = "fixed", min_ms = 200 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.fast]
processor = "fast"
tiers = ["realtime", "interactive"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 1
[pools.slow-batch]
processor = "slow"
tiers = ["batch"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 5
"""
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiergate.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def _no_stray_env() -> Iterator[None]:
    """Each process reads its config and Redis from the flags, never from the environment."""
    saved = {k: os.environ.pop(k) for k in ("TIERGATE_REDIS_URL", "TIERGATE_CONFIG") if k in os.environ}
    yield
    os.environ.update(saved)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    async with http.get(url) as response:
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def ask(http: aiohttp.ClientSession, url: str, text: str, tier: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = {"model": "sim-echo", "input": text, "tier": tier, "deadline_ms": 60000}
    async with http.post(f"{url}/v1/infer", json=body) as response:
        return response.status, await response.json()


def test_worker_sigkilled_under_load_is_restarted_and_every_request_is_answered(config: Path) -> None:
    up = start("up", "--port", "0", "--config", str(config))
    try:
        first = up.logged("child ready", child="worker:slow-batch")
        assert first["pid"] in up.children()  # a process this test started, through `up`
        asyncio.run(load_and_kill(up, first["pid"], first["metrics_url"]))
        assert up.stop() == 0
    finally:
        up.stop()


async def load_and_kill(up: Proc, pid: int, worker_metrics: str) -> None:
    in_flight = ("tiergate_worker_in_flight_requests", (("pool", "slow-batch"), ("processor", "slow")))
    answered: list[tuple[str, int, dict]] = []  # type: ignore[type-arg]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(i: int) -> None:
            text = f"batch request {i}"
            status, body = await ask(http, up.url, text, "batch")
            answered.append((text, status, body))

        sending = asyncio.gather(*(one(i) for i in range(REQUESTS)), return_exceptions=True)
        await until(lambda: _above_zero(http, worker_metrics, in_flight))  # it holds a batch
        os.kill(pid, signal.SIGKILL)
        answered_before_kill = len(answered)
        outcomes = await sending
        restart = await asyncio.to_thread(up.logged, "child restarted", child="worker:slow-batch")
        supervisor = await scrape(http, up.ready["metrics"]["supervisor"])
        new_worker = await scrape(http, restart["metrics_url"])
        after = [await ask(http, up.url, f"after the restart, {tier}", tier) for tier in ("realtime", "batch")]

    assert [o for o in outcomes if o is not None] == []  # zero lost: no connection error, no exception
    assert answered_before_kill < REQUESTS  # the kill came while requests were in flight
    wrong = [(t, status, body) for t, status, body in answered if (status, body.get("output")) != (200, t[::-1])]
    assert (len(answered), wrong) == (REQUESTS, [])
    assert len({body["id"] for _, _, body in answered}) == REQUESTS
    assert restart["status"] == -9 and restart["pid"] != pid and restart["restarts"] == 1
    assert supervisor[("tiergate_supervisor_restarts_total", (("child", "worker:slow-batch"),))] == 1
    assert supervisor[("tiergate_supervisor_restarts_total", (("child", "gateway"),))] == 0
    assert supervisor[("tiergate_supervisor_children_running", ())] == 3  # gateway and two workers
    ok_labels = (("outcome", "ok"), ("pool", "slow-batch"), ("processor", "slow"), ("tier", "batch"))
    ok = ("tiergate_worker_requests_total", ok_labels)
    assert new_worker[ok] > 0  # the restarted worker answered some of them
    assert [(status, body["output"]) for status, body in after] == [
        (200, f"after the restart, {tier}"[::-1]) for tier in ("realtime", "batch")
    ]


async def _above_zero(http: aiohttp.ClientSession, url: str, key: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
    return (await scrape(http, url)).get(key, 0) > 0


def test_up_stops_naming_the_tier_port_it_cannot_listen_on(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(CONFIG.replace("[gateway]\n", f"[gateway]\ntier_ports = {{ realtime = {port} }}\n"))
        up = spawn("up", "--port", "0", "--config", str(config))
        try:
            code = up.wait(timeout_s=90)
        finally:
            up.stop()
    said = f"tiergate gateway: cannot listen on 127.0.0.1:{port}: address already in use"
    events = [msgspec.json.decode(line) for line in up.lines if line.startswith('{"event"')]
    assert code == 1
    assert [e["event"] for e in events] == ["stopping", "stopped"]  # never ready
    assert events[0]["reason"] == f"gateway:realtime failed at start-up 3 times in a row; last error: {said}"
    assert [line.strip() for line in up.errors].count(said) == 3  # each try's own words, forwarded
    pids = [msgspec.json.decode(line)["pid"] for line in up.errors if '"msg":"child ready"' in line]
    assert len(pids) <= 3  # what had started (the main gateway, the workers) is left running no more
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_gateway_that_cannot_listen_says_where_and_why(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = spawn("gateway", "--config", str(config), "--redis-url", "redis://127.0.0.1:1/0",
                        "--port", str(port))  # fmt: skip
        try:
            assert gateway.wait(timeout_s=30) == 1
        finally:
            gateway.stop()
    assert gateway.errors[-1].strip() == f"tiergate gateway: cannot listen on 127.0.0.1:{port}: address already in use"


def test_worker_replicas_restart_a_replica_that_dies(config: Path) -> None:
    redis = EmbeddedRedis(TEST_REDIS)
    url = redis.start()
    try:
        worker = start("worker", "--config", str(config), "--pool", "fast", "--replicas", "2", "--redis-url", url)
        try:
            doomed = worker.logged("child ready", child="fast[0]")
            assert doomed["pid"] in worker.children()
            os.kill(doomed["pid"], signal.SIGKILL)
            restart = worker.logged("child restarted", child="fast[0]")
            assert (restart["status"], restart["restarts"]) == (-9, 1)
            other = worker.logged("child ready", child="fast[1]")
            assert sorted(worker.children()) == sorted([restart["pid"], other["pid"]])
            metrics = asyncio.run(_scrape_once(worker.ready["supervisor_metrics_url"]))
            assert metrics[("tiergate_supervisor_restarts_total", (("child", "fast[0]"),))] == 1
        finally:
            assert worker.stop() == 0
    finally:
        redis.stop()


async def _scrape_once(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        return await scrape(http, url)
