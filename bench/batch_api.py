"""The Batch API under mixed traffic: a 20,000-line chat batch runs on the batch tier while
realtime and interactive clients send open-loop traffic through the same `tiergate up`.

First realtime and interactive alone (the batch idle) for `--duration-s`, then the same traffic
again while the batch is uploaded, created and run; prints each phase's realtime and interactive
p50/p99, and the batch's lines per second from its creation to `completed` as the official SDK
sees it (polling), with the host's load average and steal time, since other work on the machine
skews every tail. Each tier's clients run in a process of their own (bench/client.py).
`--realtime-gateway` gives realtime a gateway process of its own (`[gateway] tier_ports`), and
`--max-lines-per-s N` sets the batch's feeding bound (`[batches] max_lines_per_s`, 300 as shipped,
0 for none), both on a copy of
the shipped default config. Run: `python -m bench.batch_api [--lines 20000] [--duration-s 20]
[--realtime-rps 100] [--interactive-rps 100] [--realtime-gateway] [--max-lines-per-s N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from bench.scenarios import cpu_times, fmt, run_clients, start_stack, steal_pct
from core.settings import DEFAULT_CONFIG_PATH, load_settings
from loadtest.runner import objectives
from loadtest.stats import summary


def config_for(args: argparse.Namespace, into: Path) -> Path:
    """The shipped default config with the benchmark's options applied (a copy in `into`)."""
    text = DEFAULT_CONFIG_PATH.read_text()
    edits = {"max_lines_per_s = 300.0": f"max_lines_per_s = {args.max_lines_per_s}"}
    if args.realtime_gateway:
        edits["# tier_ports = { realtime = 8081 }"] = "tier_ports = { realtime = 0 }"
    for old, new in edits.items():
        assert old in text, f"{DEFAULT_CONFIG_PATH} no longer holds {old!r}"
        text = text.replace(old, new)
    path = into / "batch_api.toml"
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


async def run_batch(url: str, lines: int) -> dict[str, Any]:
    """Upload, create and poll a batch to its end; its final object and timings."""
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    data = batch_file(lines)
    started = time.perf_counter()
    uploaded = await sdk.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    created = time.perf_counter()
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    ended = time.perf_counter()
    output = await sdk.files.content(batch.output_file_id) if batch.output_file_id else None
    answered = len(output.text.splitlines()) if output is not None else 0
    await sdk.close()
    return {
        "status": batch.status,
        "upload_s": created - started,
        "run_s": ended - created,
        "answered": answered,
        "failed": batch.request_counts.failed if batch.request_counts else None,
    }


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def row(phase: str, result: dict[str, Any], steal: float | None) -> None:
    for tier in ("realtime", "interactive"):
        r = result["tiers"].get(tier)
        if r is None:
            continue
        print(
            f"| {phase:<18} | {tier:<11} | {r['sent']:>6} | {r['ok']:>6} | {fmt(r['p50_ms'], 2):>7} "
            f"| {fmt(r['p99_ms'], 2):>7} | {r['slo_attainment_pct'] or 0:>8.2f} | {fmt(steal):>7} | {load():>16} |",
            flush=True,
        )


async def main_async(args: argparse.Namespace, config: Path) -> None:
    settings = load_settings(config)
    process, ready = start_stack(config)
    try:
        urls = {"realtime": ready.get("tier_urls", {}).get("realtime", ready["url"]), "interactive": ready["url"]}
        traffic = {
            "realtime": [(args.realtime_rps, args.duration_s)],
            "interactive": [(args.interactive_rps, args.duration_s)],
        }
        own = "its own gateway" if args.realtime_gateway else "the gateway batch lines go through"
        bound = f"{args.max_lines_per_s:g} lines/s" if args.max_lines_per_s else "no bound"
        print(f"{os.cpu_count()} CPUs; load average before: {load()}; realtime on {own}; batch feeding: {bound}")
        print(
            f"realtime {args.realtime_rps:g} req/s, interactive {args.interactive_rps:g} req/s, "
            f"{args.duration_s:g} s a phase\n"
        )
        print(f"| {'phase':<18} | {'tier':<11} | {'sent':>6} | {'ok':>6} | {'p50 ms':>7} | {'p99 ms':>7} "
              f"| {'attained':>8} | {'steal %':>7} | {'load 1/5/15 min':>16} |")  # fmt: skip
        print(f"|{'-' * 20}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 18}|")
        before = cpu_times()
        alone = await run_clients(config, urls, traffic)
        row("batch idle", summary(alone, objectives(settings)), steal_pct(before, cpu_times()))
        before = cpu_times()
        batch_task = asyncio.create_task(run_batch(ready["url"], args.lines))
        mixed = await run_clients(config, urls, traffic, seed=7)
        row(f"{args.lines} lines", summary(mixed, objectives(settings)), steal_pct(before, cpu_times()))
        batch = await batch_task
        rate = batch["answered"] / batch["run_s"] if batch["run_s"] else 0.0
        print(
            f"\nbatch: {batch['status']}, {batch['answered']} of {args.lines} lines answered, "
            f"{batch['failed']} failed; "
            f"upload {batch['upload_s']:.2f} s, created to completed {batch['run_s']:.1f} s: {rate:.0f} lines/s; "
            f"load average after: {load()}"
        )
    finally:
        process.terminate()
        process.wait(timeout=60)


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
        default=300.0,
        help="[batches] max_lines_per_s (default 300, as shipped; 0: none)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, config_for(args, Path(tmp))))


if __name__ == "__main__":
    main()
