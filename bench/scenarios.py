"""Tier isolation and admission under load, open-loop through HTTP against `tiergate up`.

First finds each tier's capacity alone (the highest rate of a doubling ramp at which the tier
meets its SLO objective), then prints per tier p50/p99/attainment/shed for: each tier alone at
50 % and 90 % of its capacity; batch at 3x its capacity with realtime and interactive at 50 %;
and a 10x burst for 5 s between two 5 s stretches at 50 %. Each tier's clients run in a process
of their own (bench/client.py), as they would on their own machines, and realtime's go to the
gateway `[gateway] tier_ports` gives it.

Then the isolation rounds: realtime at 50 % for longer, with batch idle, then with batch at 3x
sent to the main gateway while realtime uses its own gateway, then sharing the main gateway with
it; pooled over the rounds, realtime's p99 under the overload against its p99 with batch idle.
The host's steal time (the share of CPU time the hypervisor gave elsewhere) is printed for each
phase, since on a virtual machine it sets the floor of any tail latency.
Run: `python -m bench.scenarios [--config PATH] [--step-s 6] [--duration-s 10] [--rounds 2]`.
`python -m bench.scenarios overload|isolation|deterministic [flags]` runs the overload suites:
goodput and admitted-then-late past capacity, realtime under a batch flood through the one URL,
and the service-time spread of deterministic pools (bench/overload.py, bench/deterministic.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import subprocess
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from bench.client import arrivals, encode_phases
from core.settings import Settings, load_settings
from loadtest.runner import Target, objectives, play
from loadtest.stats import Recorder, merged, summary

TIERS = ("realtime", "interactive", "batch")


def start_stack(config: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`tiergate up` on `config`: the process and its ready line."""
    argv = [sys.executable, "-m", "ops", "up", "--port", "0", "--config", str(config), "--log-level", "WARNING"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            return process, json.loads(line)
    raise RuntimeError("tiergate up exited before it was ready")


def cpu_times() -> list[int]:
    """The machine's CPU time counters (user ... steal), or [] where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return []


def steal_pct(before: list[int], after: list[int]) -> float | None:
    if not before or not after:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return 100.0 * spent[7] / sum(spent) if sum(spent) else None


async def capacities(settings: Settings, urls: dict[str, str], step_s: float) -> dict[str, float]:
    """Each tier's capacity alone: the highest rate of a doubling ramp at which every request is
    answered, the SLO objective is met, and p99 stays under a second (a queue that keeps growing
    would meet a 30 s SLO for a while: it is not a rate the tier sustains)."""
    found = {}
    for tier in TIERS:
        slo = settings.tiers[tier].slo
        best, rate = 0.0, 25.0
        while rate <= 3200:
            recorder = await play(settings, Target(url=urls[tier]), arrivals({tier: rate}, step_s), step_s)
            row = summary(recorder, objectives(settings))["tiers"][tier]
            sustained = row["ok"] == row["sent"] and (row["p99_ms"] or 0) <= min(slo.latency_ms, 1000.0)
            if not (sustained and row["slo_met"]):
                break
            best, rate = rate, rate * 2
            await asyncio.sleep(1)
        found[tier] = best or 25.0
        print(f"capacity of {tier} alone: {found[tier]:g} req/s" + ("" if best else " (the lowest step missed)"))
    return found


async def run_clients(
    config: Path, urls: dict[str, str], phases: dict[str, list[tuple[float, float]]], seed: int = 1
) -> Recorder:
    """Each tier's phases from its own client process, all starting together; their recorders merged."""
    start_at = time.time() + 2.0  # after every client process has started and connected
    clients = []
    for i, (tier, tier_phases) in enumerate(phases.items()):
        argv = ["--config", str(config), "--url", urls[tier], "--tier", tier, "--phases", encode_phases(tier_phases)]
        argv += ["--start-at", f"{start_at:.3f}", "--seed", str(seed + 100 * i)]
        client = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.client", *argv, stdout=PIPE)
        clients.append(client)
    outputs = await asyncio.gather(*(client.communicate() for client in clients))
    if any(client.returncode for client in clients):
        raise RuntimeError("a client process failed")
    return merged(Recorder.from_wire(msgspec.msgpack.decode(out)) for out, _ in outputs)


def plans(cap: dict[str, float], duration_s: float) -> dict[str, dict[str, list[tuple[float, float]]]]:
    half = {tier: cap[tier] * 0.5 for tier in TIERS}
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for tier in TIERS:
        for share in (0.5, 0.9):
            out[f"{tier} alone at {share:.0%}"] = {tier: [(cap[tier] * share, duration_s)]}
    out["batch 3x, others 50%"] = {
        "realtime": [(half["realtime"], duration_s)],
        "interactive": [(half["interactive"], duration_s)],
        "batch": [(cap["batch"] * 3, duration_s)],
    }
    out["10x burst for 5 s"] = {tier: [(half[tier], 5), (half[tier] * 10, 5), (half[tier], 5)] for tier in TIERS}
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_rows(name: str, result: dict[str, Any], steal: float | None) -> None:
    for tier, row in result["tiers"].items():
        print(
            f"| {name:<24} | {tier:<11} | {row['sent']:>6} | {row['ok']:>6} | {row['shed']:>5} | {row['deadline']:>5} "
            f"| {fmt(row.get('p50_ms')):>7} | {fmt(row.get('p99_ms')):>7} "
            f"| {row['slo_attainment_pct'] or 0:>8.2f} | {'yes' if row['slo_met'] else 'no':>3} | {fmt(steal):>5} |",
            flush=True,
        )


async def drained(redis: Redis, settings: Settings, timeout_s: float = 180.0) -> None:
    """Wait until no request stream of the gateway's region holds a request (a backlog left by the last phase)."""
    keys = [lane.stream for lane in settings.lanes() if lane.region == settings.gateway.region]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.xlen(key)
        if sum(await pipe.execute()) == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the queues did not drain")


async def isolation(
    config: Path,
    settings: Settings,
    ready: dict[str, Any],
    redis: Redis,
    cap: dict[str, float],
    seconds: float,
    rounds: int,
) -> None:
    main_url, own_url = ready["url"], ready["tier_urls"]["realtime"]
    realtime = [(cap["realtime"] * 0.5, seconds)]
    overload = [(cap["batch"] * 3, seconds + 1)]
    phases = {
        "batch idle": (own_url, {}),
        "batch 3x, own gateway": (own_url, {"batch": overload}),
        "batch 3x, shared gateway": (main_url, {"batch": overload}),
    }
    pooled: dict[str, list[Recorder]] = {name: [] for name in phases}
    print(f"\nrealtime at {realtime[0][0]:g} req/s for {seconds:g} s; batch offered {overload[0][0]:g} req/s\n")
    print(f"| round | {'phase':<24} | {'sent':>5} | {'ok':>5} | {'p50 ms':>6} | {'p99 ms':>6} | {'p99.9 ms':>8} "
          f"| {'attained':>8} | {'steal %':>7} |")  # fmt: skip
    print(f"|-------|{'-' * 26}|-------|-------|--------|--------|----------|----------|---------|")
    for n in range(1, rounds + 1):
        for name, (realtime_url, others) in phases.items():
            urls = {"realtime": realtime_url, "batch": main_url}
            before = cpu_times()
            recorder = await run_clients(config, urls, {"realtime": realtime, **others}, seed=n)
            steal = steal_pct(before, cpu_times())
            pooled[name].append(recorder)
            row = summary(recorder, objectives(settings))["tiers"]["realtime"]
            print(
                f"| {n:>5} | {name:<24} | {row['sent']:>5} | {row['ok']:>5} | {fmt(row['p50_ms']):>6} "
                f"| {fmt(row['p99_ms']):>6} | {fmt(row['p99.9_ms']):>8} | {row['slo_attainment_pct']:>8.2f} "
                f"| {fmt(steal):>7} |",
                flush=True,
            )
            await drained(redis, settings)
    p99 = {
        name: summary(merged(parts), objectives(settings))["tiers"]["realtime"]["p99_ms"]
        for name, parts in pooled.items()
    }
    idle = p99["batch idle"]
    print(f"\nrealtime p99 over all rounds: batch idle {idle:.1f} ms", end="")
    for name in list(phases)[1:]:
        print(f"; {name} {p99[name]:.1f} ms ({p99[name] / idle:.2f}x)", end="")
    print(f"; SLO {settings.tiers['realtime'].slo.latency_ms:g} ms")


async def main_async(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    if "realtime" not in settings.gateway.tier_ports:
        raise SystemExit(f"{args.config}: the benchmark needs [gateway] tier_ports with a realtime entry")
    process, ready = start_stack(args.config)
    try:
        urls = {tier: ready["url"] for tier in TIERS} | {"realtime": ready["tier_urls"]["realtime"]}
        cap = await capacities(settings, urls, args.step_s)
        print(f"\n| {'scenario':<24} | {'tier':<11} | {'sent':>6} | {'ok':>6} | {'shed':>5} | {'late':>5} "
              f"| {'p50 ms':>7} | {'p99 ms':>7} | {'attained':>8} | {'SLO':>3} | steal |")  # fmt: skip
        print(
            f"|{'-' * 26}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 5}"
            f"|-------|"
        )
        redis = Redis.from_url(ready["redis"])
        try:
            for name, phases in plans(cap, args.duration_s).items():
                before = cpu_times()
                recorder = await run_clients(args.config, urls, phases)
                print_rows(name, summary(recorder, objectives(settings)), steal_pct(before, cpu_times()))
                await drained(redis, settings)
            if args.rounds:
                await isolation(args.config, settings, ready, redis, cap, args.isolation_s, args.rounds)
        finally:
            await redis.aclose()
    finally:
        process.terminate()
        process.wait(timeout=30)


# The overload suites, each in a module of its own: `python -m bench.scenarios SUITE [its flags]`.
SUITES = {
    "overload": ("bench.overload", []),  # goodput and admitted-then-late at 2x and 5x, deadlines 0.5 to 10 s
    "isolation": ("bench.overload", ["--isolation-rounds", "4"]),  # realtime under a batch flood, one URL
    "deterministic": ("bench.deterministic", []),  # service-time spread of each deterministic pool
}


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in SUITES:
        module, flags = SUITES[sys.argv[1]]
        sys.argv = [module, *flags, *sys.argv[2:]]
        importlib.import_module(module).main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("scenarios.toml"))
    parser.add_argument("--step-s", type=float, default=6.0, help="seconds per capacity ramp step")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--rounds", type=int, default=2, help="isolation rounds (0: none)")
    parser.add_argument("--isolation-s", type=float, default=15.0, help="seconds of each isolation phase")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
