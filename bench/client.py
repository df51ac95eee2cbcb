"""One tier's clients, in a process of their own, for bench/scenarios.py.

Clients of different tiers are different machines in a deployment. Sending every tier's load from
one event loop would make an overloaded tier's client delay the others' requests and inflate
their measured latency, so each tier gets its own process: it plays its phases open-loop from a
common start time and writes its recorder (HDR histograms) to stdout as MessagePack.
Run by bench.scenarios as `python -m bench.client --config PATH --url URL --tier T
--phases RATE:SECONDS[,...] --start-at EPOCH [--seed N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import uvloop

from core.settings import load_settings
from loadtest import schedule
from loadtest.runner import Target, play
from loadtest.schedule import Arrival
from loadtest.stats import Recorder


def arrivals(rates: dict[str, float], duration_s: float, start_s: float = 0.0, seed: int = 1) -> list[Arrival]:
    """Independent Poisson arrivals per tier at its own rate, starting at `start_s`."""
    merged: list[Arrival] = []
    for i, (tier, rate) in enumerate(rates.items()):
        if rate > 0:
            part = schedule.build(rate, duration_s, {tier: 1.0}, ("sim-echo",), seed=seed + i)
            merged += [replace(a, offset_s=a.offset_s + start_s) for a in part]
    return sorted(merged, key=lambda a: a.offset_s)


def phased(tier: str, phases: list[tuple[float, float]], seed: int) -> tuple[list[Arrival], float]:
    """Arrivals of `tier` through consecutive (rate, seconds) phases, and their total length."""
    planned: list[Arrival] = []
    start_s = 0.0
    for n, (rate, seconds) in enumerate(phases):
        planned += arrivals({tier: rate}, seconds, start_s, seed=seed + 10 * n)
        start_s += seconds
    return planned, start_s


def encode_phases(phases: list[tuple[float, float]]) -> str:
    return ",".join(f"{rate:g}:{seconds:g}" for rate, seconds in phases)


def decode_phases(text: str) -> list[tuple[float, float]]:
    return [(float(rate), float(seconds)) for rate, seconds in (part.split(":") for part in text.split(","))]


async def run(args: argparse.Namespace) -> Recorder:
    settings = load_settings(args.config)
    planned, duration_s = phased(args.tier, decode_phases(args.phases), args.seed)
    return await play(
        settings, Target(url=args.url), planned, duration_s, start_in_s=lambda: max(0.0, args.start_at - time.time())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tier", required=True)
    parser.add_argument("--phases", required=True, help="RATE:SECONDS[,RATE:SECONDS...]")
    parser.add_argument("--start-at", type=float, required=True, help="wall-clock start (time.time())")
    parser.add_argument("--seed", type=int, default=1)
    recorder = uvloop.run(run(parser.parse_args()))
    sys.stdout.buffer.write(msgspec.msgpack.encode(recorder.to_wire()))


if __name__ == "__main__":
    main()
