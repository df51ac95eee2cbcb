"""Two interactive pools serving different models under `tiergate up`: `sim` (simulated, serving
`sim-echo`) and `remote` (backend `openai`, in front of a fake OpenAI-compatible server, serving
`up-model`). Under load, and after one replica of each pool is SIGKILLed mid-load, every request is
answered by a pool that serves its model, with its own answer, and none is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ops.embedded import free_port
from tests.e2e.test_worker_kill import _grandchildren
from tests.processes import QUICK_RECOVERY, Proc, start

pytestmark = pytest.mark.redis_server

PER_MODEL = 60
UPSTREAM_DELAY_S = 0.2  # the fake upstream holds each request this long: the kill finds some in flight
CONFIG = (
    QUICK_RECOVERY
    + """
[processors.slow]
latency = { kind = "fixed", min_ms = 150 }
max_batch = 4
energy_efficiency = 1.0
cost_per_flop = 1.0
[processors.remote]
latency = { kind = "fixed", min_ms = 1 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[models.up-model]
kind = "echo"
params = 8_000_000_000
[pools.sim]
processor = "slow"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 4
max_wait_ms = 5
replicas = 2
[pools.remote]
processor = "remote"
backend = "openai"
upstream = { base_url = "http://127.0.0.1:PORT/v1" }
tiers = ["interactive"]
models = ["up-model"]
max_batch = 8
max_wait_ms = 2
replicas = 2
"""
)


class Upstream(threading.Thread):
    """A fake OpenAI-compatible completions server on its own thread and event loop: it answers
    a prompt with its upper case after `UPSTREAM_DELAY_S`, and records the models it was asked for."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.models: list[str] = []
        self.in_flight = 0
        self.holding = threading.Event()  # set once it holds two requests at once
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.models.append(body["model"])
        self.in_flight += 1
        if self.in_flight >= 2:
            self.holding.set()
        try:
            await asyncio.sleep(UPSTREAM_DELAY_S)
        finally:
            self.in_flight -= 1
        choice = {"index": 0, "text": body["prompt"].upper(), "finish_reason": "stop"}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(10)
        self.loop.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(free_port())
    server.start()
    assert server.ready.wait(10)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_stray_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in ("TIERGATE_REDIS_URL", "TIERGATE_CONFIG") if k in os.environ}
    yield
    os.environ.update(saved)


def test_each_model_lands_only_on_its_pool_under_load_and_after_a_kill(upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text(CONFIG.replace("PORT", str(upstream.port)))
    table = subprocess.run(
        [sys.executable, "-m", "ops", "config", "check", str(config)], capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    rows = [line.split()[:4] for line in table.stdout.splitlines()[1:] if line.strip()][:-1]
    assert ["up-model", "interactive", "default", "tg:{interactive.default.remote}:requests"] in rows
    assert ["sim-echo", "interactive", "default", "tg:{interactive.default.sim}:requests"] in rows
    up = start("up", "--port", "0", "--config", str(config))
    try:
        doomed = [up.logged("child ready", child=child)["pid"] for child in ("sim[0]", "remote[0]")]
        assert set(doomed) <= set(_grandchildren(up))  # processes this test started, through `up`
        answers = asyncio.run(_load_and_kill(up, upstream, doomed))
        restarted = {up.logged("child restarted", child=child)["status"] for child in ("sim[0]", "remote[0]")}
        assert up.stop() == 0
    finally:
        up.stop()
    assert restarted == {-signal.SIGKILL}
    expected = {"sim-echo": "sim", "up-model": "remote"}
    wrong = [
        (model, text, status, answer)
        for model, text, status, answer in answers
        if status != 200 or answer["pool"] != expected[model] or answer["output"] != _expected(model, text)
    ]
    assert (len(answers), wrong) == (2 * PER_MODEL, [])
    assert set(upstream.models) == {"up-model"}  # the upstream never saw a sim-echo request


def _expected(model: str, text: str) -> str:
    return text[::-1] if model == "sim-echo" else text.upper()


async def _load_and_kill(up: Proc, upstream: Upstream, doomed: list[int]) -> list[tuple[str, str, int, Any]]:
    """Both models' requests at once; SIGKILL a replica of each pool once the upstream holds some."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sends = [_infer(http, up.url, model, f"{model} request {i}") for i in range(PER_MODEL) for model in _MODELS]
        tasks = [asyncio.create_task(send) for send in sends]
        await asyncio.wait_for(asyncio.to_thread(upstream.holding.wait), 30)
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        assert not all(task.done() for task in tasks)
        return await asyncio.wait_for(asyncio.gather(*tasks), 90)


_MODELS = ("sim-echo", "up-model")


async def _infer(http: aiohttp.ClientSession, url: str, model: str, text: str) -> tuple[str, str, int, Any]:
    body = {"model": model, "input": text, "tier": "interactive", "deadline_ms": 60000}
    async with http.post(f"{url}/v1/infer", json=body) as response:
        return model, text, response.status, await response.json()
