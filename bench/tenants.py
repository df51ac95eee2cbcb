"""Fair shares inside a tier: does a light tenant keep its goodput and latency while another
floods the same tier, and does the flooder get the rest?

`tiergate up` on bench/tenants.toml (API keys on; one interactive pool whose capacity is about
80 requests a second). Tenant B offers 20 % of that capacity, open-loop (Poisson), in each phase:
alone; with tenant A offering 5x the capacity from 1 s after B started (two tenants: fair shares
apply); and with A's flood sent with a key of B's own tenant (one tenant: no shares, the queue is
first come, first served). Every request has the tier's 2 s deadline; a 200 counts as goodput
only if it came within it. Each tenant's client is a process of its own.
Run: `python -m bench.tenants [--seconds 20] [--config bench/tenants.toml]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def capacity_per_s(settings: Settings) -> float:
    """What the config's pools can do a second on the interactive tier: full batches back to back."""
    pools = [p for p in settings.pools.values() if "interactive" in p.tiers]
    return sum(p.replicas * p.max_batch / (settings.processors[p.processor].latency.min_ms / 1000) for p in pools)


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    rng, rows, tasks = random.Random(spec["seed"]), [], []
    headers = {"Authorization": f"Bearer {spec['key']}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:

        async def send(n: int) -> None:
            body = {"model": "sim-echo", "input": f"{spec['name']}-{n}", "deadline_ms": DEADLINE_MS}
            sent = time.perf_counter()
            try:
                async with session.post(f"{spec['url']}/v1/infer", json=body) as response:
                    answer = await response.json()
                    ok = response.status == 200 and answer["output"] == body["input"][::-1]
                    status = response.status if ok or response.status != 200 else 0
            except aiohttp.ClientError:
                status = -1
            rows.append((status, (time.perf_counter() - sent) * 1000))

        await asyncio.sleep(spec["delay_s"])
        start, at, n = time.perf_counter(), 0.0, 0
        while (at := at + rng.expovariate(spec["rate"])) < spec["seconds"]:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            tasks.append(asyncio.create_task(send(n)))
            n += 1
        await asyncio.gather(*tasks)
    return summary(rows, spec["seconds"])


def summary(rows: list[tuple[int, float]], seconds: float) -> dict[str, Any]:
    good = sorted(ms for status, ms in rows if status == 200 and ms <= DEADLINE_MS)
    return {
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


async def clients(specs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    before = cpu_times()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.tenants", "--client", json.dumps(s), stdout=asyncio.subprocess.PIPE
        )
        for s in specs
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    if any(p.returncode for p in procs):
        raise RuntimeError("a client process failed")
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs], steal_pct(before, cpu_times())


def new_key(config: Path, redis_url: str, tenant: str) -> str:
    argv = [sys.executable, "-m", "ops", "keys", "create", "--tenant", tenant, "--config", str(config)]
    out = subprocess.run([*argv, "--redis-url", redis_url], check=True, capture_output=True, text=True).stdout
    return str(json.loads(out.strip().splitlines()[-1])["key"])


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    cap = capacity_per_s(settings)
    process, ready = start_stack(args.config)
    redis = Redis.from_url(ready["redis"])
    try:
        key_a, key_b = (new_key(args.config, ready["redis"], tenant) for tenant in ("tenant-a", "tenant-b"))
        key_b2 = new_key(args.config, ready["redis"], "tenant-b")
        light = {"name": "B", "url": ready["url"], "rate": 0.2 * cap, "seconds": args.seconds, "delay_s": 0.0}
        flood = {**light, "name": "A", "rate": 5 * cap, "seconds": args.seconds - 1, "delay_s": 1.0}
        phases = [
            ("B alone", [{**light, "key": key_b, "seed": 1}]),
            ("B + A, two tenants", [{**light, "key": key_b, "seed": 1}, {**flood, "key": key_a, "seed": 2}]),
            ("B + A, one tenant", [{**light, "key": key_b, "seed": 1}, {**flood, "key": key_b2, "seed": 2}]),
        ]
        offered = f"B offers {0.2 * cap:.0f}/s, A {5 * cap:.0f}/s"
        print(f"interactive capacity {cap:.0f}/s; {offered}; {args.seconds:g} s a phase")
        print("| phase | tenant | sent | ok | 429 | late | goodput/s | p50 ms | p99 ms | steal % |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, specs in phases:
            await drained(redis, settings)
            results, steal = await clients(specs)
            for spec, r in zip(specs, results, strict=True):
                row = (name, spec["name"], r["sent"], r["ok"], r["refused"], r["late"] + r["errors"])
                timings = (f"{r['goodput_per_s']:.1f}", _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(steal))
                print("| " + " | ".join(str(cell) for cell in (*row, *timings)) + " |", flush=True)
    finally:
        await redis.aclose()
        process.terminate()
        process.wait(timeout=30)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # a client process's spec
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("tenants.toml"))
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each phase")
    args = parser.parse_args()
    if args.client:
        spec = json.loads(args.client)
        print(json.dumps(uvloop.run(open_loop(spec))))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
