"""Two checkouts of tiergate side by side on `bench/throughput.toml`: which request path costs
less? Each round runs `tiergate worker` and `tiergate gateway` of each checkout in turn (the order
reversed every other round) against one private redis-server, drives them with `wrk` for
`--duration` seconds, and prints req/s, p50, and per answered request the CPU µs of the gateway,
its worker and redis-server and the gateway's scheduler runs (wake-ups, from /proc/PID/schedstat), and the host's steal;
then each measure's medians and its new/old ratio in every round. Each checkout runs with its own
`.venv` (a link to this one will do when their dependencies match).
Run: `python -m bench.versions --old ../tiergate-old [--new .] [--rounds 4] [--connections 64] [--duration 5]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import redis

from bench.scenarios import cpu_times, steal_pct
from bench.throughput import measured, wrk
from bench.tracing import start_in
from ops.embedded import EmbeddedRedis, free_port

MEASURES = ("rps", "p50", "cpu_gateway", "cpu_worker", "cpu_redis", "runs_gateway")


def one(tree: Path, redis_url: str, redis_pid: int, args: argparse.Namespace) -> dict[str, float]:
    python = str(tree / ".venv" / "bin" / "python")
    config = ["--config", str(tree / "bench" / "throughput.toml"), "--redis-url", redis_url, "--log-level", "WARNING"]
    redis.Redis.from_url(redis_url).flushall()
    port = free_port()
    worker = start_in(tree, [python, "-m", "ops", "worker", "--pool", "instant", *config])
    gateway = start_in(tree, [python, "-m", "ops", "gateway", "--port", str(port), *config])
    try:
        url = f"http://127.0.0.1:{port}"
        time.sleep(0.5)
        wrk(url, 2, args.connections)  # warm-up
        host = cpu_times()
        row = measured(
            url, args.duration, args.connections, {"gateway": gateway.pid, "worker": worker.pid, "redis": redis_pid}
        )
        row["steal"] = steal_pct(host, cpu_times()) or 0.0
        return row
    finally:
        for process in (gateway, worker):
            process.terminate()
            process.wait(timeout=15)
            if process.stdout is not None:
                process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s; old: {trees['old']}, new: {trees['new']}\n")
    print("| round | tree | req/s | p50 ms | gateway µs | worker µs | redis µs | gateway runs | steal % |")
    print("|---" * 9 + "|")
    try:
        for n in range(args.rounds):
            for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                r = one(trees[name], redis_url, redis_pid, args)
                rows[name].append(r)
                print(
                    f"| {n + 1} | {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['cpu_gateway']:.0f} "
                    f"| {r['cpu_worker']:.0f} | {r['cpu_redis']:.0f} | {r['runs_gateway']:.2f} | {r['steal']:.1f} |",
                    flush=True,
                )
    finally:
        embedded.stop()
    print()
    for key in MEASURES:
        old, new = (statistics.median(r[key] for r in rows[name]) for name in ("old", "new"))
        ratios = [b[key] / a[key] for a, b in zip(rows["old"], rows["new"], strict=True)]
        spread = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{key}: old {old:.2f}, new {new:.2f}; new/old {statistics.median(ratios):.2f} (rounds: {spread})")


if __name__ == "__main__":
    main()
