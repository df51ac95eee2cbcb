"""Throughput of tiergate's request path against the design floor, driven by `wrk`.

Rows: a bare aiohttp "hello"; a bare stream round trip (one XADD per request); the same with
XADDs pipelined per event-loop tick; tiergate's `POST /v1/infer` with a zero-latency processor
(gateway log level INFO and WARNING); and tiergate refusing requests with 429 (a full queue).
Each app is one process; Redis is a private redis-server. Each row also prints the CPU time per
answered request of the app, its worker and redis-server (from /proc, over the measured run).
Run: `python -m bench.throughput [--duration 10] [--connections 64]`. Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
import os
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


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def measured(url: str, duration_s: int, connections: int, pids: dict[str, int]) -> dict[str, float]:
    """One wrk run, with the CPU µs per answered request of each process in `pids`."""
    before = {role: cpu_s(pid) for role, pid in pids.items()}
    result = wrk(url, duration_s, connections)
    requests = max(1.0, result["rps"] * duration_s)
    for role, pid in pids.items():
        result[f"cpu_{role}"] = (cpu_s(pid) - before[role]) / requests * 1e6
    return result


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
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
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
                url = f"http://127.0.0.1:{port}"
                wrk(url, 2, args.connections)  # warm-up
                pids = {"app": processes[-1].pid, "redis": redis_pid}
                if len(processes) > 1:
                    pids["worker"] = processes[0].pid
                rows.append((name, measured(url, args.duration, args.connections, pids)))
            finally:
                stop(processes)
    finally:
        embedded.stop()
    hello = rows[0][1]["rps"]
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}\n")
    print("CPU: µs of CPU per answered request of the app (gateway or floor app), its worker, and redis-server\n")
    head = ["scenario".ljust(34), "req/s".rjust(8), "x hello", " p50 ms", " p99 ms", "non-2xx"]
    head += ["app µs", "worker µs", "redis µs"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for name, r in rows:
        worker = f"{r['cpu_worker']:>9.0f}" if "cpu_worker" in r else " " * 9
        print(
            f"| {name:<34} | {r['rps']:>8.0f} | {r['rps'] / hello:>7.2f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} "
            f"| {r['non2xx']:>7.0f} | {r['cpu_app']:>6.0f} | {worker} | {r['cpu_redis']:>8.0f} |"
        )


if __name__ == "__main__":
    main()
