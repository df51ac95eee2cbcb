"""The load tester's coordinated modes against a running stack and its Redis: agents whose merged
report is the sum of their parts, record and replay through the real CLI, and the capacity ramp."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from core.settings import Settings
from loadtest import coordinate, runner, schedule
from loadtest.stats import OUTCOMES
from tests.conftest import REPO
from tests.integration.conftest import Stack

StartStack = Callable[..., Any]
MIX = {"realtime": 0.3, "interactive": 0.4, "batch": 0.3}


async def test_two_agents_merged_report_is_the_sum_of_their_parts(stack: StartStack) -> None:
    s: Stack = await stack()
    arrivals = schedule.build(30, 1.5, MIX, ["sim-echo", "sim-embed"], "poisson", (8, 32), seed=11)
    clients = [aioredis.Redis.from_url(s.redis_url) for _ in range(3)]
    try:
        agents = [asyncio.create_task(coordinate.serve_agent(c, s.settings, once=True)) for c in clients[:2]]
        target = runner.Target(url=s.url, redis=s.redis_url)
        led = await coordinate.lead(clients[2], target, arrivals, 1.5, agents=2, wait_s=10, settings=s.settings)
        await asyncio.wait_for(asyncio.gather(*agents), 10)
    finally:
        for client in clients:
            await client.aclose()
    assert len(led.parts) == 2
    assert [sum(p.fired.values()) for p in led.parts] == [len(arrivals[0::2]), len(arrivals[1::2])]
    for tier, total in led.merged.tiers.items():
        parts = [p.tiers[tier] for p in led.parts]
        assert total.sent == sum(a.tier == tier for a in arrivals)
        for outcome in OUTCOMES:
            assert total.counts[outcome] == sum(p.counts[outcome] for p in parts)
        assert total.latency.get_total_count() == sum(p.latency.get_total_count() for p in parts)
        assert total.latency.get_max_value() == max(p.latency.get_max_value() for p in parts)
        assert total.within_slo == sum(p.within_slo for p in parts)
    assert sum(t.counts["ok"] for t in led.merged.tiers.values()) == len(arrivals)


async def loadtest_cli(*args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", "loadtest", *args, "--json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    return json.loads(out)  # type: ignore[no-any-return]


async def test_replay_plays_the_recorded_schedule_exactly(stack: StartStack) -> None:
    s: Stack = await stack()
    common = ["--url", s.url, "--redis", s.redis_url, "--models", "sim-echo,sim-embed", "--input-chars", "8-40"]
    first = await loadtest_cli(*common, "--rate", "25", "--duration", "1", "--seed", "5", "--record", "base")
    # different rate and seed on the replay: the recording decides the traffic; record what it played
    again = await loadtest_cli(
        *common, "--rate", "3", "--duration", "1", "--seed", "99", "--replay", "base", "--record", "copy"
    )
    redis = aioredis.Redis.from_url(s.redis_url)
    try:
        recorded, recorded_s = await coordinate.load_recording(redis, "base")
        replayed, replayed_s = await coordinate.load_recording(redis, "copy")
    finally:
        await redis.aclose()
    mix = schedule.parse_mix("realtime=0.2,interactive=0.5,batch=0.3", list(s.settings.tiers))
    assert recorded == schedule.build(25, 1.0, mix, ["sim-echo", "sim-embed"], "poisson", (8, 40), seed=5)
    assert replayed == recorded and replayed_s == recorded_s == 1.0
    assert first["sent"] == again["sent"] == len(recorded)
    for tier, row in first["tiers"].items():
        assert again["tiers"][tier]["sent"] == row["sent"] == sum(a.tier == tier for a in recorded)


async def test_find_capacity_ramps_to_the_highest_rate_every_tier_met(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    generous = {"latency_ms": 60_000, "percentile": 99.0, "objective": 50.0}
    settings = make_settings(**{f"tiers__{t}__slo": generous for t in ("realtime", "interactive", "batch")})
    s: Stack = await stack(settings)
    load = runner.Load(10, 1.0, MIX, ("sim-echo",), "constant", (16, 16), seed=1)
    found = await runner.find_capacity(settings, runner.Target(url=s.url), load, runner.Ramp(10, 2.0, 1.0, 25))
    assert [step["rate"] for step in found["steps"]] == [10, 20]
    assert all(step["summary"]["slo_met"] for step in found["steps"])
    assert found["capacity_rate"] == 20


async def test_find_capacity_reports_none_when_the_first_step_misses(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(tiers__interactive__default_deadline_ms=200)
    s: Stack = await stack(settings, pools=[])  # nobody answers: every request hits its deadline
    load = runner.Load(10, 1.0, {"interactive": 1.0}, ("sim-echo",), "constant", (16, 16), seed=1)
    found = await runner.find_capacity(settings, runner.Target(url=s.url), load, runner.Ramp(10, 2.0, 0.5, 100))
    assert found["capacity_rate"] is None
    assert len(found["steps"]) == 1
    row = found["steps"][0]["summary"]["tiers"]["interactive"]
    assert row["deadline"] == row["sent"] > 0 and row["slo_attainment_pct"] == 0.0
