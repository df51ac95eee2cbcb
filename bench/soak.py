"""Soak: does anything grow while `tiergate up` serves a steady load for ten minutes?

Starts `tiergate up` (the shipped default config unless --config) with a private Redis, measures
the capacity of the mixed load (a short ramp, unless --rate is given), then offers half of it for
--duration-s: Poisson arrivals spread evenly over the three tiers, 5 % of them OpenAI chat
streams and 5 % `"wait": false` requests polled to completion, from a client process of its own
(bench/soak_client.py) that checks every answer against its own request. Every second it samples
the RSS of each process of the stack, Redis's used_memory and key counts, the length of every
request and reply stream, and the host's steal (bench/soak_sample.py). At the end it prints each
measure's start, end and least-squares slope after the warm-up with a verdict, the longest
streams, the errors, wrong and lost answers, and writes a PNG plot and the samples as JSON.
Run: `python -m bench.soak [--duration-s 600] [--rate R] [--config PATH] [--out bench/out/soak]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.scenarios import drained, start_stack
from bench.soak_client import POLL_S
from bench.soak_plot import plot
from bench.soak_sample import Sampler, Series, slope_per_min, value_at
from core.settings import Settings, config_path, load_settings

TIERS = ("realtime", "interactive", "batch")
KIND_NAMES = {"infer": "infer", "stream": "chat stream", "async": f"wait: false (polled every {POLL_S:g} s)"}
LOAD_SHARE = 0.5  # of the measured capacity
RSS_LIMIT_PCT_PER_MIN = 0.25  # "no growth trend": a slope under this share of the RSS at the end of the warm-up
STREAM_BOUND_S = 2.0  # a stream is bounded when it never held more entries than this many seconds of arrivals


async def client(spec: dict[str, Any]) -> dict[str, Any]:
    """The load client process (bench/soak_client.py) on `spec`; its one JSON line."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak_client", json.dumps(spec), stdout=PIPE
    )
    out, _ = await child.communicate()
    if child.returncode:
        raise RuntimeError(f"the load client exited with {child.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def gateway_ids(urls: list[str]) -> list[str]:
    """Each gateway's id, which names its reply stream (`GET /readyz`)."""
    async with aiohttp.ClientSession() as session:
        ids = []
        for url in urls:
            async with session.get(f"{url}/readyz") as response:
                ids.append((await response.json())["gateway"])
        return ids


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def _drain(stream: Any) -> None:
    """Read what `tiergate up` still prints, so that a full pipe never blocks it."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


async def run(args: argparse.Namespace) -> int:
    config = config_path(args.config, environ={})  # the shipped default unless --config
    settings = load_settings(config)
    process, ready = start_stack(config)
    _drain(process.stdout)
    redis = Redis.from_url(ready["redis"])
    spec: dict[str, Any] = {
        "url": ready["url"],
        "config": str(config),
        "tiers": TIERS,
        "stream_share": args.stream_share,
        "async_share": args.async_share,
    }
    try:
        print(f"tiergate up on {config}: {ready['url']}, Redis {ready['redis']} ({ready['redis_kind']})", flush=True)
        rate, capacity = args.rate, None
        if rate is None:
            ramp = {
                "mode": "ramp",
                "start_rate": args.ramp_start,
                "factor": args.ramp_factor,
                "step_s": args.ramp_step_s,
                "max_rate": args.ramp_max,
            }
            capacity = (await client(spec | ramp))["capacity"]
            if capacity is None:
                raise SystemExit("soak: the lowest ramp step already failed; pass --rate")
            rate = capacity * LOAD_SHARE
            await drained(redis, settings)
        print(
            f"soak: {args.duration_s:g} s at {rate:g} req/s" + (f" (half of {capacity:g})" if capacity else ""),
            flush=True,
        )
        print(f"host load average before the soak: {_load()}", flush=True)  # other work on the machine skews it
        sampler = Sampler(redis, settings, process.pid, await gateway_ids([ready["url"], *ready["tier_urls"].values()]))
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            load = await client(spec | {"mode": "soak", "rate": rate, "duration_s": args.duration_s, "seed": args.seed})
        finally:
            stop.set()
            await sampling
        print(f"host load average at its end: {_load()}", flush=True)
    finally:
        await redis.aclose()
        process.terminate()
        process.wait(timeout=60)
    return report(args, settings, rate, capacity, load, sampler.series)


def report(
    args: argparse.Namespace, settings: Settings, rate: float, capacity: float | None, load: dict[str, Any], s: Series
) -> int:
    """Print the tables and verdicts, write the plot and the samples; 0 when every check passed."""
    failed = []
    print_load(load, args.duration_s)
    if load["errors"] or load["wrong"] or load["lost"]:
        failed.append("errors, wrong or lost answers")
    if s.restarts:
        failed.append("restarts: " + "; ".join(s.restarts))
    failed += print_processes(s, args.warmup_s)
    failed += print_redis(s, args.warmup_s, settings)
    failed += print_streams(s, rate)
    steals = [v for v in s.steal_pct if v is not None]
    if steals:
        print(f"\nsteal: mean {sum(steals) / len(steals):.1f} %, max {max(steals):.1f} % (per second, /proc/stat)")
    print(
        f"load client CPU: {load['client_cpu_s']:g} s in {args.duration_s:g} s "
        f"({100 * load['client_cpu_s'] / args.duration_s:.0f} % of one core)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(s, args.out / "soak.png", args.warmup_s)
    samples = {"rate": rate, "capacity": capacity, "load": load, "series": s.__dict__}
    (args.out / "soak.json").write_text(json.dumps(samples))
    print(f"plot: {png}; samples: {args.out / 'soak.json'}")
    print("\nverdict: " + ("PASS" if not failed else "FAIL: " + "; ".join(failed)))
    return 1 if failed else 0


def print_load(load: dict[str, Any], duration_s: float) -> None:
    kinds = ", ".join(f"{kind} {n}" for kind, n in load["kinds"].items())
    print(
        f"\nrequests: {load['sent']} in {duration_s:g} s ({kinds}); errors {load['errors']}, "
        f"wrong answers {load['wrong']}, lost {load['lost']}" + (f": {load['statuses']}" if load["errors"] else "")
    )
    print("\n| kind | tier | sent | ok | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|")
    for name, row in load["rows"].items():
        kind, tier = name.split(" ", 1)
        print(
            f"| {KIND_NAMES[kind]} | {tier} | {row['sent']} | {row['ok']} | {_f(row['p50_ms'])} "
            f"| {_f(row['p99_ms'])} | {_f(row['max_ms'])} |"
        )


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_processes(s: Series, warmup_s: float) -> list[str]:
    print(
        f"\nRSS; slope: least squares from {warmup_s:g} s on; no growth trend when the slope is under "
        f"{RSS_LIMIT_PCT_PER_MIN:g} % of the RSS at {warmup_s:g} s per minute "
        f"({RSS_LIMIT_PCT_PER_MIN * 60:g} % an hour)\n"
    )
    print(f"| process | start MiB | at {warmup_s:g} s MiB | end MiB | slope KiB/min | limit KiB/min | verdict |")
    print("|---|---|---|---|---|---|---|")
    failed = []
    for name, values in s.rss_kib.items():
        start = next((v for v in values if v is not None), None)
        base, end = value_at(s.t_s, values, warmup_s), next((v for v in reversed(values) if v is not None), None)
        slope = slope_per_min(s.t_s, values, warmup_s)
        limit = None if base is None else base * RSS_LIMIT_PCT_PER_MIN / 100
        ok = slope is not None and limit is not None and slope <= limit
        verdict = "no growth trend" if ok else "too few samples" if slope is None else "GROWING"
        if name == "redis-server":
            verdict = "judged by used_memory below"  # it holds the results until their TTL, by design
        elif not ok:
            failed.append(f"RSS of {name}")
        print(f"| {name} | {_mib(start)} | {_mib(base)} | {_mib(end)} | {_f(slope, 0)} | {_f(limit, 0)} | {verdict} |")
    return failed


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_redis(s: Series, warmup_s: float, settings: Settings) -> list[str]:
    """used_memory against the same limit; growth is accepted when it is keys with a TTL (results,
    kept `gateway.result_ttl_s`) while the keys without one stay as many."""
    used = [v // 1024 for v in s.redis["used_memory"]]
    persistent = [k - e for k, e in zip(s.redis["keys"], s.redis["expires"], strict=True)]
    expires = s.redis["expires"]
    slope, base = slope_per_min(s.t_s, list(used), warmup_s), value_at(s.t_s, list(used), warmup_s)
    limit = (base or 0) * RSS_LIMIT_PCT_PER_MIN / 100
    keys_slope = slope_per_min(s.t_s, list(expires), warmup_s) or 0.0
    print("\n| Redis | start | at warm-up | end | slope /min | limit /min |\n|---|---|---|---|---|---|")
    print(f"| used_memory KiB | {used[0]} | {base} | {used[-1]} | {_f(slope, 0)} | {limit:.0f} |")
    print(
        f"| keys with a TTL | {expires[0]} | {value_at(s.t_s, list(expires), warmup_s)} | {expires[-1]} "
        f"| {keys_slope:.0f} | - |"
    )
    base_persistent = value_at(s.t_s, list(persistent), warmup_s) or 0
    late_max = max((p for t, p in zip(s.t_s, persistent, strict=True) if t >= warmup_s), default=0)
    print(
        f"| keys without a TTL | {persistent[0]} | {base_persistent} | {persistent[-1]} | "
        f"{_f(slope_per_min(s.t_s, list(persistent), warmup_s), 1)} | max {late_max} after warm-up |"
    )
    if slope is None:
        return ["Redis: too few samples"]
    if slope <= limit:
        print("Redis used_memory: no growth trend")
        return []
    if late_max > base_persistent or keys_slope <= 0:
        print("Redis used_memory: GROWING, and not (only) with keys that expire")
        return ["Redis used_memory"]
    per_key = slope * 1024 / keys_slope
    plateau_mib = keys_slope * settings.gateway.result_ttl_s / 60 * per_key / 2**20
    print(
        f"Redis used_memory: grows only with keys that have a TTL ({per_key:.0f} B each, {keys_slope:.0f} a "
        f"minute; results are kept result_ttl_s = {settings.gateway.result_ttl_s} s, so it levels off about "
        f"{plateau_mib:.0f} MiB above its start after that); keys without a TTL: no more than at warm-up"
    )
    return []


def print_streams(s: Series, rate: float) -> list[str]:
    bound = max(1, round(rate * STREAM_BOUND_S))
    print(f"\nstream lengths (bounded: never over {STREAM_BOUND_S:g} s of the offered load, {bound} entries)\n")
    print("| stream | max | end | verdict |\n|---|---|---|---|")
    failed = []
    for key, lengths in (s.streams | s.replies).items():
        ok = max(lengths) <= bound
        failed += [] if ok else [f"stream {key}"]
        print(f"| `{key}` | {max(lengths)} | {lengths[-1]} | {'bounded' if ok else 'OVER'} |")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=None, help="req/s over all tiers (skips the capacity ramp)")
    parser.add_argument("--config", type=Path, default=None, help="default: the shipped core/default.toml")
    parser.add_argument("--out", type=Path, default=Path("bench/out/soak"), help="plot and samples go here")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="slopes are fitted from here on")
    parser.add_argument("--stream-share", type=float, default=0.05, help="share of OpenAI chat streams")
    parser.add_argument("--async-share", type=float, default=0.05, help='share of "wait": false requests')
    parser.add_argument("--ramp-start", type=float, default=25.0, help="req/s of the ramp's first step")
    parser.add_argument("--ramp-factor", type=float, default=1.5, help="each ramp step's rate over the last")
    parser.add_argument("--ramp-step-s", type=float, default=5.0, help="seconds per ramp step")
    parser.add_argument("--ramp-max", type=float, default=2000.0, help="req/s at which the ramp stops")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
