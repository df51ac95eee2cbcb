"""A batch survives the death of any process: the gateway running it SIGKILLed (a second gateway
on the same Redis takes over its lease) or stopped with SIGTERM (it hands the lease back), and a
worker SIGKILLed mid-batch (the other worker claims its entries). Real `tiergate gateway` and
`tiergate worker` processes, the official `openai` SDK; each time every line is answered exactly
once, with its own answer, in the output file.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core import protocol
from tests.processes import QUICK_RECOVERY, Proc, start

pytestmark = pytest.mark.redis_server

LINES = 300
CONFIG = (
    QUICK_RECOVERY
    + """
[batches]
lease_ttl_s = 1.0
poll_interval_s = 0.2
max_in_flight_per_batch = 8
[processors.slow]
latency = { kind = "fixed", min_ms = 40 }
max_batch = 8
energy_efficiency = 1.0
cost_per_flop = 1.0
[models.sim-echo]
kind = "echo"
params = 1_000_000
[pools.slow]
processor = "slow"
tiers = ["realtime", "interactive", "batch"]
models = ["sim-echo"]
max_batch = 8
max_wait_ms = 5
"""
)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Proc]]:
    """Start `tiergate ARGS --config ... --redis-url ...` processes on the session's Redis."""
    config = tmp_path / "tiergate.toml"
    config.write_text(CONFIG)
    started: list[Proc] = []

    def run(*args: str) -> Proc:
        proc = start(*args, "--config", str(config), "--redis-url", redis_url)
        started.append(proc)
        return proc

    run.redis_url = redis_url  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        for proc in started:
            proc.stop()


def submit(url: str) -> tuple[openai.OpenAI, str, dict[str, str]]:
    """Upload a batch of LINES chat lines and create it; (client, batch id, custom_id -> input)."""
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=20)
    texts = {f"req-{i}": f"crash-proof line {i}" for i in range(LINES)}
    body = lambda text: {"model": "sim-echo", "messages": [{"role": "user", "content": text}]}  # noqa: E731
    data = "".join(
        json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": body(v)}) + "\n"
        for k, v in texts.items()
    ).encode()
    uploaded = sdk.files.create(file=("input.jsonl", data), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    return sdk, batch.id, texts


def until(sdk: openai.OpenAI, batch_id: str, holds: Callable[[Any], bool], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if holds(batch):
            return batch
        assert time.monotonic() < deadline, f"batch not there within {timeout_s} s: {batch}"
        time.sleep(0.05)


def every_line_once(sdk: openai.OpenAI, batch: Any, texts: dict[str, str]) -> None:
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
    assert batch.error_file_id is None
    output = [json.loads(line) for line in sdk.files.content(batch.output_file_id).text.splitlines()]
    said = [(line["custom_id"], line["response"]["body"]["choices"][0]["message"]["content"]) for line in output]
    assert sorted(said) == sorted((k, v[::-1]) for k, v in texts.items())  # each line once, its own answer


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_gateway_running_a_batch_stops_and_another_takes_it_over(stack: Callable[..., Proc], sig: int) -> None:
    """SIGKILL: its lease expires; SIGTERM: it hands the lease back as it stops."""
    worker = stack("worker", "--pool", "slow")
    gateways = [stack("gateway", "--port", "0") for _ in range(2)]
    sdk, batch_id, texts = submit(gateways[0].url)
    until(sdk, batch_id, lambda b: b.request_counts.completed >= 40)
    holder = redis.Redis.from_url(stack.redis_url).get(protocol.batch_lease_key(batch_id))  # type: ignore[attr-defined]
    running = next(g for g in gateways if g.ready["gateway"].encode() == holder)
    survivor = next(g for g in gateways if g is not running)
    os.kill(running.process.pid, sig)
    assert running.wait() == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    sdk = openai.OpenAI(base_url=f"{survivor.url}/v1", api_key="unused", max_retries=0, timeout=20)
    before = sdk.batches.retrieve(batch_id).request_counts.completed
    assert before < LINES  # killed mid-batch
    every_line_once(sdk, until(sdk, batch_id, lambda b: b.status in ("completed", "failed")), texts)
    survivor.logged("batch ended", batch=batch_id, status="completed")
    assert ran(worker) == LINES  # a line sent again while its first copy was queued or running did not run twice


def ran(worker: Proc) -> float:
    """Batch-tier requests a worker answered, from its /metrics."""
    with urllib.request.urlopen(worker.ready["metrics_url"], timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tiergate_worker_requests_total" and sample.labels.get("tier") == "batch"
    )


def holds_lines(redis_url: str, worker: Proc, timeout_s: float = 30) -> None:
    """Wait until `worker` has batch-tier entries delivered and not yet acknowledged."""
    client = redis.Redis.from_url(redis_url)
    lane = protocol.lane_name("batch", "default", ["slow"])
    deadline = time.monotonic() + timeout_s
    while True:
        pending = client.xpending(protocol.stream_key(lane), protocol.GROUP)
        held = {c["name"].decode(): c["pending"] for c in pending["consumers"]}
        if any(name.endswith(f"-{worker.process.pid}") and count > 0 for name, count in held.items()):
            return
        assert time.monotonic() < deadline, f"the worker held no entries within {timeout_s} s: {held}"
        time.sleep(0.002)


def test_a_worker_killed_mid_batch_loses_no_line(stack: Callable[..., Proc]) -> None:
    workers = [stack("worker", "--pool", "slow") for _ in range(2)]
    gateway = stack("gateway", "--port", "0")
    sdk, batch_id, texts = submit(gateway.url)
    until(sdk, batch_id, lambda b: b.request_counts.completed >= 40)
    holds_lines(stack.redis_url, workers[0])  # type: ignore[attr-defined]
    os.kill(workers[0].process.pid, signal.SIGKILL)
    assert workers[0].wait() == -signal.SIGKILL
    assert sdk.batches.retrieve(batch_id).request_counts.completed < LINES  # killed mid-batch
    every_line_once(sdk, until(sdk, batch_id, lambda b: b.status in ("completed", "failed")), texts)
    workers[1].logged("reclaimed entries of stopped workers")  # the dead one held lines, which ran again
