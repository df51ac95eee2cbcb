"""Admission and goodput past capacity: does a tier answer what it admits, and keep its processors
busy, when offered 2x and 5x what it can do?

For each tier: its capacity alone (closed loop: enough clients that its pools never idle, a long
deadline, completions a second), then open-loop Poisson load at each multiple of that capacity with
each deadline. Every request names its deadline; a 200 counts as goodput only if it came within it.
Per phase: sent, answered 200 in time, refused 429, admitted-then-504, other errors, late share of
admitted, goodput (in-time answers a second, from the first second on) against capacity, the
client-side cost of a refusal (p50/p99) and the median Retry-After, and host steal.
The load comes from a client process of its own, as a client on another machine would send it.
Run: `python -m bench.overload [--config bench/overload.toml] [--tiers batch,interactive,realtime]
[--multiples 2,5] [--deadlines 500,2000,10000] [--min-requests 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from redis.asyncio import Redis

from bench import sched_wait
from bench.scenarios import cpu_times, drained, start_stack, steal_pct
from core.cpu import CPU_POLICIES, lower_priority
from core.settings import Settings, load_settings

WARMUP_S = 1.0  # answers before this are not counted in goodput: the pools are still filling up
CLOSED_LOOP_CLIENTS = 64
INPUT_CHARS = {"realtime": 400, "interactive": 64, "batch": 64}  # realtime: 100 tokens, about 5.8 ms each


def body(tier: str, n: int, deadline_ms: int, chars: int = 0) -> dict[str, Any]:
    text = f"{tier}-{n}-".ljust(chars or INPUT_CHARS[tier], "x")
    return {"model": "sim-echo", "input": text, "tier": tier, "deadline_ms": deadline_ms}


class Tally:
    """What one phase's requests got: (sent at, done at, status, retry-after) each, times from the start."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, int, float]] = []
        self.server_ms: list[float] = []  # the gateway's own total_ms of each 200
        self.worker_ms: list[float] = []  # its queue_ms + service_ms: the part spent waiting for and on a processor

    def summary(self, seconds: float, deadline_ms: int) -> dict[str, Any]:
        ok = [r for r in self.rows if r[2] == 200 and (r[1] - r[0]) * 1000 <= deadline_ms]
        refused = sorted((r[1] - r[0]) * 1000 for r in self.rows if r[2] == 429)
        retry = sorted(r[3] for r in self.rows if r[2] == 429)
        late = sum(1 for r in self.rows if r[2] == 504 or (r[2] == 200 and (r[1] - r[0]) * 1000 > deadline_ms))
        counted = [r for r in ok if WARMUP_S <= r[1] <= seconds]
        return {
            "sent": len(self.rows),
            "ok": len(ok),
            "refused": len(refused),
            "late": late,
            "errors": len(self.rows) - len(ok) - len(refused) - late,
            "goodput_per_s": len(counted) / (seconds - WARMUP_S),
            "refusal_p50_ms": _pct(refused, 50),
            "refusal_p99_ms": _pct(refused, 99),
            "retry_after_p50_s": _pct(retry, 50),
            "latencies_ms": [round((r[1] - r[0]) * 1000, 3) for r in self.rows if r[2] == 200],
            "server_ms": self.server_ms,
            "worker_ms": self.worker_ms,
        }


def _pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else None


async def _send(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], start: float, tally: Tally) -> None:
    sent = time.perf_counter() - start
    try:
        async with session.post(f"{url}/v1/infer", json=payload) as response:
            data = await response.read()
            status = response.status
            retry = float(response.headers.get("Retry-After", 0))
            if status == 200:
                answer = json.loads(data)
                if answer["output"] != payload["input"][::-1]:
                    status = 0  # an answer to another request: an error, never goodput
                timings = answer["timings"]
                tally.server_ms.append(timings["total_ms"])
                tally.worker_ms.append(timings["queue_ms"] + timings["service_ms"])
    except aiohttp.ClientError:
        status, retry = -1, 0.0
    tally.rows.append((sent, time.perf_counter() - start, status, retry))


async def open_loop(
    url: str, tier: str, rate: float, seconds: float, deadline_ms: int, seed: int, chars: int = 0
) -> Tally:
    rng, tally, tasks = random.Random(seed), Tally(), []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start, at, n = time.perf_counter(), 0.0, 0
        while (at := at + rng.expovariate(rate)) < seconds:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            payload = body(tier, n, deadline_ms, chars)
            tasks.append(asyncio.create_task(_send(session, url, payload, start, tally)))
            n += 1
        await asyncio.gather(*tasks)
    return tally


async def closed_loop(url: str, tier: str, seconds: float) -> Tally:
    tally = Tally()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def client(k: int) -> None:
            n = k
            while time.perf_counter() - start < seconds:
                await _send(session, url, body(tier, n, 60_000), start, tally)
                n += CLOSED_LOOP_CLIENTS

        await asyncio.gather(*(client(k) for k in range(CLOSED_LOOP_CLIENTS)))
    return tally


def client_main(spec: dict[str, Any]) -> None:
    """The client process: one phase, its summary as one JSON line on stdout."""
    os.nice(spec.get("nice", 0))
    lower_priority(0, spec.get("policy", "normal"))
    if spec["rate"]:
        args = (spec["url"], spec["tier"], spec["rate"], spec["seconds"], spec["deadline_ms"], spec["seed"])
        run = open_loop(*args, spec.get("chars", 0))
    else:
        run = closed_loop(spec["url"], spec["tier"], spec["seconds"])
    tally = uvloop.run(run)
    print(json.dumps(tally.summary(spec["seconds"], spec["deadline_ms"])))


def phase(spec: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    before = cpu_times()
    argv = [sys.executable, "-m", "bench.overload", "--client", json.dumps(spec)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1]), steal_pct(before, cpu_times())


async def phases(specs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    """Several clients at once, each in a process of its own; their summaries and the host's steal."""
    before = cpu_times()
    clients = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.overload", "--client", json.dumps(spec), stdout=asyncio.subprocess.PIPE
        )
        for spec in specs
    ]
    outputs = await asyncio.gather(*(client.communicate() for client in clients))
    if any(client.returncode for client in clients):
        raise RuntimeError("a client process failed")
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs], steal_pct(before, cpu_times())


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def settle(redis: Redis, settings: Settings) -> None:
    await drained(redis, settings)
    await asyncio.sleep(1.0)  # let heartbeats report the pools idle again


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    process, ready = start_stack(args.config)
    redis = Redis.from_url(ready["redis"])
    url = ready["url"]
    print("| tier | multiple | deadline ms | offered /s | sent | ok | refused 429 | admitted then 504 | late % of "
          "admitted | errors | goodput /s | goodput / capacity | refusal p50 ms | refusal p99 ms | Retry-After p50 s "
          "| steal % |")  # fmt: skip
    print("|---" * 16 + "|")
    try:
        if args.isolation_rounds:
            await isolation(
                url,
                redis,
                settings,
                args.isolation_s,
                args.isolation_rounds,
                args.flood_nice,
                args.flood_policy,
                process.pid,
            )
            return
        for tier in args.tiers.split(","):
            spec = {"url": url, "tier": tier, "rate": 0, "seconds": args.capacity_s, "deadline_ms": 60_000, "seed": 0}
            row, steal = phase(spec)
            capacity = row["goodput_per_s"]
            print(f"| {tier} | capacity alone (closed loop, {CLOSED_LOOP_CLIENTS} clients) | 60000 | - | {row['sent']} "
                  f"| {row['ok']} | {row['refused']} | {row['late']} | - | {row['errors']} | {capacity:.1f} | 1.00 "
                  f"| - | - | - | {fmt(steal)} |", flush=True)  # fmt: skip
            await settle(redis, settings)
            for deadline_ms in (int(d) for d in args.deadlines.split(",")):
                for multiple in (float(m) for m in args.multiples.split(",")):
                    rate = capacity * multiple
                    seconds = max(args.seconds, args.min_requests / rate)
                    spec |= {"rate": rate, "seconds": seconds, "deadline_ms": deadline_ms, "seed": int(rate)}
                    row, steal = phase(spec)
                    print_row(tier, multiple, deadline_ms, rate, capacity, row, steal)
                    await settle(redis, settings)
    finally:
        await redis.aclose()
        process.terminate()
        process.wait(timeout=30)


ISOLATION_RATES = {"realtime": 50.0, "interactive": 50.0}
FLOOD = {"tier": "batch", "rate": 1000.0, "deadline_ms": 2000}


async def isolation(
    url: str,
    redis: Redis,
    settings: Settings,
    seconds: float,
    rounds: int,
    flood_nice: int = 0,
    flood_policy: str = "normal",
    stack_pid: int | None = None,
) -> None:
    """Realtime and interactive through the one URL, with batch idle, then flooded; alternating
    rounds. With `stack_pid` (`tiergate up`'s), it also prints how long the request path's
    processes waited for a CPU at each wake-up in each kind of phase."""
    flood = f"batch at {FLOOD['rate']:g} req/s (deadline {FLOOD['deadline_ms']} ms) from its own process"
    flood += f" at nice {flood_nice}" if flood_nice else ""
    flood += f", scheduling class {flood_policy}" if flood_policy != "normal" else ""
    print(f"\nrealtime and interactive at {ISOLATION_RATES} req/s, {seconds:g} s a phase, through {url}; {flood}\n")
    print(
        "| round | phase | realtime sent | realtime p50 ms | realtime p99 ms | interactive p50 ms "
        "| interactive p99 ms | batch sent | batch ok | batch 429 | steal % |"
    )
    print("|---" * 11 + "|")
    pooled: dict[str, dict[str, list[float]]] = {}
    per_round: dict[str, list[float]] = {}
    names = sched_wait.stack_processes(stack_pid) if stack_pid is not None else {}
    waited: dict[str, list[sched_wait.Wait]] = {}
    for n in range(1, rounds + 1):
        for name in ("batch idle", "batch flood"):
            specs = [
                {
                    "url": url,
                    "tier": tier,
                    "rate": rate,
                    "seconds": seconds,
                    "deadline_ms": 1000,
                    "seed": n,
                    "chars": 64,
                }
                for tier, rate in ISOLATION_RATES.items()
            ]
            if name == "batch flood":
                specs.append(
                    {"url": url, "seconds": seconds, "seed": n, "nice": flood_nice, "policy": flood_policy} | FLOOD
                )
            waits_before = sched_wait.read(names)
            rows, steal = await phases(specs)
            waited.setdefault(name, []).extend(sched_wait.waits(names, waits_before, sched_wait.read(names)))
            for tier, row in zip(ISOLATION_RATES, rows, strict=False):
                pooled.setdefault(name, {}).setdefault(tier, []).extend(row["latencies_ms"])
                pooled.setdefault(f"{name} (gateway)", {}).setdefault(tier, []).extend(row["server_ms"])
                pooled.setdefault(f"{name} (worker)", {}).setdefault(tier, []).extend(row["worker_ms"])
                per_round.setdefault(f"{name}/{tier}", []).append(_pct(sorted(row["latencies_ms"]), 99) or 0.0)
            print_isolation_row(n, name, rows, steal)
            await settle(redis, settings)
    for tier in ISOLATION_RATES:
        idle = _pct(sorted(pooled["batch idle"][tier]), 99) or 0.0
        flood = _pct(sorted(pooled["batch flood"][tier]), 99) or 0.0
        rounds_idle, rounds_flood = per_round[f"batch idle/{tier}"], per_round[f"batch flood/{tier}"]
        ratios = [f / i for i, f in zip(rounds_idle, rounds_flood, strict=True)]
        spread = f"rounds {min(ratios):.2f}x to {max(ratios):.2f}x"
        count = len(pooled["batch flood"][tier])
        print(
            f"{tier}: p99 over {count} requests a phase: batch idle {idle:.2f} ms, batch flood {flood:.2f} ms: ", end=""
        )
        print(f"{flood / idle:.2f}x ({spread})")
        for part, what in (("gateway", "the gateway's own total_ms"), ("worker", "queue_ms + service_ms")):
            idle = _pct(sorted(pooled[f"batch idle ({part})"][tier]), 99) or 0.0
            flood = _pct(sorted(pooled[f"batch flood ({part})"][tier]), 99) or 0.0
            print(f"{tier}: {what} p99: batch idle {idle:.2f} ms, batch flood {flood:.2f} ms: {flood / idle:.2f}x")
    path = ("gateway", "redis-server", "groq-realtime", "cerebras-batch", "inferentia-mixed")
    for name, phase_waits in waited.items():
        if phase_waits:
            print(f"{name}: waited for a CPU, per wake-up: {sched_wait.line(sched_wait.combine(phase_waits), path)}")


def print_isolation_row(n: int, name: str, rows: list[dict[str, Any]], steal: float | None) -> None:
    rt, it = (sorted(row["latencies_ms"]) for row in rows[:2])
    batch = rows[2] if len(rows) > 2 else {"sent": 0, "ok": 0, "refused": 0}
    realtime = f"{rows[0]['sent']} | {fmt(_pct(rt, 50), 2)} | {fmt(_pct(rt, 99), 2)}"
    print(
        f"| {n} | {name} | {realtime} | {fmt(_pct(it, 50), 2)} | {fmt(_pct(it, 99), 2)} "
        f"| {batch['sent']} | {batch['ok']} | {batch['refused']} | {fmt(steal)} |",
        flush=True,
    )


def print_row(
    tier: str, multiple: float, deadline_ms: int, rate: float, capacity: float, row: dict[str, Any], steal: float | None
) -> None:
    admitted = row["sent"] - row["refused"]
    late_pct = 100.0 * row["late"] / admitted if admitted else 0.0
    print(
        f"| {tier} | {multiple:g}x | {deadline_ms} | {rate:.0f} | {row['sent']} | {row['ok']} | {row['refused']} "
        f"| {row['late']} | {late_pct:.2f} | {row['errors']} | {row['goodput_per_s']:.1f} "
        f"| {row['goodput_per_s'] / capacity:.2f} | {fmt(row['refusal_p50_ms'], 2)} | {fmt(row['refusal_p99_ms'], 2)} "
        f"| {fmt(row['retry_after_p50_s'], 0)} | {fmt(steal)} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # the client process's phase
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("overload.toml"))
    parser.add_argument("--tiers", default="batch,interactive,realtime")
    parser.add_argument("--multiples", default="2,5", help="offered load as multiples of the measured capacity")
    parser.add_argument("--deadlines", default="500,2000,10000", help="deadline_ms of every request, per phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="shortest phase")
    parser.add_argument("--min-requests", type=int, default=2000, help="requests per phase at the least")
    parser.add_argument("--isolation-rounds", type=int, default=0, help="run the isolation rounds instead (0: no)")
    parser.add_argument(
        "--flood-nice", type=int, default=0, help="CPU priority of the flood's client (10: as if on another host)"
    )
    parser.add_argument(
        "--flood-policy",
        choices=list(CPU_POLICIES),
        default="normal",
        help="Linux scheduling class of the flood's client (idle: it only takes a core nothing else wants)",
    )
    parser.add_argument("--isolation-s", type=float, default=10.0, help="seconds of each isolation phase")
    parser.add_argument("--capacity-s", type=float, default=10.0, help="seconds of the closed-loop capacity phase")
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
