"""The Batch API under mixed traffic: a 20,000-line chat batch runs on the batch tier while
realtime and interactive clients send open-loop traffic through the same `tiergate up`.

First realtime and interactive alone (the batch idle) for `--duration-s`, then the same traffic
again while the batch is uploaded, created and run; prints each phase's realtime and interactive
p50/p99, and the batch's lines per second beside the traffic, after it, and from its creation to
`completed` as the official SDK sees it (polling), with the adaptive pace's cuts by reason and the
host's load average and steal time, since other work on the machine skews every tail. Each tier's
clients run in a process of their own (bench/client.py). `--pace adaptive|fixed|both` sets
`[batches] pace` (both: a fixed run, then an adaptive one, each on a fresh stack, one table),
`--realtime-gateway` gives realtime a gateway process of its own (`[gateway] tier_ports`), and
`--max-lines-per-s N` sets the feeding bound (`[batches] max_lines_per_s`: the fixed rate, or the
adaptive pace's ceiling; 0 for none), all on a copy of the shipped default config. Run:
`python -m bench.batch_api [--lines 20000] [--duration-s 20] [--realtime-rps 100]
[--interactive-rps 100] [--realtime-gateway] [--max-lines-per-s N] [--pace both]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

from bench.scenarios import cpu_times, fmt, run_clients, start_stack, steal_pct
from core.settings import DEFAULT_CONFIG_PATH, load_settings
from loadtest.runner import objectives
from loadtest.stats import summary


def config_for(args: argparse.Namespace, pace: str, into: Path) -> Path:
    """The shipped default config with the benchmark's options applied (a copy in `into`)."""
    text = DEFAULT_CONFIG_PATH.read_text()
    keys = {"max_lines_per_s": f"{args.max_lines_per_s:g}", "pace": f'"{pace}"'}
    for key, value in keys.items():
        text, found = re.subn(rf"^{key} = \S+", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        assert found, f"{DEFAULT_CONFIG_PATH} no longer sets [batches] {key}"
    if args.realtime_gateway:
        old = "# tier_ports = { realtime = 8081 }"
        assert old in text, f"{DEFAULT_CONFIG_PATH} no longer holds {old!r}"
        text = text.replace(old, "tier_ports = { realtime = 0 }")
    path = into / f"batch_api_{pace}.toml"
    path.write_text(text)
    return path


def batch_file(lines: int) -> bytes:
    out = []
    for i in range(lines):
        body = {"model": "sim-echo", "messages": [{"role": "user", "content": f"batch line {i}: summarise this"}]}
        out.append(
            json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    return ("\n".join(out) + "\n").encode()


async def run_batch(url: str, data: bytes, lines: int, traffic_done: asyncio.Event) -> dict[str, Any]:
    """Upload `data`, create and poll a batch to its end; its final object, timings, and the lines
    it had done when the traffic beside it ended."""
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    started = time.perf_counter()
    uploaded = await sdk.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    created = time.perf_counter()
    beside: tuple[float, int] | None = None  # (seconds since created, lines done) as the traffic ended
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
        if beside is None and traffic_done.is_set():
            counts = batch.request_counts
            beside = (time.perf_counter() - created, counts.completed + counts.failed if counts else 0)
    ended = time.perf_counter()
    output = await sdk.files.content(batch.output_file_id) if batch.output_file_id else None
    answered = len(output.text.splitlines()) if output is not None else 0
    await sdk.close()
    return {
        "status": batch.status,
        "upload_s": created - started,
        "run_s": ended - created,
        "beside": beside or (ended - created, lines),
        "answered": answered,
        "failed": batch.request_counts.failed if batch.request_counts else None,
    }


async def pace_cuts(url: str) -> str:
    """The adaptive pace's cuts by reason, from the gateway's /metrics."""
    async with aiohttp.ClientSession() as client, client.get(f"{url}/metrics") as response:
        text = await response.text()
    cuts = re.findall(r'^tiergate_batch_pace_cuts_total\{reason="([^"]+)"\} (\S+)', text, flags=re.MULTILINE)
    return ", ".join(f"{reason} {float(n):.0f}" for reason, n in cuts) or "none"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def row(phase: str, result: dict[str, Any], steal: float | None) -> None:
    for tier in ("realtime", "interactive"):
        r = result["tiers"].get(tier)
        if r is None:
            continue
        print(
            f"| {phase:<22} | {tier:<11} | {r['sent']:>6} | {r['ok']:>6} | {fmt(r['p50_ms'], 2):>7} "
            f"| {fmt(r['p99_ms'], 2):>7} | {r['slo_attainment_pct'] or 0:>8.2f} | {fmt(steal):>7} | {load():>16} |",
            flush=True,
        )


def header() -> None:
    print(f"| {'phase':<22} | {'tier':<11} | {'sent':>6} | {'ok':>6} | {'p50 ms':>7} | {'p99 ms':>7} "
          f"| {'attained':>8} | {'steal %':>7} | {'load 1/5/15 min':>16} |")  # fmt: skip
    print(f"|{'-' * 24}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 18}|")


def batch_row(pace: str, batch: dict[str, Any], lines: int, cuts: str) -> str:
    beside_s, beside_lines = batch["beside"]
    after_s = batch["run_s"] - beside_s
    after = (batch["answered"] - beside_lines) / after_s if after_s > 0.5 else None
    total = batch["answered"] / batch["run_s"] if batch["run_s"] else 0.0
    return (
        f"| {pace:<8} | {batch['status']:<9} | {batch['answered']:>6} | {batch['failed'] or 0:>6} "
        f"| {beside_lines / beside_s if beside_s else 0:>13.0f} | {fmt(after, 0):>11} | {total:>7.0f} "
        f"| {batch['run_s']:>7.1f} | {cuts:<40} |"
    )


async def one_stack(args: argparse.Namespace, pace: str, config: Path) -> str:
    """The idle and batch phases on a fresh `tiergate up`; the batch's summary row."""
    settings = load_settings(config)
    process, ready = start_stack(config)
    try:
        urls = {"realtime": ready.get("tier_urls", {}).get("realtime", ready["url"]), "interactive": ready["url"]}
        traffic = {
            "realtime": [(args.realtime_rps, args.duration_s)],
            "interactive": [(args.interactive_rps, args.duration_s)],
        }
        before = cpu_times()
        alone = await run_clients(config, urls, traffic)
        row(f"batch idle ({pace})", summary(alone, objectives(settings)), steal_pct(before, cpu_times()))
        data = batch_file(args.lines)  # before the phase: writing the file is the client's work, not the stack's
        before = cpu_times()
        traffic_done = asyncio.Event()
        batch_task = asyncio.create_task(run_batch(ready["url"], data, args.lines, traffic_done))
        mixed = await run_clients(config, urls, traffic, seed=7)
        traffic_done.set()
        row(f"{args.lines} lines ({pace})", summary(mixed, objectives(settings)), steal_pct(before, cpu_times()))
        batch = await batch_task
        return batch_row(pace, batch, args.lines, await pace_cuts(ready["url"]) if pace == "adaptive" else "-")
    finally:
        process.terminate()
        process.wait(timeout=60)


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    own = "its own gateway" if args.realtime_gateway else "the gateway batch lines go through"
    bound = f"{args.max_lines_per_s:g} lines/s" if args.max_lines_per_s else "no bound"
    print(f"{os.cpu_count()} CPUs; load average before: {load()}; realtime on {own}; max_lines_per_s: {bound}")
    print(
        f"realtime {args.realtime_rps:g} req/s, interactive {args.interactive_rps:g} req/s, "
        f"{args.duration_s:g} s a phase\n"
    )
    header()
    paces = ["fixed", "adaptive"] if args.pace == "both" else [args.pace]
    batches = [await one_stack(args, pace, config_for(args, pace, tmp)) for pace in paces]
    print(f"\nbatch of {args.lines} lines; lines/s beside the traffic, after it, and from created to completed:\n")
    print(f"| {'pace':<8} | {'status':<9} | {'answered':>6} | {'failed':>6} | {'beside lines/s':>13} "
          f"| {'after lines/s':>11} | {'lines/s':>7} | {'run s':>7} | {'pace cuts by reason':<40} |")  # fmt: skip
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 8}|{'-' * 16}|{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 42}|")
    for line in batches:
        print(line)
    print(f"\nload average after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--realtime-rps", type=float, default=100.0)
    parser.add_argument("--interactive-rps", type=float, default=100.0)
    parser.add_argument("--realtime-gateway", action="store_true", help="realtime on a gateway of its own")
    parser.add_argument(
        "--max-lines-per-s",
        type=float,
        default=load_settings(environ={}).batches.max_lines_per_s,
        help="[batches] max_lines_per_s: the fixed rate, or the adaptive pace's ceiling (default as shipped; 0: none)",
    )
    parser.add_argument(
        "--pace", choices=("adaptive", "fixed", "both"), default="adaptive", help="[batches] pace; both: one run each"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
