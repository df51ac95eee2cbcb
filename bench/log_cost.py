"""What the per-request INFO log line costs a saturated gateway, measured inside one gateway process.

The gateway runs in this process (the application `tiergate gateway` serves, on
`bench/throughput.toml`, logging through tiergate's batched JSON handler to /dev/null); its worker
and a private redis-server run beside it, and `wrk -c64` keeps it saturated for the whole run. The
root log level flips between INFO (one JSON line per answered request) and WARNING every
`--segment-s` seconds (INFO, WARNING, WARNING, INFO, INFO, ...), and each segment records the
requests answered and this process's CPU time (its event loop and the log writer thread).
Comparing the two levels within one process, over many short alternating segments, leaves out
what differs between two processes or two moments of a shared host, which is larger than the few
per cent measured here. A log line costs far more in the gateway, among a request's other work,
than in a loop of log lines alone (`bench.log_line`).
Run: `python -m bench.log_cost [--segments 40] [--segment-s 2] [--connections 64]`. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from aiohttp import ClientSession, ClientTimeout, web

from bench.scenarios import cpu_times, steal_pct
from bench.throughput import BODY
from core import logs
from core.heap import freeze_startup_heap
from core.settings import load_settings
from gateway.app import app_runner, build_app
from gateway.metrics import METRICS, GatewayMetrics
from ops.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "throughput.toml"
LEVELS = ("INFO", "WARNING")


def answered(metrics: GatewayMetrics) -> float:
    return sum(bound.ok.value for bound in metrics._bound.values())


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_wrk(url: str, seconds: float, connections: int, script: Path) -> subprocess.Popen[bytes]:
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds) + 1}s", "-s", str(script), f"{url}/v1/infer"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def segments(metrics: GatewayMetrics, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Each segment's requests per second and CPU µs per request, by log level, ABBA."""
    rows: dict[str, list[dict[str, float]]] = {level: [] for level in LEVELS}
    for n in range(args.segments):
        level = LEVELS[(n + 1) // 2 % 2]  # INFO, WARNING, WARNING, INFO, INFO, ...
        logging.getLogger().setLevel(level)
        await asyncio.sleep(0.2)  # the other level's requests in flight finish
        count, cpu, host, started = answered(metrics), cpu_s(), cpu_times(), time.perf_counter()
        await asyncio.sleep(args.segment_s)
        requests = answered(metrics) - count
        rows[level].append(
            {
                "rps": requests / (time.perf_counter() - started),
                "cpu_us": (cpu_s() - cpu) / max(requests, 1.0) * 1e6,
                "steal": steal_pct(host, cpu_times()) or 0.0,
            }
        )
    return rows


async def run(redis_url: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    settings = load_settings(CONFIG)
    app = build_app(settings, redis_url)
    runner = app_runner(app, settings)  # as `tiergate gateway` runs it
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    load = None
    try:
        async with ClientSession() as session:  # the worker is up once a request is answered
            async with session.post(f"{url}/v1/infer", data=BODY, timeout=ClientTimeout(total=60)) as response:
                response.raise_for_status()
        freeze_startup_heap()  # as `tiergate gateway` does once it is ready
        script = Path(tempfile.gettempdir()) / f"tiergate-log-cost-{os.getpid()}.lua"
        load = start_wrk(url, 2.0 + args.segments * (args.segment_s + 0.2), args.connections, script)
        await asyncio.sleep(2.0)  # warm-up
        return await segments(app[METRICS], args)
    finally:
        if load is not None:
            load.terminate()
            script.unlink(missing_ok=True)
        await runner.cleanup()


def measure(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Redis, the worker and the log sink around one in-process gateway run."""
    server = EmbeddedRedis()
    redis_url = server.start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "ops", "worker", "--pool", "instant", "--config", str(CONFIG), "--redis-url", redis_url,
         "--log-level", "WARNING"],
        cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with open(os.devnull, "wb") as sink:
            logs.configure("INFO")
            logging.getLogger().handlers[:] = [logs.BatchedHandler(sink)]
            try:
                return uvloop.run(run(redis_url, args))
            finally:
                logging.getLogger().handlers[:] = []
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=40, help="segments in all, half at each level")
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    rows = measure(args)
    print(f"\nwrk -t1 -c{args.connections}, {args.segments} segments of {args.segment_s:g} s, ABBA\n")
    print("| level | segments | req/s (median) | gateway CPU µs/request (median) | steal % (median) |")
    print("|---|---|---|---|---|")
    for side, got in rows.items():
        rps, cpu = (statistics.median(r[key] for r in got) for key in ("rps", "cpu_us"))
        print(f"| {side} | {len(got)} | {rps:.0f} | {cpu:.1f} | {statistics.median(r['steal'] for r in got):.1f} |")
    pairs = list(zip(rows["INFO"], rows["WARNING"], strict=True))  # neighbours in time: each INFO beside a WARNING
    for key, label in (("rps", "req/s at INFO / at WARNING"), ("cpu_us", "CPU per request at INFO / at WARNING")):
        ratios = sorted(first[key] / second[key] for first, second in pairs)
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{label}: median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f} to {quartiles[2]:.3f})")


if __name__ == "__main__":
    main()
