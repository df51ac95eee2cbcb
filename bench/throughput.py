"""Throughput of tiergate's request path against the design floor, driven by `wrk`.

Rows: a bare aiohttp "hello"; a bare stream round trip (one XADD per request); the same with
XADDs pipelined per event-loop tick; tiergate's `POST /v1/infer` with a zero-latency processor
(gateway log level INFO and WARNING); and tiergate refusing requests with 429 (a full queue).
Each app is one process; Redis is a private redis-server.
Run: `python -m bench.throughput [--duration 10] [--connections 64]`. Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from ops.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
BODY = '{"model": "sim-echo", "input": "hello tiergate", "tier": "interactive"}'


def wrk(url: str, duration_s: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", script.name, f"{url}/v1/infer"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    Path(script.name).unlink()

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%"), "non2xx": float(errors.group(1)) if errors else 0.0}


def start(argv: list[str], ready: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=HERE.parent)
    assert process.stdout is not None
    for line in process.stdout:
        if ready in line:
            return process
    raise RuntimeError(f"{argv} exited before it was ready")


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def scenarios(redis_url: str) -> dict[str, list[list[str]]]:
    py = [sys.executable, "-m"]
    tiergate = [*py, "ops"]
    config = ["--config", str(HERE / "throughput.toml"), "--redis-url", redis_url]
    return {
        "aiohttp hello": [[*py, "bench.floor", "hello", "--port", "{port}"]],
        "bare stream round trip": [
            [*py, "bench.floor", "echo-worker", "--redis-url", redis_url],
            [*py, "bench.floor", "roundtrip", "--port", "{port}", "--redis-url", redis_url],
        ],
        "bare round trip, pipelined XADD": [
            [*py, "bench.floor", "echo-worker", "--redis-url", redis_url],
            [*py, "bench.floor", "roundtrip-pipelined", "--port", "{port}", "--redis-url", redis_url],
        ],
        "tiergate /v1/infer (log INFO)": [
            [*tiergate, "worker", "--pool", "instant", *config, "--log-level", "WARNING"],
            [*tiergate, "gateway", "--port", "{port}", *config, "--log-level", "INFO"],
        ],
        "tiergate 429 refusal (queue full)": [
            [
                *tiergate,
                "gateway",
                "--port",
                "{port}",
                "--config",
                str(HERE / "refusal.toml"),
                "--redis-url",
                redis_url,
                "--log-level",
                "WARNING",
            ],
        ],
        "tiergate /v1/infer (log WARNING)": [
            [*tiergate, "worker", "--pool", "instant", *config, "--log-level", "WARNING"],
            [*tiergate, "gateway", "--port", "{port}", *config, "--log-level", "WARNING"],
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    rows = []
    try:
        for name, commands in scenarios(redis_url).items():
            redis.Redis.from_url(redis_url).flushall()
            port = free_port()
            processes = []
            try:
                for argv in commands:
                    argv = [a.replace("{port}", str(port)) for a in argv]
                    processes.append(start(argv, "ready"))
                time.sleep(0.5)
                wrk(f"http://127.0.0.1:{port}", 2, args.connections)  # warm-up
                rows.append((name, wrk(f"http://127.0.0.1:{port}", args.duration, args.connections)))
            finally:
                stop(processes)
    finally:
        embedded.stop()
    hello = rows[0][1]["rps"]
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}\n")
    print(f"| {'scenario':<34} | {'req/s':>8} | {'x hello':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-2xx':>7} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, r in rows:
        print(
            f"| {name:<34} | {r['rps']:>8.0f} | {r['rps'] / hello:>7.2f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} "
            f"| {r['non2xx']:>7.0f} |"
        )


if __name__ == "__main__":
    main()
