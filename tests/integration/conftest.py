"""The `stack` factory: a gateway on a real HTTP port and chosen pools' workers, in-process,
against the session's real Redis; everything it starts is stopped after the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from core.settings import Settings
from gateway.app import build_app
from workers.process import WorkerProcess


@dataclass
class Stack:
    settings: Settings
    redis_url: str
    server: TestServer
    http: aiohttp.ClientSession
    workers: dict[str, tuple[WorkerProcess, asyncio.Task[None]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url(""))

    async def start_workers(self, pools: Iterable[str]) -> None:
        for pool in pools:
            ready = asyncio.Event()
            worker = WorkerProcess(self.settings, pool, self.redis_url, ready=_setter(ready))
            self.workers[pool] = (worker, asyncio.create_task(worker.run()))
            await asyncio.wait_for(ready.wait(), 10)

    async def stop_workers(self) -> None:
        for worker, _ in self.workers.values():
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*(task for _, task in self.workers.values())), 15)
        self.workers.clear()

    async def infer(self, **body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
        async with self.http.post(f"{self.url}/v1/infer", json=body) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        async with self.http.get(f"{self.url}{path}") as response:
            return response.status, await response.json()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    return lambda **_: event.set()


async def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Poll an async or sync condition until it is truthy; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval_s)


@pytest.fixture
async def stack(redis_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., object]]:
    started: list[Stack] = []

    async def start(
        settings: Settings | None = None, pools: Iterable[str] | None = None, url: str | None = None
    ) -> Stack:
        settings = settings or make_settings()
        server = TestServer(build_app(settings, url or redis_url), host="127.0.0.1")
        await server.start_server()
        s = Stack(settings, url or redis_url, server, aiohttp.ClientSession())
        started.append(s)
        await s.start_workers(settings.pools if pools is None else pools)
        return s

    yield start
    for s in started:
        await s.stop_workers()
        await s.http.close()
        await s.server.close()
