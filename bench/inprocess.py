"""Two ways of running one gateway, compared inside one saturated gateway process.

The gateway runs in this process (the application `tiergate gateway` serves, on
`bench/throughput.toml`, logging through tiergate's batched JSON handler to /dev/null); its worker
and a private redis-server run beside it, and `wrk -c64` keeps it saturated for the whole run. A
switch flips between two sides every `--segment-s` seconds (A, B, B, A, A, ...), and each segment
records the requests answered and this process's CPU time (its event loop and the log writer
thread); each A segment is compared with its neighbouring B one. Comparing within one process, over
many short alternating segments, leaves out what differs between two processes or two moments of
a shared host, which on a shared host is larger than the few per cent measured this way.
Used by `bench.log_cost` and `bench.metrics_cost`.
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
from collections.abc import Callable
from pathlib import Path

import uvloop
from aiohttp import ClientSession, ClientTimeout, web

from bench.scenarios import cpu_times, steal_pct
from bench.throughput import BODY
from core import logs
from core.heap import freeze_startup_heap
from core.settings import load_settings
from gateway.app import app_runner, build_app
from gateway.metrics import GatewayMetrics
from ops.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "throughput.toml"
# A bench's switch: given the running app, its sides (name -> how to switch to it), and how many
# requests have been answered so far.
Switch = Callable[[web.Application], tuple[dict[str, Callable[[], None]], Callable[[], float]]]


def answered(metrics: GatewayMetrics) -> float:
    """Answers counted by a gateway's own (loop-only) metrics."""
    return sum(bound.ok.value for bound in metrics._bound.values())


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_wrk(url: str, seconds: float, connections: int, script: Path) -> subprocess.Popen[bytes]:
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds) + 1}s", "-s", str(script), f"{url}/v1/infer"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def segments(
    sides: dict[str, Callable[[], None]], count: Callable[[], float], args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    """Each segment's requests per second and CPU µs per request, by side, ABBA."""
    rows: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for n in range(args.segments):
        side = list(sides)[(n + 1) // 2 % 2]  # A, B, B, A, A, ...
        sides[side]()
        await asyncio.sleep(0.2)  # the other side's requests in flight finish
        before, cpu, host, started = count(), cpu_s(), cpu_times(), time.perf_counter()
        await asyncio.sleep(args.segment_s)
        requests = count() - before
        rows[side].append(
            {
                "rps": requests / (time.perf_counter() - started),
                "cpu_us": (cpu_s() - cpu) / max(requests, 1.0) * 1e6,
                "steal": steal_pct(host, cpu_times()) or 0.0,
            }
        )
    return rows


async def run(redis_url: str, switch: Switch, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
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
        script = Path(tempfile.gettempdir()) / f"tiergate-inprocess-{os.getpid()}.lua"
        load = start_wrk(url, 2.0 + args.segments * (args.segment_s + 0.2), args.connections, script)
        await asyncio.sleep(2.0)  # warm-up
        sides, count = switch(app)
        return await segments(sides, count, args)
    finally:
        if load is not None:
            load.terminate()
            script.unlink(missing_ok=True)
        await runner.cleanup()


def measure(switch: Switch, args: argparse.Namespace, level: str = "INFO") -> dict[str, list[dict[str, float]]]:
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
            logs.configure(level)
            logging.getLogger().handlers[:] = [logs.BatchedHandler(sink)]
            try:
                return uvloop.run(run(redis_url, switch, args))
            finally:
                logging.getLogger().handlers[:] = []
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        server.stop()


def parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=40, help="segments in all, half on each side")
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    return parser


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace, what: str) -> None:
    print(f"\nwrk -t1 -c{args.connections}, {args.segments} segments of {args.segment_s:g} s, ABBA\n")
    print(f"| {what} | segments | req/s (median) | gateway CPU µs/request (median) | steal % (median) |")
    print("|---|---|---|---|---|")
    for side, got in rows.items():
        rps, cpu = (statistics.median(r[key] for r in got) for key in ("rps", "cpu_us"))
        print(f"| {side} | {len(got)} | {rps:.0f} | {cpu:.1f} | {statistics.median(r['steal'] for r in got):.1f} |")
    a, b = rows
    pairs = list(zip(rows[a], rows[b], strict=True))  # neighbours in time: each A segment beside a B one
    for key, label in (("rps", f"req/s: {a} / {b}"), ("cpu_us", f"CPU per request: {a} / {b}")):
        ratios = sorted(first[key] / second[key] for first, second in pairs)
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{label}: median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f} to {quartiles[2]:.3f})")
