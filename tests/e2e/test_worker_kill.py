"""A worker replica SIGKILLed under `tiergate up` while waited, queued (`wait: false`) and streamed
(OpenAI SSE) requests are in flight: every request gets its own right answer, none is lost; on
`up`'s private Redis and on a three-master Redis Cluster.

The layout is the one users run: `tiergate up` starts the gateway and `tiergate worker --pool slow`,
which supervises the pool's two replicas (`--replicas 2`). The killed replica is restarted by its
supervisor and the other replica, or the new one, claims and runs what the dead one held.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_supervisor import scrape, until
from tests.processes import QUICK_RECOVERY, Proc, start
from tests.redis_servers import flush_cluster

pytestmark = pytest.mark.redis_server

WAITED, QUEUED, STREAMED = 40, 40, 16
CONFIG = (
    QUICK_RECOVERY
    + """
[processors.slow]
latency = { kind = "fixed", min_ms = 300, per_token_ms = 10 }
max_batch = 4
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.slow]
processor = "slow"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 4
max_wait_ms = 5
replicas = 2
"""
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiergate.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def _no_stray_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in ("TIERGATE_REDIS_URL", "TIERGATE_CONFIG") if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.mark.parametrize("redis", ["embedded", "cluster"])
def test_a_replica_killed_mid_batch_loses_no_waited_queued_or_streamed_request(
    config: Path, redis: str, request: pytest.FixtureRequest
) -> None:
    where = []  # `up`'s own private Redis, or the session's three-master Redis Cluster
    if redis == "cluster":
        ports = request.getfixturevalue("redis_cluster")
        flush_cluster(ports)
        where = ["--redis-url", f"redis://127.0.0.1:{ports[0]}/0"]
    up = start("up", "--port", "0", "--config", str(config), *where)
    try:
        doomed = up.logged("child ready", child="slow[0]")
        assert doomed["pid"] in _grandchildren(up)  # a process this test started, through `up`
        answers, restart = asyncio.run(_load_and_kill(up, doomed["pid"], doomed["metrics_url"]))
        assert up.stop() == 0
    finally:
        up.stop()
    assert (restart["status"], restart["restarts"]) == (-9, 1)
    wrong = [(kind, text, said) for kind, text, said in answers if said != text[::-1]]
    assert (len(answers), wrong) == (WAITED + QUEUED + STREAMED, [])
    assert sorted({kind for kind, _, _ in answers}) == ["queued", "streamed", "waited"]


def _grandchildren(up: Proc) -> list[int]:
    """The worker replicas: children of `up`'s children."""
    pids = []
    for child in up.children():
        out = subprocess.run(["pgrep", "-P", str(child)], capture_output=True, text=True)
        pids += [int(pid) for pid in out.stdout.split()]
    return pids


async def _load_and_kill(up: Proc, pid: int, metrics_url: str) -> tuple[list[tuple[str, str, str]], dict]:  # type: ignore[type-arg]
    """Send every kind of request, SIGKILL the replica once it holds a batch; (kind, input, what the
    client was finally told) for each request, and the supervisor's restart line."""
    in_flight = ("tiergate_worker_in_flight_requests", (("pool", "slow"), ("processor", "slow")))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sends = [_waited(http, up.url, f"waited request {i}") for i in range(WAITED)]
        sends += [_queued(http, up.url, f"queued request {i}") for i in range(QUEUED)]
        sends += [_streamed(http, up.url, f"streamed request {i}") for i in range(STREAMED)]
        tasks = [asyncio.create_task(send) for send in sends]
        await until(lambda: _holds_a_batch(http, metrics_url, in_flight))
        os.kill(pid, signal.SIGKILL)
        pending_at_kill = {kind for task, kind in zip(tasks, _KINDS, strict=True) if not task.done()}
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 90)
    assert pending_at_kill == {"waited", "queued", "streamed"}  # every kind was in flight at the kill
    restart = await asyncio.to_thread(up.logged, "child restarted", child="slow[0]")
    return answers, restart


_KINDS = ["waited"] * WAITED + ["queued"] * QUEUED + ["streamed"] * STREAMED


async def _holds_a_batch(http: aiohttp.ClientSession, url: str, key: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
    return (await scrape(http, url)).get(key, 0) > 0


async def _waited(http: aiohttp.ClientSession, url: str, text: str) -> tuple[str, str, str]:
    body = {"model": "sim-echo", "input": text, "tier": "interactive", "deadline_ms": 60000}
    async with http.post(f"{url}/v1/infer", json=body) as response:
        answer = await response.json()
    return "waited", text, answer.get("output") if response.status == 200 else f"{response.status}: {answer}"


async def _queued(http: aiohttp.ClientSession, url: str, text: str) -> tuple[str, str, str]:
    body = {"model": "sim-echo", "input": text, "tier": "batch", "deadline_ms": 60000, "wait": False}
    async with http.post(f"{url}/v1/infer", json=body) as response:
        accepted = await response.json()
    if response.status != 202:
        return "queued", text, f"{response.status}: {accepted}"
    while True:  # poll as a client of `wait: false` does
        async with http.get(f"{url}{accepted['status_url']}") as response:
            state = await response.json()
        if state.get("status") != "queued":
            return "queued", text, state.get("output") if state.get("status") == "done" else str(state)
        await asyncio.sleep(0.1)


async def _streamed(http: aiohttp.ClientSession, url: str, text: str) -> tuple[str, str, str]:
    body = {"model": "sim-echo", "messages": [{"role": "user", "content": text}], "stream": True}
    headers = {"X-Tiergate-Tier": "realtime"}
    pieces: list[str] = []
    done = False
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            return "streamed", text, f"{response.status}: {await response.text()}"
        async for raw in response.content:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    return "streamed", text, f"error event: {event}"
                pieces += [c["delta"].get("content") or "" for c in event.get("choices", [])]
    return "streamed", text, "".join(pieces) if done else f"no [DONE] after {''.join(pieces)!r}"
