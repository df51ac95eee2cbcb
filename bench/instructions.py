"""Instructions per answered request of the gateway and the floor app, counted by callgrind.

CPU time on a shared host moves between runs by more than the differences worth finding (the
gateway's CPU ratio to the floor app's read 1.25x, 1.27x, 1.40x and 1.62x on four runs of one
design); the number of instructions a process executes for the same work does not: valgrind
counts them whatever else the host runs. Each row starts its app under `valgrind
--tool=callgrind` with instrumentation off (its worker and Redis run natively), warms it with
wrk, counts for `--idle` seconds with no load, then for `--duration` seconds of `wrk -c
CONNECTIONS`, and divides the instructions of the loaded window, less the idle rate's share (the
timers of background loops: under callgrind they weigh on each of the few requests answered a
second as they never do natively), by the requests answered in it. With `--old TREE` a third
row runs the gateway of another checkout (sharing this one's virtual environment), as
`bench.versions` does for CPU time; with `--info` another runs this gateway logging each request
(`--log-level INFO`, its lines written to /dev/null), for the log line's cost.

Instructions are not time: a cache miss costs more than an add, and the kernel's work (socket
calls, wake-ups) is not counted, so read the ratio beside `bench.throughput`'s CPU, not instead
of it. Under callgrind the app runs about fifty times slower than its worker, so at c=64 it is
the bottleneck, as the gateway is at c=64 natively, and each tick carries many requests.

    python -m bench.instructions --rounds 3 [--duration 20] [--connections 64] [--info] [--old ../tiergate-OLD]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench.throughput import BODY, FLOOR, TIERGATE, TIERGATE_INFO, scenarios, start, stop, wrk
from ops.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
OLD = "tiergate /v1/infer, --old tree"
WARM_S = 3


def answered(url: str, duration_s: float, connections: int) -> int:
    """Requests answered in `duration_s`; any that failed, or took 30 s, fails the run."""
    result = wrk(url, duration_s, connections, timeout_s=30)
    if result["non2xx"] or result["timeouts"]:
        raise RuntimeError(f"requests failed under callgrind: {result}")
    return int(result["requests"])


def callgrind(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True)


def counted(dump: Path) -> int:
    """The instructions one callgrind dump counted (its `totals:` line)."""
    match = re.search(r"^totals:\s+(\d+)", dump.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(match.group(1))


def run_row(argvs: list[list[str]], cwd: Path, redis_url: str, args: argparse.Namespace) -> dict[str, float]:
    """One row: the app (the last argv) under callgrind, the rest natively; its instructions per request."""
    redis.Redis.from_url(redis_url).flushall()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]
        processes = []
        try:
            for n, argv in enumerate(argvs):
                argv = [a.replace("{port}", str(port)) for a in argv]
                app = n == len(argvs) - 1
                processes.append(start([*valgrind, *argv] if app else argv, "ready", cwd))
            url = f"http://127.0.0.1:{port}"
            answered(url, WARM_S, args.connections)
            time.sleep(1)
            callgrind(processes[-1].pid, "--instr=on")
            time.sleep(args.idle)
            callgrind(processes[-1].pid, "--dump=idle")  # counting goes on from zero
            requests = answered(url, args.duration, args.connections)
            callgrind(processes[-1].pid, "--instr=off")
        finally:
            stop(processes)  # callgrind writes the loaded window's counts as the app exits
        idle_per_s = counted(Path(f"{out_file}.1")) / args.idle
        loaded = counted(out_file)
        return {
            "requests": requests,
            "ir_raw": loaded / requests,
            "idle_per_s": idle_per_s,
            "ir": (loaded - idle_per_s * args.duration) / requests,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds counted per row")
    parser.add_argument("--idle", type=int, default=10, help="seconds counted with no load, per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every row, alternating the order")
    parser.add_argument("--old", type=Path, default=None, help="another checkout whose gateway gets a row too")
    parser.add_argument("--info", action="store_true", help="a row for the gateway logging each request (INFO)")
    args = parser.parse_args()
    for tool in ("wrk", "valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install wrk valgrind)")
    embedded = EmbeddedRedis()
    redis_url = embedded.start()
    every = scenarios(redis_url)
    rows: dict[str, tuple[list[list[str]], Path]] = {
        FLOOR: (every[FLOOR], HERE.parent),
        TIERGATE: (every[TIERGATE], HERE.parent),
    }
    if args.info:
        rows[TIERGATE_INFO] = (every[TIERGATE_INFO], HERE.parent)
    if args.old is not None:
        rows[OLD] = (every[TIERGATE], args.old.resolve())
    names = list(rows)
    results: list[dict[str, dict[str, float]]] = []
    try:
        for n in range(args.rounds):
            order = names if n % 2 == 0 else names[::-1]
            results.append({name: run_row(*rows[name], redis_url, args) for name in order})
            time.sleep(0.5)
    finally:
        embedded.stop()
    print(f"\ncallgrind, wrk -t1 -c{args.connections} -d{args.duration}s, POST {BODY}: instructions per answered")
    print("request of the app process (gateway or floor app), less its idle rate; its worker and Redis not counted\n")
    head = ["scenario".ljust(34), "round", "requests", "idle instructions/s", "all/request", "instructions/request"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for name in names:
        for n, result in enumerate(results, 1):
            r = result[name]
            print(
                f"| {name:<34} | {n:>5} | {r['requests']:>8.0f} | {r['idle_per_s']:>19,.0f} "
                f"| {r['ir_raw']:>11,.0f} | {r['ir']:>20,.0f} |"
            )
        median = statistics.median(result[name]["ir"] for result in results)
        print(f"| {name:<34} | {'med.':>5} | {'':>8} | {'':>19} | {'':>11} | {median:>20,.0f} |")
    print()
    pairs = [(TIERGATE, FLOOR)]
    pairs += [(TIERGATE_INFO, TIERGATE)] if args.info else []
    pairs += [(TIERGATE, OLD)] if args.old is not None else []
    for top, bottom in pairs:
        each = [result[top]["ir"] / result[bottom]["ir"] for result in results]
        spread = ", ".join(f"{x:.3f}" for x in each)
        print(f"instructions/request: {top} / {bottom}: median {statistics.median(each):.3f} (rounds: {spread})")


if __name__ == "__main__":
    main()
