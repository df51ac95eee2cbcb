"""CPU and wall time of one command, one after another, through redis-py's client (its pool,
retry policy and timers) and through a `Line` of the same client (core/redis_line.py), against a
private redis-server: a PING, a request path's XREAD of a reply stream that has an entry, and a
per-tick write batch (one XADD and an XLEN, as one script run). The two ways alternate in rounds
of `--number` commands; the table holds each way's median over the rounds and the ratio.
Run: `python -m bench.redis_line [--number 5000] [--rounds 6]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop
from redis.asyncio import Redis

from core import protocol, redis_client
from core.redis_line import Lines
from core.redis_writes import ScriptedWrites
from core.settings import RedisSettings
from ops.embedded import EmbeddedRedis

STREAM = protocol.stream_key("interactive.default.instant")
REPLIES = protocol.reply_key("gw-bench")
Call = Callable[[], Awaitable[object]]


async def timed(call: Call, number: int) -> tuple[float, float]:
    """CPU µs and wall µs per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(number):
        await call()
    return (time.process_time() - cpu) / number * 1e6, (time.perf_counter() - wall) / number * 1e6


def write_batch(writes: ScriptedWrites) -> Call:
    async def call() -> object:
        batch = writes.batch()
        batch.execute_command("XADD", STREAM, "MAXLEN", "~", 1000, "*", protocol.PAYLOAD_FIELD, b"x" * 300)
        batch.execute_command("XLEN", STREAM)
        return await batch.execute()

    return call


async def ways(client: Redis) -> dict[str, dict[str, Call]]:
    line = await Lines(client, 1).take()
    assert line is not None
    await client.xadd(REPLIES, {protocol.PAYLOAD_FIELD: b"y" * 300})
    pooled_writes, line_writes = ScriptedWrites(client), ScriptedWrites(client, lines=1)
    await pooled_writes.load()
    return {
        "PING": {"client": lambda: client.ping(), "line": lambda: line.run([("PING",)])},
        "XREAD of one reply": {
            "client": lambda: client.xread({REPLIES: "0"}, count=100, block=1000),
            "line": lambda: line.run([("XREAD", "COUNT", 100, "BLOCK", 1000, "STREAMS", REPLIES, "0")], extra_s=1),
        },
        "XADD + XLEN as one script run": {"client": write_batch(pooled_writes), "line": write_batch(line_writes)},
    }


async def main(args: argparse.Namespace) -> None:
    embedded = EmbeddedRedis()
    url = embedded.start()
    client = redis_client.single_node(RedisSettings(), url)
    try:
        table = await ways(client)
        print(f"{args.number} commands one after another, {args.rounds} rounds; medians, µs per command\n")
        print("| command | client CPU | line CPU | CPU line/client | client wall | line wall |")
        print("|---|---|---|---|---|---|")
        for name, calls in table.items():
            samples: dict[str, list[tuple[float, float]]] = {way: [] for way in calls}
            for n in range(args.rounds):
                order = list(calls) if n % 2 == 0 else list(reversed(calls))
                for way in order:
                    await timed(calls[way], args.number // 10)  # warm-up
                    samples[way].append(await timed(calls[way], args.number))
            cpu = {way: statistics.median(s[0] for s in runs) for way, runs in samples.items()}
            wall = {way: statistics.median(s[1] for s in runs) for way, runs in samples.items()}
            ratios = [line[0] / client[0] for client, line in zip(samples["client"], samples["line"], strict=True)]
            spread = f"{min(ratios):.2f} to {max(ratios):.2f}"
            print(
                f"| {name} | {cpu['client']:.1f} | {cpu['line']:.1f} | {cpu['line'] / cpu['client']:.2f} ({spread})"
                f" | {wall['client']:.1f} | {wall['line']:.1f} |"
            )
    finally:
        await client.aclose()
        embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=5000, help="commands a round, each way")
    parser.add_argument("--rounds", type=int, default=6)
    uvloop.run(main(parser.parse_args()))
