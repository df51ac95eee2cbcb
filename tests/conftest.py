"""Shared fixtures: settings builders, and a real `redis-server` on a free port per session.

Where `redis-server` is missing the Redis fixture falls back to fakeredis's TCP server and skips
tests marked `redis_server`; with TIERGATE_TEST_REQUIRE_REDIS=1 (as CI sets) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.embedded import free_port, wait_for_ping
from gateway.settings import DEFAULT_CONFIG_PATH, Settings, parse_settings

REPO = Path(__file__).resolve().parent.parent


def default_raw() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(DEFAULT_CONFIG_PATH.read_text())


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Build validated settings from the default config with overrides applied; a keyword names
    a key path with `__` between the parts: `pools__cerebras_batch__max_batch=1`."""

    def build(**overrides: Any) -> Settings:
        raw = default_raw()
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split("__")
            for key in parents:
                # Config names use hyphens (`cerebras-cs3`), Python keywords cannot: accept both.
                key = key if key in node or key.replace("_", "-") not in node else key.replace("_", "-")
                node = node.setdefault(key, {})
            node[leaf] = value
        return parse_settings(raw)

    return build


@dataclass
class RedisServer:
    url: str
    port: int
    kind: str  # "redis-server" or "fakeredis"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("TIERGATE_TEST_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and TIERGATE_TEST_REQUIRE_REDIS=1")
        from fakeredis import TcpFakeServer

        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wait_for_ping(port)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, "fakeredis")
        server.shutdown()
        server.server_close()
        return
    with tempfile.TemporaryDirectory(prefix="tiergate-test-redis-") as workdir:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_ping(port)
            yield RedisServer(f"redis://127.0.0.1:{port}/0", port, "redis-server")
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the session's Redis for each test."""
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which("redis-server") is not None or os.environ.get("TIERGATE_TEST_REQUIRE_REDIS") == "1":
        return
    skip = pytest.mark.skip(reason="needs a real redis-server, which is not on PATH")
    for item in items:
        if "redis_server" in item.keywords:
            item.add_marker(skip)
