"""What tracing costs the request path: `POST /v1/infer` with `[tracing]` off, on with every trace
sampled out, and on with every request traced and exported over OTLP/HTTP to a local sink that
answers 200; with `--before REV`, also tracing off in the tree of an older commit (a `git archive`
of REV), to check that the path without tracing is unchanged.

One gateway and one worker process on `bench/throughput.toml` (a processor that takes no time), a
private redis-server, `wrk` as in `bench/throughput.py`; rounds rotate which row goes first.
Run: `python -m bench.tracing [--rounds 3] [--duration 10] [--before REV]`.
`python -m bench.tracing spans` prints instead the time the spans of one request take, in this
process, with an exporter that drops them: the gateway's span, and the worker's two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from ops.embedded import EmbeddedRedis, free_port

from .throughput import BODY, HERE, stop, wrk

SINK = "sink"


def start_in(tree: Path, argv: list[str]) -> subprocess.Popen[str]:
    """`python -m ...` run from `tree` (so its own packages load), once it printed its ready line."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tree)
    assert process.stdout is not None
    for line in process.stdout:
        if "ready" in line:
            return process
    raise RuntimeError(f"{argv} exited before it was ready")


def measure(tree: Path, config: Path, redis_url: str, duration_s: int, connections: int) -> dict[str, float]:
    redis.Redis.from_url(redis_url).flushall()
    flags = ["--config", str(config), "--redis-url", redis_url, "--log-level", "WARNING"]
    port = free_port()
    tiergate = [sys.executable, "-m", "ops"]
    started: list[subprocess.Popen[str]] = []
    try:
        started.append(start_in(tree, [*tiergate, "worker", "--pool", "instant", *flags]))
        started.append(start_in(tree, [*tiergate, "gateway", "--port", str(port), *flags]))
        time.sleep(0.5)
        wrk(f"http://127.0.0.1:{port}", 2, connections)  # warm-up
        return wrk(f"http://127.0.0.1:{port}", duration_s, connections)
    finally:
        stop(started)


def configs(folder: Path, sink_url: str) -> dict[str, Path]:
    base = (HERE / "throughput.toml").read_text()
    rows = {
        "off": "",
        "on, sample_ratio 0": "[tracing]\nenabled = true\nsample_ratio = 0.0\n",
        "on, sample_ratio 1, OTLP/HTTP": f'[tracing]\nenabled = true\nendpoint = "{sink_url}"\n',
    }
    paths = {}
    for n, (name, tracing) in enumerate(rows.items()):
        paths[name] = folder / f"row{n}.toml"
        paths[name].write_text(base + "\n" + tracing)
    return paths


def serve_sink(port: int) -> None:
    """An OTLP/HTTP endpoint that takes every export and answers 200 (an empty response)."""
    from aiohttp import web

    async def take(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", take)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def span_costs(count: int = 20_000) -> None:
    """The time one request's spans take on each side (the SDK's own cost, export excluded), in one thread."""
    import msgspec
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from core import protocol
    from core.otel import OtelTracing
    from core.settings import TracingSettings

    class Dropped(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing = OtelTracing(TracingSettings(enabled=True), "bench", {}, exporter=Dropped())
    envelope = protocol.Envelope(
        id="0" * 32, model="sim-echo", input="hello", tier="interactive", region="default", reply_to="gw",
        deadline_at_ms=1,
    )  # fmt: skip
    result = protocol.Result(
        id="0" * 32, model="sim-echo", output="olleh", tier="interactive", processor="instant", pool="instant",
        worker="w", batch_size=1, enqueued_at_ms=1, queue_ms=1.0, service_ms=1.0, finished_at_ms=3, energy_j=0.0,
        cost=0.0,
    )  # fmt: skip
    began = time.perf_counter()
    for _ in range(count):
        span, traceparent = tracing.request("", envelope)
        span.end(result, None)
    gateway_s = time.perf_counter() - began
    done = [(msgspec.structs.replace(envelope, traceparent=traceparent), 1.0, result)]
    began = time.perf_counter()
    for _ in range(count):
        tracing.worked("instant", "w", done, 10.0)
    worker_s = time.perf_counter() - began
    tracing.close()
    print("\n| side    | spans per request | µs per request |\n|---------|---|---|")
    print(f"| gateway | 1 | {gateway_s / count * 1e6:.0f} |\n| worker  | 2 | {worker_s / count * 1e6:.0f} |")


def print_table(rows: dict[str, list[tuple[dict[str, float], float]]], args: argparse.Namespace) -> None:
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}, {args.rounds} rounds\n")
    head = ("tracing", "req/s (each round)", "median", "p99 ms (median)", "load 1m")
    print(f"| {head[0]:<34} | {head[1]:<24} | {head[2]:>6} | {head[3]:>15} | {head[4]:>14} |")
    print(f"|{'-' * 36}|{'-' * 26}|{'-' * 8}|{'-' * 17}|{'-' * 16}|")
    for name, results in rows.items():
        each = " ".join(f"{r['rps']:.0f}" for r, _ in results)
        loads = " ".join(f"{load:.1f}" for _, load in results)
        rps = statistics.median(r["rps"] for r, _ in results)
        p99 = statistics.median(r["p99"] for r, _ in results)
        print(f"| {name:<34} | {each:<24} | {rps:>6.0f} | {p99:>15.2f} | {loads:>14} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--before", default=None, help="also run tracing off in this commit's tree")
    args = parser.parse_args()
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    sink_port = free_port()
    sink = start_in(HERE.parent, [sys.executable, "-m", "bench.tracing", SINK, str(sink_port)])
    rows: dict[str, list[tuple[dict[str, float], float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = configs(Path(folder), f"http://127.0.0.1:{sink_port}/v1/traces")
        trees = {name: (HERE.parent, path) for name, path in paths.items()}
        if args.before:
            before = Path(folder) / "before"
            before.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=HERE.parent, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
            trees = {f"off, before tracing ({args.before})": (before, paths["off"]), **trees}
        try:
            for i in range(args.rounds):
                names = list(trees)
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    load_1m = os.getloadavg()[0]
                    result = measure(*trees[name], redis_url, args.duration, args.connections)
                    rows.setdefault(name, []).append((result, load_1m))
        finally:
            stop([sink])
            embedded.stop()
    print_table({name: rows[name] for name in trees}, args)


if __name__ == "__main__":
    if sys.argv[1:2] == [SINK]:
        serve_sink(int(sys.argv[2]))
    elif sys.argv[1:2] == ["spans"]:
        span_costs()
    else:
        main()
