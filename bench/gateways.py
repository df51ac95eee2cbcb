"""Throughput of one port served by one gateway process against two (`tiergate gateway --processes 2`).

Each round runs both, one after the other (which goes first alternates), each with one worker
process on `bench/throughput.toml` (a processor that takes no time) and a private redis-server,
driven by `wrk` as `bench/throughput.py` drives its rows; the table gives every round and the
median. Run: `python -m bench.gateways [--rounds 3] [--duration 10] [--connections 64]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from ops.embedded import EmbeddedRedis, free_port

from .throughput import BODY, HERE, start, stop, wrk


def measure(
    redis_url: str, processes: int, duration_s: int, connections: int, config_path: Path = HERE / "throughput.toml"
) -> dict[str, float]:
    """One row: a worker and `processes` gateway processes on one port, warmed up, then `wrk`."""
    redis.Redis.from_url(redis_url).flushall()
    config = ["--config", str(config_path), "--redis-url", redis_url, "--log-level", "WARNING"]
    port = free_port()
    tiergate = [sys.executable, "-m", "ops"]
    started: list[subprocess.Popen[str]] = []
    try:
        started.append(start([*tiergate, "worker", "--pool", "instant", *config], "ready"))
        gateway = [*tiergate, "gateway", "--port", str(port), "--processes", str(processes), *config]
        started.append(start(gateway, "ready"))
        time.sleep(0.5)
        wrk(f"http://127.0.0.1:{port}", 2, connections)  # warm-up
        return wrk(f"http://127.0.0.1:{port}", duration_s, connections)
    finally:
        stop(started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    rows: dict[int, list[tuple[dict[str, float], float]]] = {1: [], 2: []}
    try:
        for i in range(args.rounds):
            for processes in (1, 2) if i % 2 == 0 else (2, 1):
                load_1m = os.getloadavg()[0]
                rows[processes].append((measure(redis_url, processes, args.duration, args.connections), load_1m))
    finally:
        embedded.stop()
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}, {args.rounds} rounds\n")
    print(f"| {'gateway processes':<17} | {'round':>5} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
          f"{'non-2xx':>7} | {'load 1m':>7} |")  # fmt: skip
    print(f"|{'-' * 19}|{'-' * 7}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for processes, results in rows.items():
        for n, (r, load) in enumerate(results, 1):
            print(f"| {processes:<17} | {n:>5} | {r['rps']:>8.0f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} | "
                  f"{r['non2xx']:>7.0f} | {load:>7.2f} |")  # fmt: skip
        rps = [r["rps"] for r, _ in results]
        p99 = [r["p99"] for r, _ in results]
        print(f"| {processes:<17} | {'med':>5} | {statistics.median(rps):>8.0f} | {'':>7} | "
              f"{statistics.median(p99):>7.2f} | {'':>7} | {'':>7} |")  # fmt: skip


if __name__ == "__main__":
    main()
