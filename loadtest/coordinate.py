"""Everything the load tester keeps in or passes through Redis besides the load itself: recorded
arrival schedules (`--record`/`--replay`), and distributed runs, where a leader publishes a plan,
agents claim a share each, start at one moment on Redis's clock and publish their measurements
(counts and hdrh-encoded histograms) for the leader to merge. Key names come from core.protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from core import protocol, redis_client
from core.clock import RedisClock
from core.redis_client import Client
from core.settings import Settings

from . import engine, runner
from .schedule import Arrival, share
from .stats import Recorder, merged

log = logging.getLogger(__name__)

PAGE = 1000
START_LEAD_MS = 1500  # between publishing a plan and its start: time for every agent to get ready
PRESENCE_S = 3.0  # an agent seen longer ago than this is not counted as waiting
RESULT_SLACK_S = 30.0
KEEP_S = 3600  # claims and results of a run expire after an hour


class CoordinationError(Exception):
    """A recording is missing, or agents did not come or did not report; the message says which."""


def _to_wire(arrival: Arrival) -> protocol.LoadArrival:
    return protocol.LoadArrival(arrival.offset_s, arrival.tier, arrival.model, arrival.input_chars)


def _from_wire(arrival: protocol.LoadArrival) -> Arrival:
    return Arrival(arrival.offset_s, arrival.tier, arrival.model, arrival.input_chars)


async def save_recording(redis: Client, name: str, arrivals: Sequence[Arrival], duration_s: float) -> None:
    """Replace the recording `name` with this schedule: a header entry, then one entry per arrival."""
    key = protocol.loadtest_record_key(name)
    header = protocol.LoadRecordHeader(duration_s, len(arrivals))
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.xadd(key, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(header)})
    for arrival in arrivals:
        pipe.xadd(key, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(_to_wire(arrival))})
    await pipe.execute()


async def load_recording(redis: Client, name: str) -> tuple[list[Arrival], float]:
    """The schedule and duration recorded under `name`."""
    key = protocol.loadtest_record_key(name)
    header: protocol.LoadRecordHeader | None = None
    arrivals: list[Arrival] = []
    start: bytes | str = "-"
    while True:
        page: protocol.StreamEntries = await redis.xrange(key, min=start, count=PAGE)  # type: ignore[assignment]
        for _, fields in page:
            message = protocol.load_decoder.decode(fields[protocol.PAYLOAD_FIELD])
            if isinstance(message, protocol.LoadRecordHeader):
                header = message
            elif isinstance(message, protocol.LoadArrival):
                arrivals.append(_from_wire(message))
        if len(page) < PAGE:
            break
        start = b"(" + page[-1][0]
    if header is None:
        raise CoordinationError(f"no recording named {name!r} in this Redis ({key})")
    if header.count != len(arrivals):
        raise CoordinationError(f"recording {name!r} is incomplete: {len(arrivals)} of {header.count} arrivals")
    return arrivals, header.duration_s


@dataclass(slots=True)
class Led:
    """A distributed run's outcome: the merged measurements and each agent's part."""

    merged: Recorder
    parts: list[Recorder]


async def lead(
    redis: Client,
    target: runner.Target,
    arrivals: Sequence[Arrival],
    duration_s: float,
    agents: int,
    wait_s: float,
    settings: Settings | None = None,
) -> Led:
    """Wait for `agents` agents, publish the plan, wait for every share's result and merge them."""
    clock = RedisClock()
    await clock.sync(redis)
    await _wait_for_agents(redis, clock, agents, wait_s)
    run_id = secrets.token_hex(6)
    plan = protocol.LoadPlan(
        run_id=run_id,
        agents=agents,
        start_at_ms=int(clock.now_ms()) + START_LEAD_MS,
        duration_s=duration_s,
        arrivals=[_to_wire(a) for a in arrivals],
        url=target.url or "",
        direct=target.direct or "",
        stream=target.stream,
        deadline_ms=target.deadline_ms or 0,
    )
    await redis.xadd(protocol.loadtest_plans_key(), {protocol.PAYLOAD_FIELD: protocol.encoder.encode(plan)}, maxlen=100)
    log.info("plan published", extra={"run_id": run_id, "agents": agents, "requests": len(arrivals)})
    longest_s = max((a.offset_s for a in arrivals), default=0.0)
    timeout_s = START_LEAD_MS / 1000 + longest_s + RESULT_SLACK_S + (target.deadline_ms or 120_000) / 1000
    sample = None if settings is None else engine.tier_streams(settings, {a.tier for a in arrivals})
    depths = Recorder({}, keep_samples=False)
    parts = await _collect(redis, run_id, agents, timeout_s, sample, depths)
    total = merged(parts)
    total.duration_s = duration_s
    lead_s = START_LEAD_MS / 1000.0
    total.depth = {tier: [(t - lead_s, n) for t, n in points if t >= lead_s] for tier, points in depths.depth.items()}
    return Led(total, parts)


async def _wait_for_agents(redis: Client, clock: RedisClock, agents: int, wait_s: float) -> None:
    key = protocol.loadtest_agents_key()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_s
    while True:
        present = int(await redis.zcount(key, clock.now_ms() - PRESENCE_S * 1000, "+inf"))
        if present >= agents:
            return
        if loop.time() > give_up:
            raise CoordinationError(f"only {present} of {agents} agents are waiting after {wait_s:g} s")
        await asyncio.sleep(0.1)


async def _collect(
    redis: Client,
    run_id: str,
    agents: int,
    timeout_s: float,
    sample: dict[str, list[str]] | None,
    depths: Recorder,
) -> list[Recorder]:
    """Every agent's part, in share order, sampling queue depths into `depths` meanwhile."""
    key = protocol.loadtest_results_key(run_id)
    parts: dict[int, Recorder] = {}
    stop = asyncio.Event()
    sampler = None
    if sample is not None:
        sampler = asyncio.create_task(engine.sample_depths(redis, sample, depths, stop))
    last: bytes | str = "0-0"
    try:
        async with asyncio.timeout(timeout_s):
            while len(parts) < agents:
                response = await redis_client.xread(redis, {key: last}, None, 1000)
                for _, entries in response or ():
                    for entry_id, fields in entries:
                        last = entry_id
                        result = protocol.load_decoder.decode(fields[protocol.PAYLOAD_FIELD])
                        if isinstance(result, protocol.LoadAgentResult):
                            parts[result.share] = Recorder.from_wire(result.stats)
    except TimeoutError:
        raise CoordinationError(
            f"{agents - len(parts)} of {agents} agents did not report within {timeout_s:g} s"
        ) from None
    finally:
        stop.set()
        if sampler is not None:
            await sampler
    return [parts[i] for i in sorted(parts)]


async def serve_agent(redis: Client, settings: Settings, once: bool = False) -> None:
    """Wait for plans and send a share of each one this agent manages to claim."""
    agent_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    clock = RedisClock()
    await clock.sync(redis)
    plans = protocol.loadtest_plans_key()
    newest: protocol.StreamEntries = await redis.xrevrange(plans, count=1)  # type: ignore[assignment]
    last: bytes | str = newest[0][0] if newest else "0-0"
    presence = protocol.loadtest_agents_key()
    print(msgspec.json.encode({"event": "ready", "agent": agent_id}).decode(), flush=True)
    try:
        while True:
            await redis.zadd(presence, {agent_id: clock.now_ms()})
            response = await redis_client.xread(redis, {plans: last}, 1, 1000)
            for _, entries in response or ():
                for entry_id, fields in entries:
                    last = entry_id
                    plan = protocol.load_decoder.decode(fields[protocol.PAYLOAD_FIELD])
                    if isinstance(plan, protocol.LoadPlan) and await _run_share(redis, settings, clock, agent_id, plan):
                        if once:
                            return
    finally:
        await redis.zrem(presence, agent_id)


async def _run_share(
    redis: Client, settings: Settings, clock: RedisClock, agent_id: str, plan: protocol.LoadPlan
) -> bool:
    claims = protocol.loadtest_claims_key(plan.run_id)
    index = int(await redis.incr(claims)) - 1
    await redis.expire(claims, KEEP_S)
    if index >= plan.agents:
        return False  # every share is taken: another agent runs it
    await redis.zrem(protocol.loadtest_agents_key(), agent_id)
    arrivals = [_from_wire(a) for a in plan.arrivals]
    mine = share(arrivals, index, plan.agents)
    indices = list(range(index, len(arrivals), plan.agents))
    target = runner.Target(plan.url or None, plan.direct or None, None, plan.stream, plan.deadline_ms or None)
    log.info("running share", extra={"run_id": plan.run_id, "share": index, "requests": len(mine)})
    recorder = await runner.play(
        settings,
        target,
        mine,
        plan.duration_s,
        indices=indices,
        start_in_s=lambda: (plan.start_at_ms - clock.now_ms()) / 1000.0,
    )
    result = protocol.LoadAgentResult(plan.run_id, agent_id, index, recorder.to_wire())
    key = protocol.loadtest_results_key(plan.run_id)
    await redis.xadd(key, {protocol.PAYLOAD_FIELD: protocol.encoder.encode(result)})
    await redis.expire(key, KEEP_S)
    return True
