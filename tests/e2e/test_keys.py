"""`tiergate keys create|list|revoke` through the real command, against two real gateway
processes with `[auth] mode = "keys"`: the key is printed once and never listed, it opens both
gateways, and once revoked both refuse it. An open gateway warns at start."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from core.settings import DEFAULT_CONFIG_PATH
from gateway.auth import OPEN_WARNING
from tests.conftest import REPO
from tests.processes import start

pytestmark = pytest.mark.redis_server


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def status(url: str, body: dict[str, object], key: str | None = None) -> int:
    """The HTTP status of a POST of `body` (JSON) to `url`, with `key` as its Bearer key."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def before_the_last_20_s_of_a_minute(redis_url: str) -> None:
    """Wait, on Redis's clock, until at least 20 s remain in the minute: a per-minute count that a
    test reads must not roll over while it runs."""
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: int(client.time()[0]) % 60 < 40, timeout_s=30)
    finally:
        client.close()


def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.1)


def test_keys_through_the_command_line_open_and_close_two_gateways(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text(DEFAULT_CONFIG_PATH.read_text().replace('[auth]\nmode = "open"', '[auth]\nmode = "keys"'))
    common = ("--config", str(config), "--redis-url", redis_url)
    created = tiergate("keys", "create", "--tenant", "acme", "--tiers", "interactive", "--rpm", "600", *common)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout.strip().splitlines()[-1])
    key, key_id = made["key"], made["id"]
    assert key.startswith("tg-") and len(key) > 40 and made["tenant"] == "acme"
    listed = tiergate("keys", "list", *common)
    assert listed.returncode == 0 and key_id in listed.stdout and "acme" in listed.stdout and "600" in listed.stdout
    assert key not in listed.stdout and key not in listed.stderr
    bad = tiergate("keys", "create", "--tenant", "acme", "--tiers", "fastest", *common)
    assert bad.returncode != 0 and "--tiers: unknown tier 'fastest'" in bad.stderr
    limited = tiergate("keys", "create", "--tenant", "globex", "--rpm", "10", *common)
    limited_key = json.loads(limited.stdout.strip().splitlines()[-1])["key"]
    gateways = [start("gateway", "--port", "0", *common) for _ in range(2)]
    try:
        before_the_last_20_s_of_a_minute(redis_url)
        counted = Counter(
            status(f"{gateways[i % 2].url}/v1/infer", {"model": "sim-echo", "input": "x", "wait": False}, limited_key)
            for i in range(25)
        )
        assert counted == {202: 10, 429: 15}  # one limit, shared by both processes
        body: dict[str, object] = {"model": "sim-echo", "input": "hi", "wait": False}
        for gw in gateways:
            infer = f"{gw.url}/v1/infer"
            assert (status(infer, body), status(infer, body, key), status(infer, {**body, "tier": "batch"}, key)) == (
                401,
                202,
                403,
            )
        revoked = tiergate("keys", "revoke", key_id, *common)
        assert revoked.returncode == 0 and key_id in revoked.stdout
        for gw in gateways:
            wait_for(lambda gw=gw: status(f"{gw.url}/v1/infer", body, key) == 401)
        assert tiergate("keys", "revoke", key_id, *common).returncode == 1
        assert key_id not in tiergate("keys", "list", *common).stdout
    finally:
        for gw in gateways:
            gw.stop()


def test_an_open_gateway_says_so_at_start(redis_url: str) -> None:
    gateway = start("gateway", "--port", "0", "--redis-url", redis_url)
    try:
        assert gateway.logged(OPEN_WARNING)["level"] == "warning"
    finally:
        gateway.stop()
