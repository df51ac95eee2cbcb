"""Fair shares inside a tier: does a light tenant keep its goodput and latency while another
floods the same tier, and does the flooder get the rest?

`tiergate up` on bench/tenants.toml (API keys on; one interactive pool whose capacity is about
80 requests a second). Tenant B offers 20 % of that capacity, open-loop (Poisson), in each phase:
alone; with tenant A offering 5x the capacity from 1 s after B started (two tenants: fair shares
apply); and with A's flood sent with a key of B's own tenant (one tenant: no shares, the queue is
first come, first served). Every request has the tier's 2 s deadline; a 200 counts as goodput
only if it came within it. Each tenant's client is a process of its own. The first two phases
alternate for `--rounds` rounds; B's percentiles are printed per round and over all rounds, with
the time B's requests spent queued (`queue_ms` of the answers), what the interactive stream held
meanwhile (entries read by the worker but not answered, entries not yet read), the machine's load
average and CPU steal.
Run: `python -m bench.tenants [--seconds 20] [--rounds 2] [--config bench/tenants.toml]`.
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

from bench.scenarios import cpu_times, drained, start_stack, steal_pct
from core.settings import Settings, load_settings

DEADLINE_MS = 2000
STEADY_FROM_S = 2.0  # A starts 1 s after B: B's requests from 2 s on leave out the flood's first second


def capacity_per_s(settings: Settings) -> float:
    """What the config's pools can do a second on the interactive tier: full batches back to back."""
    pools = [p for p in settings.pools.values() if "interactive" in p.tiers]
    return sum(p.replicas * p.max_batch / (settings.processors[p.processor].latency.min_ms / 1000) for p in pools)


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    rng, rows, tasks = random.Random(spec["seed"]), [], []
    queued: list[float] = []
    refusals: set[str] = set()  # the 429s' messages
    steady: list[float] = []  # latencies (200s) of the requests sent from STEADY_FROM_S on
    headers = {"Authorization": f"Bearer {spec['key']}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:

        async def send(n: int) -> None:
            body = {"model": "sim-echo", "input": f"{spec['name']}-{n}", "deadline_ms": DEADLINE_MS}
            sent = time.perf_counter()
            try:
                async with session.post(f"{spec['url']}/v1/infer", json=body) as response:
                    answer = await response.json()
                    ok = response.status == 200 and answer["output"] == body["input"][::-1]
                    if ok:
                        queued.append(answer["timings"]["queue_ms"])
                    elif response.status == 429:
                        refusals.add(answer["error"]["message"])
                    status = response.status if ok or response.status != 200 else 0
            except aiohttp.ClientError:
                status = -1
            rows.append((status, (time.perf_counter() - sent) * 1000))
            if status == 200 and sent - start >= STEADY_FROM_S:
                steady.append(rows[-1][1])

        await asyncio.sleep(spec["delay_s"])
        start, at, n = time.perf_counter(), 0.0, 0
        while (at := at + rng.expovariate(spec["rate"])) < spec["seconds"]:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            tasks.append(asyncio.create_task(send(n)))
            n += 1
        await asyncio.gather(*tasks)
    summed, queued = summary(rows, spec["seconds"]), sorted(queued)
    summed |= {"queue_p50_ms": _pct(queued, 50), "queue_p99_ms": _pct(queued, 99), "refusals": sorted(refusals)}
    if spec["name"] != "B":  # only B's latencies are pooled over rounds
        summed["good_ms"], steady = [], []
    return {**summed, "steady_ms": sorted(steady)}


def summary(rows: list[tuple[int, float]], seconds: float) -> dict[str, Any]:
    good = sorted(ms for status, ms in rows if status == 200 and ms <= DEADLINE_MS)
    return {
        "good_ms": good,
        "sent": len(rows),
        "ok": len(good),
        "refused": sum(1 for status, _ in rows if status == 429),
        "late": sum(1 for status, ms in rows if status == 504 or (status == 200 and ms > DEADLINE_MS)),
        "errors": sum(1 for status, _ in rows if status not in (200, 429, 504)),
        "goodput_per_s": len(good) / seconds,
        "p50_ms": _pct(good, 50),
        "p99_ms": _pct(good, 99),
    }


def _pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else None


async def clients(
    specs: list[dict[str, Any]], stream: str, redis: Redis
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run one phase: the client processes of `specs`, with the stream sampled meanwhile."""
    before, load = cpu_times(), os.getloadavg()[0]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.tenants", "--client", json.dumps(s), stdout=asyncio.subprocess.PIPE
        )
        for s in specs
    ]
    sampling = asyncio.create_task(sample_stream(redis, stream))
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    sampling.cancel()
    held = await sampling
    if any(p.returncode for p in procs):
        raise RuntimeError("a client process failed")
    machine = {"load": max(load, os.getloadavg()[0]), "steal": steal_pct(before, cpu_times()), **held}
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs], machine


async def sample_stream(redis: Redis, stream: str) -> dict[str, float]:
    """Every 20 ms while the phase runs: the entries the workers have read and not yet answered
    (pending: running or in a worker's batcher) and those not yet read (lag). Their means."""
    pending, lag = [], []
    try:
        while True:
            for group in await redis.xinfo_groups(stream):
                pending.append(group["pending"])
                lag.append(group.get("lag") or 0)
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        pass
    return {"pending": sum(pending) / max(1, len(pending)), "lag": sum(lag) / max(1, len(lag))}


def new_key(config: Path, redis_url: str, tenant: str) -> str:
    argv = [sys.executable, "-m", "ops", "keys", "create", "--tenant", tenant, "--config", str(config)]
    out = subprocess.run([*argv, "--redis-url", redis_url], check=True, capture_output=True, text=True).stdout
    return str(json.loads(out.strip().splitlines()[-1])["key"])


def interactive_stream(settings: Settings) -> str:
    return next(lane.stream for lane in settings.lanes() if lane.tier == "interactive")


HEADER = (
    "| round | phase | tenant | sent | ok | 429 | late | goodput/s | p50 ms | p99 ms | "
    "queue p50 / p99 ms | pending | unread | load | steal % |"
)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    cap = capacity_per_s(settings)
    process, ready = start_stack(args.config)
    redis = Redis.from_url(ready["redis"], decode_responses=True)
    stream = interactive_stream(settings)
    try:
        key_a, key_b = (new_key(args.config, ready["redis"], tenant) for tenant in ("tenant-a", "tenant-b"))
        key_b2 = new_key(args.config, ready["redis"], "tenant-b")
        light = {"name": "B", "url": ready["url"], "rate": 0.2 * cap, "seconds": args.seconds, "delay_s": 0.0}
        flood = {**light, "name": "A", "rate": args.flood * cap, "seconds": args.seconds - 1, "delay_s": 1.0}
        phases = []
        for n in range(args.rounds):
            phases.append((n + 1, "B alone", [{**light, "key": key_b, "seed": 1 + 2 * n}]))
            phases.append(
                (
                    n + 1,
                    "B + A, two tenants",
                    [{**light, "key": key_b, "seed": 1 + 2 * n}, {**flood, "key": key_a, "seed": 2 + 2 * n}],
                )
            )
        if args.one_tenant:
            phases.append(
                (0, "B + A, one tenant", [{**light, "key": key_b, "seed": 1}, {**flood, "key": key_b2, "seed": 2}])
            )
        offered = f"B offers {0.2 * cap:.0f}/s, A {args.flood * cap:.0f}/s"
        print(f"interactive capacity {cap:.0f}/s; {offered}; {args.seconds:g} s a phase, {args.rounds} rounds")
        print(HEADER)
        print("|" + "---|" * (HEADER.count("|") - 1))
        per_round: dict[int, dict[str, dict[str, Any]]] = {}
        for n, name, specs in phases:
            await drained(redis, settings)
            results, machine = await clients(specs, stream, redis)
            for spec, r in zip(specs, results, strict=True):
                print_row(n, name, spec["name"], r, machine)
            per_round.setdefault(n, {})[name] = results[0]
            if name != "B + A, one tenant" and results[0]["refusals"]:
                print(f"B refused in {name!r}: {results[0]['refusals'][:3]}")
        print_ratios(per_round)
    finally:
        await redis.aclose()
        process.terminate()
        process.wait(timeout=30)


def print_row(n: int, phase: str, tenant: str, r: dict[str, Any], machine: dict[str, Any]) -> None:
    cells = (
        n or "-", phase, tenant, r["sent"], r["ok"], r["refused"], r["late"] + r["errors"],
        f"{r['goodput_per_s']:.1f}", _fmt(r["p50_ms"]), _fmt(r["p99_ms"]),
        f"{_fmt(r['queue_p50_ms'])} / {_fmt(r['queue_p99_ms'])}",
        f"{machine['pending']:.1f}", f"{machine['lag']:.1f}", f"{machine['load']:.1f}", _fmt(machine["steal"]),
    )  # fmt: skip
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def print_ratios(per_round: dict[int, dict[str, dict[str, Any]]]) -> None:
    """B's p50 and p99 beside A over B alone: over all rounds' requests, and each round's; then
    the same for the requests sent from STEADY_FROM_S on (the flood's first second left out)."""
    rounds = [phases for n, phases in sorted(per_round.items()) if n and len(phases) == 2]
    for label, field in (("", "good_ms"), (f", sent from {STEADY_FROM_S:g} s on", "steady_ms")):
        alone, shared = ([ms for p in rounds for ms in p[name][field]] for name in ("B alone", "B + A, two tenants"))
        if not alone or not shared:
            return
        for p in (50, 99):
            each = [_ratio(phases["B + A, two tenants"][field], phases["B alone"][field], p) for phases in rounds]
            spread = ", ".join(f"{ratio:.2f}" for ratio in each)
            print(
                f"B p{p}{label}: alone {_pct(sorted(alone), p):.1f} ms ({len(alone)} requests), "
                f"beside A {_pct(sorted(shared), p):.1f} ms ({len(shared)}): "
                f"{_ratio(shared, alone, p):.2f}x (rounds: {spread})"
            )


def _ratio(beside: list[float], alone: list[float], p: float) -> float:
    return _pct(sorted(beside), p) / _pct(sorted(alone), p)  # type: ignore[operator]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # a client process's spec
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("tenants.toml"))
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of B alone, then B beside A")
    parser.add_argument("--flood", type=float, default=5.0, help="A's offered rate, in multiples of the capacity")
    parser.add_argument(
        "--no-one-tenant", dest="one_tenant", action="store_false", help="skip the phase of A sent as tenant B"
    )
    args = parser.parse_args()
    if args.client:
        spec = json.loads(args.client)
        print(json.dumps(uvloop.run(open_loop(spec))))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
