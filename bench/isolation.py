"""Where realtime latency goes when batch is overloaded: realtime requests sent one at a time
from this process, first with the stack idle, then while a separate `tiergate loadtest` process
offers batch load through HTTP, then the same load injected straight into Redis (`--direct`).
Prints client- and gateway-measured p50/p99 of the realtime requests for each phase.
Run: `python -m bench.isolation [--rate 300] [--probes 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

from bench.scenarios import start_stack

HERE = Path(__file__).resolve().parent


async def probe(url: str, count: int, gap_s: float = 0.03) -> list[tuple[float, float]]:
    """(client ms, gateway total_ms) of `count` realtime requests sent one after another."""
    seen = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            started = time.perf_counter()
            body = {"model": "sim-echo", "input": "x" * 64, "tier": "realtime"}
            async with http.post(f"{url}/v1/infer", json=body) as response:
                answer = await response.json()
            seen.append(((time.perf_counter() - started) * 1000, answer["timings"]["total_ms"]))
            await asyncio.sleep(gap_s)
    return seen


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def main_async(args: argparse.Namespace) -> None:
    process, url, redis_url = start_stack(args.config, with_redis=True)
    phases: dict[str, list[tuple[float, float]]] = {}
    try:
        phases["batch idle"] = await probe(url, args.probes)
        for name, target in (("batch via HTTP", ["--url", url]), ("batch via Redis", ["--direct", redis_url])):
            argv = [sys.executable, "-m", "gateway", "loadtest", "--config", str(args.config), *target]
            duration_s = args.probes * 0.04 + 3
            load = await asyncio.create_subprocess_exec(
                *argv, "--rate", str(args.rate), "--duration", f"{duration_s:g}s", "--mix", "batch=1", "--json",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(1)
            phases[name] = await probe(url, args.probes)
            await load.wait()
            await asyncio.sleep(3)  # let the batch backlog drain
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"\nrealtime requests one at a time; batch offered at {args.rate:g} req/s by a separate process\n")
    print(f"| {'phase':<16} | {'client p50':>10} | {'client p99':>10} | {'gateway p50':>11} | {'gateway p99':>11} |")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 12}|{'-' * 13}|{'-' * 13}|")
    for name, seen in phases.items():
        client, gateway = [c for c, _ in seen], [g for _, g in seen]
        print(
            f"| {name:<16} | {percentile(client, 50):>10.2f} | {percentile(client, 99):>10.2f} "
            f"| {percentile(gateway, 50):>11.2f} | {percentile(gateway, 99):>11.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "scenarios.toml")
    parser.add_argument("--rate", type=float, default=300.0, help="batch requests per second")
    parser.add_argument("--probes", type=int, default=200, help="realtime requests per phase")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
