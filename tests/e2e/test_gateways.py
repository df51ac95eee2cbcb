"""Several gateway processes on one port (`tiergate up --gateways 2`, `tiergate gateway --processes 2`):
every answer is the right one, both processes answer some (each names itself in `X-Tiergate-Gateway`),
and a gateway process SIGKILLed is restarted on the same port. Real processes, real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from ops.embedded import EmbeddedRedis
from tests.conftest import TEST_REDIS
from tests.processes import QUICK_RECOVERY, start

# A real redis-server, as the other supervisor tests (tests/e2e/test_supervisor.py).
pytestmark = pytest.mark.redis_server

CONFIG = (
    QUICK_RECOVERY
    + """
[processors.fast]
latency = { kind = "fixed", min_ms = 1 }
max_batch = 32
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.fast]
processor = "fast"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 32
max_wait_ms = 1
"""
)
GATEWAY_HEADER = "X-Tiergate-Gateway"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiergate.toml"
    path.write_text(CONFIG)
    return path


async def send(url: str, count: int, tag: str) -> tuple[list[str], list[object]]:
    """`count` concurrent echo requests over a pool of connections; (the gateway id of each right
    answer, every wrong answer or error)."""
    served: list[str] = []
    wrong: list[object] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def one(i: int) -> None:
            text = f"{tag} request {i}"
            body = {"model": "sim-echo", "input": text, "deadline_ms": 60000}
            try:
                async with http.post(f"{url}/v1/infer", json=body) as response:
                    answer = await response.json()
                    if response.status == 200 and answer["output"] == text[::-1]:
                        served.append(response.headers[GATEWAY_HEADER])
                    else:
                        wrong.append((text, response.status, answer))
            except aiohttp.ClientError as exc:
                wrong.append((text, repr(exc)))

        await asyncio.gather(*(one(i) for i in range(count)))
    return served, wrong


def test_two_gateway_processes_share_one_port_and_a_killed_one_comes_back_on_it(config: Path) -> None:
    up = start("up", "--port", "0", "--gateways", "2", "--config", str(config))
    try:
        assert len(set(up.ready["gateways"])) == 2  # the ids of its gateway processes
        assert len(up.ready["metrics"]["gateway"]) == 2  # each process's own /metrics
        first = [up.logged("child ready", child=f"gateway[{i}]") for i in (0, 1)]
        assert {entry["url"] for entry in first} == {up.url}  # the one port, the free one the first got
        served, wrong = asyncio.run(send(up.url, 1000, "shared"))
        assert (len(served), wrong) == (1000, [])
        by_gateway = Counter(served)
        assert set(by_gateway) == set(up.ready["gateways"]), by_gateway  # both processes answered some
        os.kill(first[0]["pid"], signal.SIGKILL)
        restart = up.logged("child restarted", child="gateway[0]")
        assert (restart["status"], restart["url"]) == (-9, up.url)  # back on the same port
        served, wrong = asyncio.run(send(up.url, 300, "after the restart"))
        assert (len(served), wrong) == (300, [])
        assert len(set(served) - set(by_gateway)) == 1  # the restarted process (a new id) answers too
        assert up.stop() == 0
    finally:
        up.stop()


def test_gateway_processes_print_the_real_url_and_each_process_answers(config: Path) -> None:
    redis = EmbeddedRedis(TEST_REDIS)
    url = redis.start()
    try:
        worker = start("worker", "--config", str(config), "--pool", "fast", "--redis-url", url)
        gateway = start("gateway", "--config", str(config), "--port", "0", "--processes", "2", "--redis-url", url)
        try:
            ready = gateway.ready
            assert not ready["url"].endswith(":0") and len(set(ready["gateways"])) == 2
            assert len(set(ready["metrics_urls"])) == 2 and ready["supervisor_metrics_url"]
            served, wrong = asyncio.run(send(gateway.url, 300, "gateway"))
            assert (len(served), wrong) == (300, [])
            assert set(served) == set(ready["gateways"])
            assert gateway.stop() == 0
        finally:
            gateway.stop()
            worker.stop()
    finally:
        redis.stop()
