"""The worker's own CPU per batch and per answer, without a model's cost: one worker process of
a pool, run in this process against a private redis-server, answers `--requests` requests at
each `max_batch`: queued all at once (a backlog: full batches), or one at a time at `--rate` a
second from a process of its own (batches fill while the one before runs, as under real load).

Pool `minilm` (config/local.toml) runs its real backend with the forward pass replaced by one
that sleeps `--forward-ms` (no CPU) and hands back a fixed 384-dimension vector per text, so that
what is left is the worker's own work (reading, decoding, the thread hand-off, building, encoding
and publishing replies); a simulated pool runs its own backend, whose service time is a sleep.
Per setting (the least CPU of `--repeat` runs): batches run, the worker's CPU per batch and per
answer (its process's CPU less the forward thread's), and redis-server's CPU per answer (INFO
cpu); then a least-squares fit of the worker's CPU per batch as a fixed part plus a part per
answer. `--profile FILE` writes a cProfile of the last setting. The load average is printed:
on a shared host compare runs taken together.
Run: `python -m bench.worker_cpu [--pool minilm] [--batches 1,8,32] [--requests 4000] [--repeat 3]
[--rate 150 --forward-ms 15,5.5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import random
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

from bench.embeddings import texts
from core import protocol
from core.settings import Settings, parse_settings
from ops.embedded import EmbeddedRedis
from workers import process as worker_process
from workers.backends import Backend, make_backend

CONFIG = Path(__file__).resolve().parent.parent / "config" / "local.toml"
DIMENSIONS = 384
TOKENS = 14  # what a sentence of bench.embeddings' counts
GATEWAY = "bench-worker-cpu"


def settings_with(pool: str, max_batch: int) -> Settings:
    raw = tomllib.loads(CONFIG.read_text())
    raw["pools"][pool]["max_batch"] = max_batch
    return parse_settings(raw)


def instant_backend(settings: Settings, pool: str, forward_ms: tuple[float, float]) -> Backend:
    """Pool `minilm`'s own backend with a forward pass that costs no CPU: the same hand-off to
    its thread, the same completions, a fixed vector per text, after sleeping `forward_ms` (a
    fixed part, and a part per text) as the model would take."""
    from workers.backends import local

    vector = [((n * 7919) % 1000 - 500) / 12_000.0 for n in range(DIMENSIONS)]
    for name in local._LOADERS:
        local._loaded[name] = None  # nothing to load: the forward pass below never uses it
    local.set_threads = lambda threads: None  # nor torch to import

    class Instant(local.LocalBackend):
        def _forward(self, inputs: list[str]) -> tuple[list[list[float]], list[int]]:
            start_s, start_cpu_s = time.perf_counter(), time.thread_time()
            time.sleep((forward_ms[0] + forward_ms[1] * len(inputs)) / 1000)
            vectors = [list(vector) for _ in inputs]  # fresh lists, as tolist() makes them
            self._spent_s = [
                self._spent_s[0] + time.perf_counter() - start_s,
                self._spent_s[1] + time.thread_time() - start_cpu_s,
            ]
            return vectors, [TOKENS] * len(inputs)

    return Instant(settings, pool)


def backend_for(pool: str, forward_ms: tuple[float, float]) -> Callable[[Settings, str], Backend]:
    if pool == "minilm":
        return lambda settings, name: instant_backend(settings, name, forward_ms)
    return make_backend


async def feed(url: str, pool: str, count: int, rate: float) -> None:
    """`count` requests queued on the pool's first stream, due long after the run: all at once
    (`rate` 0), or one at a time at Poisson arrivals of `rate` a second, as gateways queue them."""
    client = redis.asyncio.Redis.from_url(url)
    lane = next(lane for lane in settings_with(pool, 1).lanes() if pool in lane.pools)
    model = settings_with(pool, 1).pools[pool].models[0]
    seconds, _ = await client.time()  # type: ignore[misc]
    deadline_ms = (int(seconds) + 3600) * 1000
    payloads = [
        protocol.encoder.encode(protocol.Envelope(
            id=protocol.new_request_id(), model=model, input=text, tier=lane.tier, region=lane.region,
            reply_to=GATEWAY, deadline_at_ms=deadline_ms,
        ))
        for text in texts(count)
    ]  # fmt: skip
    if rate <= 0:
        pipe = client.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(lane.stream, {protocol.PAYLOAD_FIELD: payload})
        await pipe.execute()
    else:
        rng, start, at = random.Random(7), time.perf_counter(), 0.0
        for payload in payloads:
            at += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            await client.xadd(lane.stream, {protocol.PAYLOAD_FIELD: payload})
    await client.aclose()


async def feeder(url: str, pool: str, count: int, rate: float) -> asyncio.subprocess.Process:
    """`feed` in a process of its own, so that its CPU is not the worker's."""
    spec = json.dumps({"url": url, "pool": pool, "count": count, "rate": rate})
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.worker_cpu", "--feed", spec)


async def redis_cpu_s(client: redis.asyncio.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Row:
    max_batch: int
    batches: int
    answers: int
    own_s: float  # the worker process's CPU less the forward thread's
    redis_s: float

    @property
    def batch_ms(self) -> float:
        return self.own_s / max(self.batches, 1) * 1000

    @property
    def answer_ms(self) -> float:
        return self.own_s / max(self.answers, 1) * 1000


async def one_setting(url: str, args: argparse.Namespace, max_batch: int, profile: cProfile.Profile | None) -> Row:
    pool, count = args.pool, args.requests
    settings = settings_with(pool, max_batch)
    client = redis.asyncio.Redis.from_url(url)
    await client.flushall()
    if not args.rate:
        await feed(url, pool, count, 0.0)
    forward_ms = tuple(float(part) for part in args.forward_ms.split(","))
    worker_process.make_backend = backend_for(pool, (forward_ms[0], forward_ms[1]))  # type: ignore[assignment]
    ready = asyncio.Event()
    worker = worker_process.WorkerProcess(settings, pool, url, ready=lambda **_: ready.set())
    answered, batches = 0, 0
    done = asyncio.Event()
    publish = worker._publish

    async def counted(replies: list[tuple[Any, protocol.Reply]]) -> None:
        nonlocal answered, batches
        await publish(replies)
        answered, batches = answered + len(replies), batches + 1
        if answered >= count:
            done.set()

    def forward_cpu_s() -> float:
        return worker.model_clock.model_seconds()[1] if worker.model_clock is not None else 0.0

    worker._publish = counted  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    await ready.wait()
    arrivals = await feeder(url, pool, count, args.rate) if args.rate else None
    cpu_before, forward_before = time.process_time(), forward_cpu_s()
    redis_before = await redis_cpu_s(client)
    if profile is not None:
        profile.enable()
    await done.wait()
    if profile is not None:
        profile.disable()
    own_s = time.process_time() - cpu_before - (forward_cpu_s() - forward_before)
    redis_s = await redis_cpu_s(client) - redis_before
    worker.stop()
    await running
    if arrivals is not None:
        await arrivals.wait()
    await client.aclose()
    return Row(max_batch, batches, answered, own_s, redis_s)


def fit(rows: list[Row]) -> tuple[float, float]:
    """Least squares: the worker's CPU per batch (ms) = fixed + per answer x mean batch size."""
    xs = [row.answers / max(row.batches, 1) for row in rows]
    ys = [row.batch_ms for row in rows]
    n, mx, my = len(rows), sum(xs) / len(rows), sum(ys) / len(rows)
    spread = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if n > 1 and spread else 0.0
    return my - slope * mx, slope


def print_table(pool: str, rows: list[Row]) -> None:
    print()
    print(f"pool {pool}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} CPUs")
    print("| max_batch | batches | mean batch | worker's own CPU per batch | per answer"
          " | redis-server CPU per answer |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.max_batch} | {row.batches} | {row.answers / max(row.batches, 1):.1f} | {row.batch_ms:.3f} ms"
            f" | {row.answer_ms:.3f} ms | {row.redis_s / max(row.answers, 1) * 1000:.3f} ms |"
        )
    if len(rows) > 1:
        fixed, per_answer = fit(rows)
        print(f"\nworker's own CPU per batch = {fixed:.3f} ms + {per_answer:.3f} ms per answer (least squares)")


async def run(args: argparse.Namespace) -> None:
    server = EmbeddedRedis()
    url = server.start()
    rows = []
    sizes = [int(b) for b in args.batches.split(",")]
    try:
        for n, size in enumerate(sizes):
            profile = cProfile.Profile() if args.profile and n == len(sizes) - 1 else None
            runs = [await one_setting(url, args, size, profile) for _ in range(args.repeat)]
            rows.append(min(runs, key=lambda row: row.own_s))
            spread = ", ".join(f"{run.batch_ms:.3f}" for run in runs)
            print(f"max_batch {size}: {spread} ms a batch (the least is kept)", flush=True)
            if profile is not None:
                profile.dump_stats(args.profile)
    finally:
        server.stop()
    print_table(args.pool, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--pool", default="minilm", help="a pool of config/local.toml")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each setting: the least CPU is kept")
    parser.add_argument("--profile", default="", help="write a cProfile of the last setting to this file")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests a second, one at a time (0: all queued first)"
    )
    parser.add_argument(
        "--forward-ms", default="0,0", help="minilm: the forward pass's time, fixed,per text (e.g. 15,5.5; no CPU)"
    )
    parser.add_argument("--feed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        spec = json.loads(args.feed)
        asyncio.run(feed(spec["url"], spec["pool"], spec["count"], spec["rate"]))
        return
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
