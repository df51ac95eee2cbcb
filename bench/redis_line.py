"""CPU and wall time of one call, one after another, through redis-py's client (its pool,
retry policy and timers) and through a `Line` of the same client (core/redis_line.py), against a
private redis-server: a PING, a request path's XREAD of a reply stream that has an entry, and the
write batches of the request path (core/redis_writes.py): a gateway's tick of one request (XADD
and XLEN), a worker's answer to one request (six commands) and its answers to batches of 16 (36)
and 64 (132). Through the client a batch is one script run; on a line it goes as its commands,
and for the batches also as one script run on the same line (the second table), the way lines
sent a batch of more than eight commands before their replies were parsed in one pass. The ways
alternate in rounds of `--number` calls; the tables hold each way's median CPU of this process and
of redis-server per call, the ratio of their sums with its range over the rounds, and the wall time.
Run: `python -m bench.redis_line [--number 3000] [--rounds 6]`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from redis.asyncio import Redis

from bench.throughput import cpu_s
from core import protocol, redis_client
from core.redis_line import Line, Lines
from core.redis_writes import RUN_COMMANDS, ScriptedWrites
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


def answer_commands(size: int) -> list[tuple[Any, ...]]:
    """A worker's publish of a batch of `size`: each answer's reply XADD and result SET NX, then
    the reply stream's expiry, the audit entry, XACK and XDEL (workers/consumer.py)."""
    commands: list[tuple[Any, ...]] = []
    for n in range(size):
        commands.append(("XADD", REPLIES, "MAXLEN", "~", 1000, "*", protocol.PAYLOAD_FIELD, b"y" * 300))
        commands.append(("SET", protocol.request_key(f"r{n}"), b"y" * 300, "EX", 60, "NX"))
    commands.append(("PEXPIRE", REPLIES, 60_000))
    commands.append(("XADD", protocol.audit_key(), "MAXLEN", "~", 1000, "*", protocol.PAYLOAD_FIELD, b"z"))
    commands.append(("XACK", STREAM, protocol.GROUP, *(f"1-{n}" for n in range(size))))
    commands.append(("XDEL", STREAM, *(f"1-{n}" for n in range(size))))
    return commands


def answers(writes: ScriptedWrites, size: int) -> Call:
    async def call() -> object:
        batch = writes.batch()
        for command in answer_commands(size):
            batch.execute_command(*command)
        return await batch.execute()

    return call


def answers_scripted(line: Line, size: int) -> Call:
    """`answers` as one run of the batch script on `line`, as `core/redis_writes.Writes` builds it."""
    sha = hashlib.sha1(RUN_COMMANDS.encode()).hexdigest()

    async def call() -> object:
        commands = answer_commands(size)
        keys = list(dict.fromkeys(command[1] for command in commands))
        args = [arg for command in commands for arg in (len(command), *command)]
        (reply,) = await line.run([("EVALSHA", sha, len(keys), *keys, *args)])
        return reply

    return call


async def ways(client: Redis) -> dict[str, dict[str, Call]]:
    line, script_line = await Lines(client, 2).take(), await Lines(client, 2).take()
    assert line is not None and script_line is not None
    await client.xadd(REPLIES, {protocol.PAYLOAD_FIELD: b"y" * 300})
    pooled_writes, line_writes = ScriptedWrites(client), ScriptedWrites(client, lines=1)
    await pooled_writes.load()

    def batches(size: int) -> dict[str, Call]:
        return {
            "client": answers(pooled_writes, size),
            "line": answers(line_writes, size),
            "line, one script run": answers_scripted(script_line, size),
        }

    return {
        "PING": {"client": lambda: client.ping(), "line": lambda: line.run([("PING",)])},
        "XREAD of one reply": {
            "client": lambda: client.xread({REPLIES: "0"}, count=100, block=1000),
            "line": lambda: line.run([("XREAD", "COUNT", 100, "BLOCK", 1000, "STREAMS", REPLIES, "0")], extra_s=1),
        },
        "a tick of one request (2 commands)": {"client": tick(pooled_writes), "line": tick(line_writes)},
        "an answer to one request (6)": batches(1),
        "answers to a batch of 16 (36)": batches(16),
        "answers to a batch of 64 (132)": batches(64),
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
        medians = {}
        for name, calls in table.items():
            samples: dict[str, list[tuple[float, float, float]]] = {way: [] for way in calls}
            for n in range(args.rounds):
                for way in list(calls) if n % 2 == 0 else list(reversed(calls)):
                    await timed(calls[way], args.number // 10, redis_pid)  # warm-up
                    samples[way].append(await timed(calls[way], args.number, redis_pid))
            medians[name] = samples
        compare(medians, "client", "line", "CPU line/client")
        print()
        scripted = {name: samples for name, samples in medians.items() if "line, one script run" in samples}
        compare(scripted, "line, one script run", "line", "CPU as commands/as script")
    finally:
        await client.aclose()
        embedded.stop()


def compare(medians: dict[str, dict[str, list[tuple[float, float, float]]]], old: str, new: str, ratio: str) -> None:
    """A table of two ways of each call: CPU here and in Redis, their sums' ratio, wall time."""
    print(f"| call | {old}: CPU | Redis CPU | {new}: CPU | Redis CPU | {ratio} (range) | {old} wall | {new} wall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, samples in medians.items():
        med = {way: [statistics.median(s[i] for s in runs) for i in range(3)] for way, runs in samples.items()}
        ratios = [(b[0] + b[1]) / (a[0] + a[1]) for a, b in zip(samples[old], samples[new], strict=True)]
        a, b = med[old], med[new]
        print(
            f"| {name} | {a[0]:.1f} | {a[1]:.1f} | {b[0]:.1f} | {b[1]:.1f}"
            f" | {(b[0] + b[1]) / (a[0] + a[1]):.2f} ({min(ratios):.2f} to {max(ratios):.2f})"
            f" | {a[2]:.1f} | {b[2]:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=3000, help="calls a round, each way")
    parser.add_argument("--rounds", type=int, default=6)
    uvloop.run(main(parser.parse_args()))
