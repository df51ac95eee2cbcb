"""Realtime while big Batch API files come in, through the one URL of `tiergate up`.

Realtime is sent open-loop at `--realtime-rps` from a client process of its own. Each round has
three phases of `--duration-s`: realtime alone; realtime while this process uploads files of each
size in `--sizes-mb` in turn (each deleted once stored); and realtime while batches are made, in
turn, of those files uploaded beforehand. A file's last line names another endpoint, so its batch
reads and judges the whole file and then fails, and no line of it runs: the phases measure taking
a file in, not running a batch. Prints, per phase, realtime's p50, p99 and worst latency (and
pooled over the rounds), the files taken in, their MB/s and the slowest one's seconds, and steal
time. Run: `python -m bench.batch_upload [--sizes-mb 10,30,100] [--rounds 2] [--duration-s 10]
[--realtime-rps 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import openai

from bench.scenarios import cpu_times, fmt, run_clients, start_stack, steal_pct
from core.settings import DEFAULT_CONFIG_PATH, load_settings
from loadtest.runner import objectives
from loadtest.stats import Recorder, merged, summary

IDLE, UPLOAD, JUDGE = "idle", "uploading", "judging"
PHASES = (IDLE, UPLOAD, JUDGE)
LINE_BYTES = 2_000  # a line of about this size: a 100 MB file stays within the 50,000 lines a batch may hold


def input_file(size_mb: float) -> bytes:
    """A chat batch file of about `size_mb` MB whose last line is for another endpoint."""
    filler = "x" * (LINE_BYTES - 160)
    lines, size, i = [], 0, 0
    while size < size_mb * 1_000_000:
        body = {"model": "sim-echo", "messages": [{"role": "user", "content": f"line {i} {filler}"}]}
        line = json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        lines.append(line)
        size += len(line) + 1
        i += 1
    lines[-1] = lines[-1].replace('"/v1/chat/completions"', '"/v1/embeddings"')
    return ("\n".join(lines) + "\n").encode()


async def upload(sdk: openai.AsyncOpenAI, data: bytes) -> str:
    return (await sdk.files.create(file=("upload.jsonl", data), purpose="batch")).id


async def judge(sdk: openai.AsyncOpenAI, file_id: str) -> None:
    """Make a batch of the file and wait for its validation to refuse it (its last line)."""
    batch = await sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status == "validating":
        await asyncio.sleep(0.05)
        batch = await sdk.batches.retrieve(batch.id)
    codes = [error.code for error in (batch.errors.data if batch.errors else [])]
    if batch.status != "failed" or "invalid_url" not in codes:
        raise RuntimeError(f"the batch ended {batch.status} with {batch.errors}, not failed on its last line's url")


async def take_in(
    sdk: openai.AsyncOpenAI, phase: str, files: list[bytes], stored: list[str], stop: asyncio.Event
) -> list[tuple[int, float]]:
    """Until `stop`, in turn: upload each file (and delete it), or judge each stored one; (bytes, s) of each."""
    done = []
    while not stop.is_set():
        for data, file_id in zip(files, stored, strict=True):
            started = time.perf_counter()
            if phase == UPLOAD:
                await sdk.files.delete(await upload(sdk, data))
            else:
                await judge(sdk, file_id)
            done.append((len(data), time.perf_counter() - started))
            if stop.is_set():
                break
    return done


async def main_async(args: argparse.Namespace) -> None:
    config = DEFAULT_CONFIG_PATH
    settings = load_settings(config)
    files = [input_file(float(size)) for size in args.sizes_mb.split(",")]  # the client's work: before any phase
    print(f"{os.cpu_count()} CPUs; realtime {args.realtime_rps:g} req/s; {args.rounds} rounds of {args.duration_s:g} s")
    print(f"files: {', '.join(f'{len(f) / 1e6:.1f} MB' for f in files)}, taken in turn during each phase but idle\n")
    header()
    process, ready = start_stack(config)
    sdk = openai.AsyncOpenAI(base_url=f"{ready['url']}/v1", api_key="unused", max_retries=0, timeout=120)
    pooled: dict[str, list[Recorder]] = {phase: [] for phase in PHASES}
    try:
        stored = [await upload(sdk, data) for data in files]  # judged again and again in the judging phase
        traffic = {"realtime": [(args.realtime_rps, args.duration_s)]}
        for n in range(1, args.rounds + 1):
            for phase in PHASES:
                before = cpu_times()
                stop = asyncio.Event()
                taking = asyncio.create_task(take_in(sdk, phase, files, stored, stop)) if phase != IDLE else None
                started = time.perf_counter()
                recorder = await run_clients(config, {"realtime": ready["url"]}, traffic, seed=n)
                stop.set()
                done = await taking if taking is not None else []
                elapsed = time.perf_counter() - started
                pooled[phase].append(recorder)
                result = summary(recorder, objectives(settings))
                row(str(n), phase, result, done, elapsed, steal_pct(before, cpu_times()))
        print()
        for phase, recorders in pooled.items():
            row("all", phase, summary(merged(recorders), objectives(settings)), [], 0.0, None)
    finally:
        await sdk.close()
        process.terminate()
        process.wait(timeout=60)


def header() -> None:
    print(f"| {'round':>5} | {'phase':<9} | {'sent':>5} | {'ok':>5} | {'p50 ms':>6} | {'p99 ms':>6} | {'max ms':>7} "
          f"| {'files':>5} | {'MB/s':>5} | {'worst s':>7} | {'steal %':>7} |")  # fmt: skip
    widths = (7, 11, 7, 7, 8, 8, 9, 7, 7, 9, 9)
    print("|" + "|".join("-" * width for width in widths) + "|")


def row(
    label: str, phase: str, result: dict[str, Any], done: list[tuple[int, float]], elapsed_s: float,
    steal: float | None,
) -> None:  # fmt: skip
    r = result["tiers"]["realtime"]
    rate = sum(size for size, _ in done) / 1e6 / elapsed_s if done else None
    worst = max((seconds for _, seconds in done), default=None)
    print(
        f"| {label:>5} | {phase:<9} | {r['sent']:>5} | {r['ok']:>5} "
        f"| {fmt(r['p50_ms'], 2):>6} | {fmt(r['p99_ms'], 2):>6} "
        f"| {fmt(r['max_ms'], 1):>7} | {len(done) if done else '-':>5} | {fmt(rate):>5} | {fmt(worst, 2):>7} "
        f"| {fmt(steal):>7} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="10,30,100", help="sizes of the files uploaded in turn, in MB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--realtime-rps", type=float, default=200.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
