"""CPU and wall time of one call, one after another, through redis-py's client (its pool,
retry policy and timers) and through a `Line` of the same client (core/redis_line.py), against a
private redis-server: a PING, a request path's XREAD of a reply stream that has an entry, and the
write batches of the request path (core/redis_writes.py): a gateway's tick of one request (XADD
and XLEN), a worker's answer to one request (six commands) and its answer to a batch of 16 (36).
Through the client a batch is one script run; on a line a batch of up to `LINE_PIPELINE_MAX`
commands goes as plain commands, a larger one as the script. The two ways alternate in rounds of
`--number` calls; the table holds each way's median CPU of this process and of redis-server per
call, the ratio of their sums with its range over the rounds, and the wall time.
Run: `python -m bench.redis_line [--number 3000] [--rounds 6]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop
from redis.asyncio import Redis

from bench.throughput import cpu_s
from core import protocol, redis_client
from core.redis_line import Lines
from core.redis_writes import ScriptedWrites
from core.settings import RedisSettings
from ops.embedded import EmbeddedRedis

STREAM = protocol.stream_key("interactive.default.instant")
REPLIES = protocol.reply_key("gw-bench")
Call = Callable[[], Awaitable[object]]


async def timed(call: Call, number: int, redis_pid: int) -> tuple[float, float, float]:
    """This process's CPU µs, redis-server's CPU µs and wall µs per call."""
    cpu, redis_cpu, wall = time.process_time(), cpu_s(redis_pid), time.perf_counter()
    for _ in range(number):
        await call()
    per_call = 1e6 / number
    return (
        (time.process_time() - cpu) * per_call,
        (cpu_s(redis_pid) - redis_cpu) * per_call,
        (time.perf_counter() - wall) * per_call,
    )


def tick(writes: ScriptedWrites) -> Call:
    """A gateway's per-tick write of one request: its XADD and the stream's length."""

    async def call() -> object:
        batch = writes.batch()
        batch.execute_command("XADD", STREAM, "*", protocol.PAYLOAD_FIELD, b"x" * 300)
        batch.execute_command("XLEN", STREAM)
        return await batch.execute()

    return call


def answers(writes: ScriptedWrites, size: int) -> Call:
    """A worker's publish of a batch of `size`: each answer's reply XADD and result SET NX, then
    the reply stream's expiry, the audit entry, XACK and XDEL (workers/consumer.py)."""

    async def call() -> object:
        batch = writes.batch()
        for n in range(size):
            batch.execute_command("XADD", REPLIES, "MAXLEN", "~", 1000, "*", protocol.PAYLOAD_FIELD, b"y" * 300)
            batch.execute_command("SET", protocol.request_key(f"r{n}"), b"y" * 300, "EX", 60, "NX")
        batch.execute_command("PEXPIRE", REPLIES, 60_000)
        batch.execute_command("XADD", protocol.audit_key(), "MAXLEN", "~", 1000, "*", protocol.PAYLOAD_FIELD, b"z")
        batch.execute_command("XACK", STREAM, protocol.GROUP, *(f"1-{n}" for n in range(size)))
        batch.execute_command("XDEL", STREAM, *(f"1-{n}" for n in range(size)))
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
        "a tick of one request (2 commands)": {"client": tick(pooled_writes), "line": tick(line_writes)},
        "an answer to one request (6)": {"client": answers(pooled_writes, 1), "line": answers(line_writes, 1)},
        "answers to a batch of 16 (36)": {"client": answers(pooled_writes, 16), "line": answers(line_writes, 16)},
    }


async def main(args: argparse.Namespace) -> None:
    embedded = EmbeddedRedis()
    url = embedded.start()
    assert embedded._process is not None, "needs a redis-server, not fakeredis"
    redis_pid = embedded._process.pid
    client = redis_client.single_node(RedisSettings(), url)
    try:
        table = await ways(client)
        print(f"{args.number} calls one after another, {args.rounds} rounds, alternating; medians, µs per call\n")
        print(
            "| call | client: CPU | Redis CPU | line: CPU | Redis CPU | CPU line/client (range)"
            " | client wall | line wall |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, calls in table.items():
            samples: dict[str, list[tuple[float, float, float]]] = {way: [] for way in calls}
            for n in range(args.rounds):
                for way in list(calls) if n % 2 == 0 else list(reversed(calls)):
                    await timed(calls[way], args.number // 10, redis_pid)  # warm-up
                    samples[way].append(await timed(calls[way], args.number, redis_pid))
            med = {way: [statistics.median(s[i] for s in runs) for i in range(3)] for way, runs in samples.items()}
            ratios = [(b[0] + b[1]) / (a[0] + a[1]) for a, b in zip(samples["client"], samples["line"], strict=True)]
            ratio = (med["line"][0] + med["line"][1]) / (med["client"][0] + med["client"][1])
            old, new = med["client"], med["line"]
            print(
                f"| {name} | {old[0]:.1f} | {old[1]:.1f} | {new[0]:.1f} | {new[1]:.1f}"
                f" | {ratio:.2f} ({min(ratios):.2f} to {max(ratios):.2f}) | {old[2]:.1f} | {new[2]:.1f} |"
            )
    finally:
        await client.aclose()
        embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=3000, help="calls a round, each way")
    parser.add_argument("--rounds", type=int, default=6)
    uvloop.run(main(parser.parse_args()))
