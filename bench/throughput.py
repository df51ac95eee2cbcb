"""Throughput of tiergate's request path against the design floor, driven by `wrk`.

Rows: a bare aiohttp "hello"; a bare stream round trip (one XADD per request); the same with
XADDs pipelined per event-loop tick; tiergate's `POST /v1/infer` with a zero-latency processor
(gateway log level INFO and WARNING); and tiergate refusing requests with 429 (a full queue).
Each app is one process; Redis is a private redis-server. Each row also prints the CPU time and
the wake-ups per answered request of the app, its worker and redis-server (from /proc, over the
measured run).
With `--rounds N` every row runs N times, the order reversed every other round, and the table
holds each row's medians, followed by the ratios the request path is judged by, each with its
range over the rounds (on a shared host one round's noise is larger than these differences).
Run: `python -m bench.throughput [--duration 10] [--connections 64] [--rounds 1]`. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.scenarios import cpu_times, steal_pct
from ops.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
BODY = '{"model": "sim-echo", "input": "hello tiergate", "tier": "interactive"}'


def wrk(url: str, duration_s: float, connections: int, timeout_s: float = 2.0) -> dict[str, float]:
    """`wrk -t1` POSTing BODY for `duration_s`: req/s, p50 and p99 (ms), non-2xx answers, requests
    answered, and requests that took longer than `timeout_s` (wrk's socket timeouts)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", f"{timeout_s:g}s", "--latency",
             "-s", script.name, f"{url}/v1/infer"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        Path(script.name).unlink()

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    def count(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else 0.0

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms("50%"),
        "p99": ms("99%"),
        "non2xx": count(r"Non-2xx or 3xx responses: (\d+)"),
        "requests": count(r"(\d+) requests in"),
        "timeouts": count(r"Socket errors: .*timeout (\d+)"),
    }


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def runs(pid: int) -> int:
    """How many times the scheduler has put a process's main thread on a CPU (/proc/PID/schedstat,
    third field): its wake-ups, for an event loop that blocks in between."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])


def measured(url: str, duration_s: int, connections: int, pids: dict[str, int]) -> dict[str, float]:
    """One wrk run, with the CPU µs and the wake-ups per answered request of each process in `pids`."""
    before = {role: (cpu_s(pid), runs(pid)) for role, pid in pids.items()}
    host_before = cpu_times()
    result = wrk(url, duration_s, connections)
    result["steal"] = steal_pct(host_before, cpu_times()) or 0.0
    requests = max(1.0, result["rps"] * duration_s)
    for role, pid in pids.items():
        result[f"cpu_{role}"] = (cpu_s(pid) - before[role][0]) / requests * 1e6
        result[f"runs_{role}"] = (runs(pid) - before[role][1]) / requests
    return result


def start(argv: list[str], ready: str, cwd: Path = HERE.parent) -> subprocess.Popen[str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
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


def run_round(
    redis_url: str, redis_pid: int, names: list[str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Each scenario of `names` once, in that order: its wrk result and CPU per request."""
    rows = {}
    every = scenarios(redis_url)
    for name in names:
        redis.Redis.from_url(redis_url).flushall()
        port = free_port()
        processes = []
        try:
            for argv in every[name]:
                argv = [a.replace("{port}", str(port)) for a in argv]
                processes.append(start(argv, "ready"))
            time.sleep(0.5)
            url = f"http://127.0.0.1:{port}"
            wrk(url, 2, args.connections)  # warm-up
            pids = {"app": processes[-1].pid, "redis": redis_pid}
            if len(processes) > 1:
                pids["worker"] = processes[0].pid
            rows[name] = measured(url, args.duration, args.connections, pids)
        finally:
            stop(processes)
    return rows


TIERGATE, TIERGATE_INFO = "tiergate /v1/infer (log WARNING)", "tiergate /v1/infer (log INFO)"
FLOOR = "bare round trip, pipelined XADD"
# (label, numerator row, denominator row, measure): the ratios the request path's targets name
RATIOS = [
    ("req/s: tiergate (WARNING) / pipelined floor", TIERGATE, FLOOR, "rps"),
    ("req/s: tiergate at INFO / at WARNING", TIERGATE_INFO, TIERGATE, "rps"),
    ("gateway CPU/request / floor app's", TIERGATE, FLOOR, "cpu_app"),
    ("worker CPU/request / floor worker's", TIERGATE, FLOOR, "cpu_worker"),
    ("gateway wake-ups/request / floor app's", TIERGATE, FLOOR, "runs_app"),
    ("worker wake-ups/request / floor worker's", TIERGATE, FLOOR, "runs_worker"),
    ("redis wake-ups/request / floor's", TIERGATE, FLOOR, "runs_redis"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every row, alternating the order")
    parser.add_argument(
        "--targets", action="store_true", help="only the rows the targets compare: hello, the pipelined floor, tiergate"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    names = list(scenarios(redis_url))
    if args.targets:
        names = [name for name in names if name in ("aiohttp hello", FLOOR, TIERGATE, TIERGATE_INFO)]
    rounds = []
    try:
        for n in range(args.rounds):
            rounds.append(run_round(redis_url, redis_pid, names if n % 2 == 0 else names[::-1], args))
    finally:
        embedded.stop()
    rows = [(name, {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}) for name in names]
    hello = rows[0][1]["rps"]
    what = f"medians of {args.rounds} rounds" if args.rounds > 1 else "one round"
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}; {what}\n")
    print(
        "CPU: µs of CPU per answered request of the app (gateway or floor app), its worker, and redis-server;"
        " wake-ups: times each was put on a CPU per answered request, which unlike CPU time does not"
        " depend on the host's speed\n"
    )
    head = ["scenario".ljust(34), "req/s".rjust(8), "x hello", " p50 ms", " p99 ms", "non-2xx"]
    head += ["app µs", "worker µs", "redis µs", "app wake-ups", "worker wake-ups", "redis wake-ups", "steal %"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for name, r in rows:
        worker = f"{r['cpu_worker']:>9.0f}" if "cpu_worker" in r else " " * 9
        worker_runs = f"{r['runs_worker']:>15.2f}" if "runs_worker" in r else " " * 15
        print(
            f"| {name:<34} | {r['rps']:>8.0f} | {r['rps'] / hello:>7.2f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} "
            f"| {r['non2xx']:>7.0f} | {r['cpu_app']:>6.0f} | {worker} | {r['cpu_redis']:>8.0f} "
            f"| {r['runs_app']:>12.2f} | {worker_runs} | {r['runs_redis']:>14.2f} | {r['steal']:>7.1f} |"
        )
    worst = max(r[name]["steal"] for r in rounds for name in names)
    print(f"\nsteal: median per row above; at most {worst:.1f} % in any one run")
    print()
    for label, top, bottom, key in RATIOS:
        each = [r[top][key] / r[bottom][key] for r in rounds]
        spread = ", ".join(f"{x:.2f}" for x in each)
        print(f"{label}: median {statistics.median(each):.2f} (rounds: {spread})")


if __name__ == "__main__":
    main()
