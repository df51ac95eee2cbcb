"""Fuzz the HTTP API from its own OpenAPI document with schemathesis: valid and invalid requests
for every operation, sent over real HTTP to a real gateway process with a real worker. No request
may get a server error (a 5xx other than a deadline that was too short to meet), and none may hang.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import RedisServer
from tests.processes import start

pytestmark = pytest.mark.redis_server

CONFIG = """
[gateway]
max_body_bytes = 65536
max_input_chars = 4000
max_tokens = 256
max_messages = 16
body_timeout_s = 5.0
[tiers.realtime]
slo = { latency_ms = 100 }
default_deadline_ms = 5000
max_queue = 100000
[tiers.interactive]
slo = { latency_ms = 100 }
default_deadline_ms = 5000
max_queue = 100000
[tiers.batch]
slo = { latency_ms = 100 }
default_deadline_ms = 5000
max_queue = 100000
[processors.fast]
latency = { kind = "fixed", min_ms = 0.1 }
max_batch = 64
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[models.sim-embed]
kind = "embed"
params = 1_000_000
[pools.fast]
processor = "fast"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo", "sim-embed"]
max_batch = 64
"""
POSTS = 140  # generated requests per POST operation and mode
GETS = 40  # per GET operation and mode
TOO_SHORT_MS = 50  # a deadline this short may honestly end in 504


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("fuzz") / "tiergate.toml"
    config.write_text(CONFIG)
    tail = ["--config", str(config), "--redis-url", redis_server.url]
    started = [start("worker", "--pool", "fast", *tail, timeout_s=30)]
    try:
        started.append(start("gateway", "--port", "0", *tail, timeout_s=30))
        yield started[-1].url
    finally:
        for proc in reversed(started):
            proc.stop(timeout_s=20)


def acceptable(case: schemathesis.Case, response: requests.Response) -> bool:
    if response.status_code < 500:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    deadline = body.get("deadline_ms")
    short = isinstance(deadline, int) and not isinstance(deadline, bool) and deadline < TOO_SHORT_MS
    return response.status_code == 504 and short and "deadline_exceeded" in response.text


def test_fuzzing_the_openapi_document_finds_no_server_error_and_no_hang(live: str, tmp_path: Path) -> None:
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    sent: list[str] = []
    failures: list[str] = []
    http = requests.Session()

    for result in schema.get_all_operations():
        operation = result.ok()
        count = POSTS if operation.method.upper() == "POST" else GETS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=count, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck), derandomize=True,
            )  # fmt: skip
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=live, session=http, timeout=15)  # a hang fails here
                sent.append(case.operation.label)
                if not acceptable(case, response):
                    failures.append(
                        f"{case.operation.label} {case.body!r:.300} -> {response.status_code} {response.text:.300}"
                    )

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in an operation without inputs
    http.close()

    assert failures == []
    print(f"fuzz: {len(sent)} requests")
    assert len(sent) >= 1000
    assert {label.split()[1] for label in sent} >= {"/v1/infer", "/v1/chat/completions", "/v1/embeddings"}
