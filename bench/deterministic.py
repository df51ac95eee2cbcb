"""Service-time spread of deterministic pools, through HTTP against `tiergate up`.

For each pool whose `mode` is `deterministic`, it sends one fixed request to the pool's tier:
first N requests one after another at idle, then N open-loop (Poisson arrivals) at 50 % and at
80 % of the pool's capacity (replicas x 1000 / the profile's service ms). It prints, per phase,
the spread of `timings.service_ms` against the processor profile (p1/p50/p99/max and the share
within ±50 µs of it), `queue_ms` and `total_ms` p50/p99, and the host's steal time.
Run: `python -m bench.deterministic [--config PATH] [--requests 2000] [--loads 0.5,0.8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import sched_wait
from bench.scenarios import cpu_times, start_stack, steal_pct
from core import protocol
from core.clock import RedisClock
from core.cpu import CPU_POLICIES, lower_priority
from core.errors import RequestError
from core.settings import DEFAULT_CONFIG_PATH, Settings, load_settings
from gateway.queue import RequestQueue
from gateway.results import ResultReader, Waiters
from workers.capacity import request_ms

TEXT = "hello tiergate"
WITHIN_MS = 0.05  # the precision a deterministic pool promises: ±50 µs of its profile
WARMUP = 200


@dataclass(slots=True, frozen=True)
class PoolTarget:
    """Where to send a pool's requests, what to send, and what the profile says they take."""

    pool: str
    tier: str
    model: str
    url: str
    profile_ms: float
    capacity_per_s: float
    stream: str  # its request stream, for the direct sender


@dataclass(slots=True)
class Phase:
    pool: str
    name: str
    rate_per_s: float | None  # None: one request after another
    profile_ms: float
    sent: int = 0
    service_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    elsewhere: int = 0  # answered by another pool sharing the tier's stream
    failed: int = 0
    steal_pct: float | None = None
    waits: list[sched_wait.Wait] = field(default_factory=list)  # each stack process's wait for a CPU


def targets(settings: Settings, ready: dict[str, Any]) -> list[PoolTarget]:
    """The deterministic pools of `settings`, each with the URL of a gateway serving its tier."""
    found = []
    tier_urls: dict[str, str] = ready.get("tier_urls") or {}
    for name, pool in settings.pools.items():
        if pool.mode != "deterministic":
            continue
        tier, model = pool.tiers[0], pool.models[0]
        latency = settings.processors[pool.processor].latency
        profile = request_ms(latency, settings.models[model].kind == "echo", TEXT, 0)
        url = tier_urls.get(tier, ready["url"])
        lane = settings.lane_for(tier, pool.region, model)
        assert lane is not None  # the pool serves it
        found.append(PoolTarget(name, tier, model, url, profile, pool.replicas * 1000.0 / profile, lane.stream))
    return found


Send = Callable[["PoolTarget"], Awaitable[tuple[int, dict[str, Any]]]]


async def _one(send: Send, target: PoolTarget, phase: Phase | None) -> None:
    status, answer = await send(target)
    if phase is None:
        return
    if status != 200:
        phase.failed += 1
    elif answer["pool"] != target.pool:
        phase.elsewhere += 1
    else:
        timings = answer["timings"]
        phase.service_ms.append(timings["service_ms"])
        phase.queue_ms.append(timings["queue_ms"])
        phase.total_ms.append(timings["total_ms"])


def http_sender(session: aiohttp.ClientSession) -> Send:
    async def send(target: PoolTarget) -> tuple[int, dict[str, Any]]:
        body = {"model": target.model, "input": TEXT, "tier": target.tier}
        async with session.post(f"{target.url}/v1/infer", json=body) as response:
            return response.status, await response.json()

    return send


class DirectSender:
    """Requests straight into the tier's stream, replies through the gateway's own waiter and
    reader: the worker's precision without the HTTP layer's CPU on the same cores."""

    def __init__(self, redis: Redis, region: str) -> None:
        self.redis, self.region = redis, region
        self.gateway_id = f"bench-{secrets.token_hex(4)}"
        self.clock, self.waiters = RedisClock(), Waiters()
        self.queue = RequestQueue(redis)
        self.reader = ResultReader(self.queue, self.gateway_id, self.waiters)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.clock.sync(self.redis)
        self._task = asyncio.create_task(self.reader.run(self._stop))

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.reader.close()

    async def __call__(self, target: PoolTarget) -> tuple[int, dict[str, Any]]:
        now_ms = self.clock.now_ms()
        env = protocol.Envelope(
            id=protocol.new_request_id(), model=target.model, input=TEXT, tier=target.tier, region=self.region,
            reply_to=self.gateway_id, deadline_at_ms=int(now_ms) + 1000, sent_at_ms=now_ms,
        )  # fmt: skip
        started = time.perf_counter()
        waiting = self.waiters.add(env.id, 2.0)
        await self.queue.enqueue(target.stream, protocol.encoder.encode(env))
        try:
            reply = await waiting
        except RequestError:
            return 504, {}
        if not isinstance(reply, protocol.Result):
            return 500, {}
        total_ms = (time.perf_counter() - started) * 1000.0
        timings = {"service_ms": reply.service_ms, "queue_ms": reply.queue_ms, "total_ms": total_ms}
        return 200, {"pool": reply.pool, "timings": timings}


async def sequential(send: Send, target: PoolTarget, requests: int) -> Phase:
    phase = Phase(target.pool, "idle, sequential", None, target.profile_ms, sent=requests)
    for _ in range(requests):
        await _one(send, target, phase)
    return phase


async def open_loop(send: Send, target: PoolTarget, share: float, requests: int, seed: int = 1) -> Phase:
    """`requests` Poisson arrivals at `share` of the pool's capacity, each sent at its own time."""
    rate = target.capacity_per_s * share
    phase = Phase(target.pool, f"open loop, {share:.0%} load", rate, target.profile_ms, sent=requests)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start, offset_s = loop.time(), 0.0
    sent: list[asyncio.Task[None]] = []
    for _ in range(requests):
        offset_s += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, start + offset_s - loop.time()))
        sent.append(asyncio.create_task(_one(send, target, phase)))
    await asyncio.gather(*sent)
    return phase


async def spread(
    settings: Settings,
    ready: dict[str, Any],
    requests: int = 2000,
    loads: Sequence[float] = (0.5, 0.8),
    direct: bool = False,
    stack_pid: int | None = None,
) -> list[Phase]:
    """Every deterministic pool's phases against a running stack (`ready`: its ready line), over
    HTTP, or with `direct` straight through Redis; with `stack_pid` (`tiergate up`'s), each
    phase also holds how long each of the stack's processes waited for a CPU."""
    async with contextlib.AsyncExitStack() as stack:
        if direct:
            redis = Redis.from_url(ready["redis"])
            stack.push_async_callback(redis.aclose)
            sender = DirectSender(redis, settings.gateway.region)
            await sender.start()
            stack.push_async_callback(sender.close)
            send: Send = sender
        else:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            stack.push_async_callback(session.close)
            send = http_sender(session)
        names = sched_wait.stack_processes(stack_pid) if stack_pid is not None else {}
        return await _phases(send, settings, ready, requests, loads, names)


async def _phases(
    send: Send,
    settings: Settings,
    ready: dict[str, Any],
    requests: int,
    loads: Sequence[float],
    names: dict[int, str],
) -> list[Phase]:
    phases: list[Phase] = []
    for target in targets(settings, ready):
        for _ in range(WARMUP):
            await _one(send, target, None)
        for n, share in enumerate([None, *loads]):
            if share is not None:
                await asyncio.sleep(1.0)
            before, waits_before = cpu_times(), sched_wait.read(names)
            run = sequential(send, target, requests) if share is None else open_loop(send, target, share, requests, n)
            phase = await run
            phase.steal_pct = steal_pct(before, cpu_times())
            phase.waits = sched_wait.waits(names, waits_before, sched_wait.read(names))
            phases.append(phase)
    return phases


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100.0 * len(ordered) + 0.5) - 1))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(phases: Sequence[Phase]) -> str:
    """The markdown table of `phases`."""
    head = (
        "| pool | phase | req/s | ok | profile ms | service p1 | p50 | p99 | max | within ±50 µs "
        "| queue p50 | queue p99 | total p50 | total p99 | steal % |"
    )
    lines = [head, "|" + "---|" * 15]
    for p in phases:
        s = p.service_ms
        within = sum(abs(v - p.profile_ms) <= WITHIN_MS for v in s) / len(s) * 100.0 if s else 0.0
        rate = "-" if p.rate_per_s is None else f"{p.rate_per_s:.0f}"
        steal = "-" if p.steal_pct is None else f"{p.steal_pct:.1f}"
        cells = [
            p.pool, p.name, rate, f"{len(s)}/{p.sent}", f"{p.profile_ms:.3f}",
            _ms(percentile(s, 1)), _ms(percentile(s, 50)), _ms(percentile(s, 99)), _ms(max(s, default=None)),
            f"{within:.2f} %", _ms(percentile(p.queue_ms, 50)), _ms(percentile(p.queue_ms, 99)),
            _ms(percentile(p.total_ms, 50)), _ms(percentile(p.total_ms, 99)), steal,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wait_lines(phases: Sequence[Phase]) -> str:
    """Per phase, how long the request path's processes waited for a CPU at each wake-up
    (the kernel's run queue delay, averaged), and how many wake-ups they had."""
    lines = []
    for p in phases:
        if p.waits:
            path = ("gateway", "redis-server", p.pool)
            lines.append(f"{p.pool}, {p.name}: waited for a CPU, per wake-up: {sched_wait.line(p.waits, path)}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    process, ready = start_stack(args.config)
    lower_priority(0, args.client_policy)  # after the stack started: its processes keep theirs
    try:
        await asyncio.sleep(1.0)  # let every process finish starting
        load_before = os.getloadavg()
        started = time.monotonic()
        loads = [float(x) for x in args.loads.split(",")]
        phases = await spread(settings, ready, args.requests, loads, args.direct, process.pid)
        policy = f", the client in scheduling class {args.client_policy}" if args.client_policy != "normal" else ""
        print(f"requests sent {'straight into Redis' if args.direct else 'over HTTP'}{policy}\n")
        print(table(phases))
        if waits := wait_lines(phases):
            print(f"\n{waits}")
        elapsed_s = time.monotonic() - started
        load_after = os.getloadavg()
        print(
            f"\n{len(phases)} phases in {elapsed_s:.0f} s; load average (1 min) {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after; {os.cpu_count()} CPUs"
        )
        for p in phases:
            if p.elsewhere or p.failed:
                print(f"{p.pool}, {p.name}: {p.elsewhere} answered by another pool, {p.failed} failed")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase")
    parser.add_argument("--direct", action="store_true", help="send straight into Redis instead of over HTTP")
    parser.add_argument(
        "--client-policy",
        choices=list(CPU_POLICIES),
        default="normal",
        help="Linux scheduling class of this client (idle: as if it ran on a host of its own)",
    )
    parser.add_argument("--loads", default="0.5,0.8", help="open-loop loads, as shares of the pool's capacity")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
