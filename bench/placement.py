"""Cost-aware placement: where the interactive tier's requests run, and what they cost, under
each placement policy at a few steady rates.

For each policy it starts `tiergate up --port 0` on the default config with
`[tiers.interactive] placement` set, sends `sim-echo` requests at each rate for `--duration-s`
(open loop: a request is sent on schedule whether or not earlier ones were answered), and prints
each pool's share of the answers, the cost and energy per thousand requests, and the latency
percentiles the client measured. Run as `python -m bench.placement [--rates 50,400]`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.scenarios import start_stack
from core.settings import DEFAULT_CONFIG_PATH

POOLS = ("inferentia-mixed", "tpu-interactive", "h100-interactive")


def config_with(policy: str, folder: Path) -> Path:
    text = DEFAULT_CONFIG_PATH.read_text()
    text = re.sub(r"(\[tiers\.interactive\]\n)", rf'\1placement = "{policy}"\n', text, count=1)
    path = folder / f"placement-{policy}.toml"
    path.write_text(text)
    return path


async def one(http: aiohttp.ClientSession, url: str, i: int) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    async with http.post(f"{url}/v1/infer", json={"model": "sim-echo", "input": f"request {i:06d}"}) as response:
        body = await response.json()
        return response.status, body, (time.perf_counter() - started) * 1000.0


async def run_rate(url: str, rate: float, duration_s: float) -> list[tuple[int, dict[str, Any], float]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        for i in range(20):  # warm up: connections, worker heartbeats
            await one(http, url, -i)
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * duration_s)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, url, i)))
        return await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))] if ordered else float("nan")


def row(policy: str, rate: float, answers: list[tuple[int, dict[str, Any], float]]) -> list[str]:
    done = [(body, ms) for status, body, ms in answers if status == 200]
    share = {pool: sum(1 for body, _ in done if body["pool"] == pool) for pool in POOLS}
    total = max(1, len(done))
    cost = sum(body["cost"] for body, _ in done) / total * 1000
    energy = sum(body["energy_j"] for body, _ in done) / total * 1000
    latencies = [ms for _, ms in done]
    return [
        policy, f"{rate:g}", str(len(answers)), str(len(answers) - len(done)),
        *(f"{100.0 * share[pool] / total:.0f}%" for pool in POOLS),
        f"{cost * 1e6:.2f}", f"{energy:.4f}",
        f"{percentile(latencies, 50):.1f}", f"{percentile(latencies, 99):.1f}",
    ]  # fmt: skip


def print_table(rows: list[list[str]]) -> None:
    header = ["policy", "req/s", "sent", "failed", *POOLS, "µUSD/1k", "J/1k", "p50 ms", "p99 ms"]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="any,cheapest", help="comma-separated (default: any,cheapest)")
    parser.add_argument("--rates", default="50,400", help="requests a second, comma-separated (default: 50,400)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds at each rate (default: 10)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for policy in args.policies.split(","):
            process, ready = start_stack(config_with(policy, Path(folder)))
            try:
                for rate in (float(r) for r in args.rates.split(",")):
                    rows.append(row(policy, rate, asyncio.run(run_rate(ready["url"], rate, args.duration_s))))
            finally:
                process.terminate()
                process.wait(30)
    print_table(rows)


if __name__ == "__main__":
    main()
