"""Tier isolation and admission under load, open-loop through HTTP against `tiergate up`.

First finds each tier's capacity alone (the highest rate of a doubling ramp at which the tier
meets its SLO objective), then prints per tier p50/p99/attainment/shed for: each tier alone at
50 % and 90 % of its capacity; batch at 3x its capacity with realtime and interactive at 50 %;
and a 10x burst for 5 s between two 5 s stretches at 50 %.
Run: `python -m bench.scenarios [--config PATH] [--step-s 6] [--duration-s 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.settings import Settings, load_settings
from loadtest import schedule
from loadtest.runner import Target, objectives, play
from loadtest.schedule import Arrival
from loadtest.stats import summary

TIERS = ("realtime", "interactive", "batch")


def start_stack(config: Path, with_redis: bool = False) -> Any:
    """`tiergate up` on `config`: (process, url), or (process, url, redis url) `with_redis`."""
    argv = [sys.executable, "-m", "gateway", "up", "--port", "0", "--config", str(config), "--log-level", "WARNING"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            ready = json.loads(line)
            return (process, ready["url"], ready["redis"]) if with_redis else (process, ready["url"])
    raise RuntimeError("tiergate up exited before it was ready")


def arrivals(rates: dict[str, float], duration_s: float, start_s: float = 0.0, seed: int = 1) -> list[Arrival]:
    """Independent Poisson arrivals per tier at its own rate, starting at `start_s`."""
    merged: list[Arrival] = []
    for i, (tier, rate) in enumerate(rates.items()):
        if rate > 0:
            part = schedule.build(rate, duration_s, {tier: 1.0}, ("sim-echo",), seed=seed + i)
            merged += [replace(a, offset_s=a.offset_s + start_s) for a in part]
    return sorted(merged, key=lambda a: a.offset_s)


async def capacities(settings: Settings, target: Target, step_s: float) -> dict[str, float]:
    """Each tier's capacity alone: the highest rate of a doubling ramp at which every request is
    answered, the SLO objective is met, and p99 stays under a second (a queue that keeps growing
    would meet a 30 s SLO for a while: it is not a rate the tier sustains)."""
    found = {}
    for tier in TIERS:
        slo = settings.tiers[tier].slo
        best, rate = 0.0, 25.0
        while rate <= 3200:
            recorder = await play(settings, Target(url=target.url), arrivals({tier: rate}, step_s), step_s)
            row = summary(recorder, objectives(settings))["tiers"][tier]
            sustained = row["ok"] == row["sent"] and (row["p99_ms"] or 0) <= min(slo.latency_ms, 1000.0)
            if not (sustained and row["slo_met"]):
                break
            best, rate = rate, rate * 2
            await asyncio.sleep(1)
        found[tier] = best or 25.0
        print(f"capacity of {tier} alone: {found[tier]:g} req/s" + ("" if best else " (the lowest step missed)"))
    return found


def plans(cap: dict[str, float], duration_s: float) -> dict[str, tuple[list[Arrival], float]]:
    half = {tier: cap[tier] * 0.5 for tier in TIERS}
    out: dict[str, tuple[list[Arrival], float]] = {}
    for tier in TIERS:
        for share in (0.5, 0.9):
            out[f"{tier} alone at {share:.0%}"] = (arrivals({tier: cap[tier] * share}, duration_s), duration_s)
    overload = {"realtime": half["realtime"], "interactive": half["interactive"], "batch": cap["batch"] * 3}
    out["batch 3x, others 50%"] = (arrivals(overload, duration_s), duration_s)
    burst = arrivals(half, 5) + arrivals({t: r * 10 for t, r in half.items()}, 5, 5, seed=11)
    burst += arrivals(half, 5, 10, seed=21)
    out["10x burst for 5 s"] = (sorted(burst, key=lambda a: a.offset_s), 15.0)
    return out


def print_table(name: str, result: dict) -> None:  # type: ignore[type-arg]
    for tier, row in result["tiers"].items():
        p50, p99 = row.get("p50_ms"), row.get("p99_ms")
        print(
            f"| {name:<24} | {tier:<11} | {row['sent']:>6} | {row['ok']:>6} | {row['shed']:>5} | {row['deadline']:>5} "
            f"| {p50 if p50 is None else round(p50, 1)!s:>7} | {p99 if p99 is None else round(p99, 1)!s:>7} "
            f"| {row['slo_attainment_pct'] or 0:>8.2f} | {'yes' if row['slo_met'] else 'no':>3} |",
            flush=True,
        )


async def main_async(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    process, url = start_stack(args.config)
    try:
        target = Target(url=url)
        cap = await capacities(settings, target, args.step_s)
        print(f"\n| {'scenario':<24} | {'tier':<11} | {'sent':>6} | {'ok':>6} | {'shed':>5} | {'late':>5} "
              f"| {'p50 ms':>7} | {'p99 ms':>7} | {'attained':>8} | {'SLO':>3} |")  # fmt: skip
        print(
            f"|{'-' * 26}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 5}|"
        )
        for name, (planned, duration_s) in plans(cap, args.duration_s).items():
            recorder = await play(settings, target, planned, duration_s)
            print_table(name, summary(recorder, objectives(settings)))
            await asyncio.sleep(2)  # let queues drain between scenarios
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("scenarios.toml"))
    parser.add_argument("--step-s", type=float, default=6.0, help="seconds per capacity ramp step")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per scenario")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
