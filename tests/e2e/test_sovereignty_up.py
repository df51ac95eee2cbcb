"""`tiergate up` on a config with an EU region and cleared pools, all real processes: an EU
restricted request runs on the EU pool cleared for it, one no pool may serve is refused with
422 naming the rule, and `tiergate audit tail` shows where each ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib import error, request

import pytest

from core.settings import DEFAULT_CONFIG_PATH
from tests.processes import start

pytestmark = pytest.mark.redis_server

EU_POOLS = """
[pools.h100-eu]
processor = "h100"
tiers = ["interactive"]
models = ["sim-echo"]
region = "eu"
clearance = "restricted"
max_batch = 8

[pools.tpu-eu]
processor = "tpu-v5e"
tiers = ["interactive"]
models = ["sim-echo"]
region = "eu"
clearance = "internal"
max_batch = 8
"""


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    sent = request.Request(f"{url}/v1/infer", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with request.urlopen(sent, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_up_keeps_each_request_in_its_region_and_class(tmp_path: Path) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text(DEFAULT_CONFIG_PATH.read_text() + EU_POOLS)
    up = start("up", "--port", "0", "--config", str(config))
    try:
        ran = {}
        for sensitivity, pools in (("restricted", {"h100-eu"}), ("internal", {"h100-eu", "tpu-eu"})):
            for i in range(4):
                body = {"model": "sim-echo", "input": f"{sensitivity} {i}", "region": "eu", "sensitivity": sensitivity}
                status, answer = post(up.url, body)
                assert status == 200, answer
                assert answer["pool"] in pools
                ran[answer["id"]] = answer["pool"]
        status, refused = post(up.url, {"model": "sim-echo", "input": "x", "sensitivity": "internal"})
        assert (status, refused["error"]["type"]) == (422, "placement_refused")
        assert "cleared for internal data (the highest clearance there is public)" in refused["error"]["message"]

        tail = subprocess.run(
            [sys.executable, "-m", "ops", "audit", "tail", "--config", str(config), "--redis-url", up.ready["redis"]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert tail.returncode == 0, tail.stderr
        entries = {row["id"]: row for row in map(json.loads, tail.stdout.splitlines())}
        assert {request_id: entries[request_id]["pool"] for request_id in ran} == ran
        assert {entries[request_id]["pool_region"] for request_id in ran} == {"eu"}
    finally:
        assert up.stop() == 0
