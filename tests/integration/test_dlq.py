"""`tiergate dlq list` and `tiergate dlq replay` as real commands against a real Redis: a request
dead-lettered after its workers died is listed, replayed, and answered; an undecodable letter is
listed and refused."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core import protocol
from core.settings import Settings
from tests.conftest import REPO, default_lane
from tests.integration.conftest import Stack, wait_until
from tests.integration.test_recovery import STREAM, accept, status_of, take_as

pytestmark = pytest.mark.redis_server

StartStack = Callable[..., Any]
DEAD = protocol.dead_letter_key(default_lane("interactive", "default").name)


async def tiergate(redis_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", "dlq", *args, "--redis-url", redis_url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_dead_letters_are_listed_and_replayed_to_an_answer(
    stack: StartStack, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    fast = make_settings(delivery__claim_idle_min_ms=50, delivery__claim_service_multiple=0.001,
                         delivery__claim_interval_s=0.05, delivery__max_deliveries=2)  # fmt: skip
    client = aioredis.Redis.from_url(redis_url)
    try:
        s: Stack = await stack(fast, pools=[])
        request_id = await accept(s, "second life")
        await take_as(client, "ghost", times=2)
        await client.xadd(STREAM, {protocol.PAYLOAD_FIELD: b"\xc1not a request"})
        await s.start_workers(["h100-interactive"])
        await wait_until(lambda: client.xlen(DEAD), timeout_s=10)
        await wait_until(lambda: _dead_count(client, 2), timeout_s=10)
        await s.stop_workers()
        assert (await status_of(s, request_id))["status"] == "failed"

        code, out, _ = await tiergate(redis_url, "list")
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split()[:6] == ["TIER", "REGION", "POOLS", "ENTRY", "REQUEST", "DELIVERIES"]
        (good,) = [row for row in rows if request_id in row]
        (bad,) = [row for row in rows if "(undecodable)" in row]
        assert good.split()[:3] == ["interactive", "default", "h100-interactive+inferentia-mixed+tpu-interactive"]
        assert good.split()[5] == "2" and "its last worker ghost stopped" in good
        assert "undecodable entry" in bad
        good_entry, bad_entry = good.split()[3], bad.split()[3]
        assert (await tiergate(redis_url, "list", "--tier", "batch"))[1] == "no dead letters\n"

        code, out, err = await tiergate(redis_url, "replay")
        assert code != 0 and "name the dead letters to replay" in err
        code, out, err = await tiergate(redis_url, "replay", good_entry)
        assert (code, err) == (0, "")
        assert out == f"{good_entry}: request {request_id} queued again on {STREAM}\n"
        assert (await status_of(s, request_id))["status"] == "queued"

        await s.start_workers(["h100-interactive"])
        await wait_until(lambda: _finished(s, request_id), timeout_s=10)
        body = await status_of(s, request_id)
        assert (body["status"], body["output"]) == ("done", "efil dnoces")

        code, out, err = await tiergate(redis_url, "replay", "--all")
        assert code == 1 and out == ""
        assert err == f"{bad_entry}: the payload is not a request and cannot be replayed (" + err.split(" (", 1)[1]
        code, out, err = await tiergate(redis_url, "replay", "0-1")
        assert code == 1 and err == "0-1: no such dead letter\n"
        assert [entry.decode() for entry, _ in await client.xrange(DEAD)] == [bad_entry]
    finally:
        await client.aclose()


async def _dead_count(client: aioredis.Redis, count: int) -> bool:
    return int(await client.xlen(DEAD)) == count


async def _finished(s: Stack, request_id: str) -> bool:
    return (await status_of(s, request_id))["status"] == "done"
