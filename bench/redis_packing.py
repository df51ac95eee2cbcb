"""CPU to pack one Redis command: redis-py's asyncio packer (Python) against the connections
`core/redis_client.single_node` builds (hiredis, in C), for the commands of the request path.
Run: `python -m bench.redis_packing [--number 100000]`.
"""

from __future__ import annotations

import argparse
import timeit

from redis.asyncio.connection import Connection

from core import protocol
from core.redis_client import single_node
from core.settings import RedisSettings

STREAM = protocol.stream_key("interactive.default.instant")
COMMANDS = {
    "XADD of a request (300 B)": ("XADD", STREAM, "*", protocol.PAYLOAD_FIELD, b"x" * 300),
    "SET NX EX of a result (400 B)": ("SET", protocol.request_key("r"), b"x" * 400, "EX", 3600, "NX"),
    "XREADGROUP": ("XREADGROUP", "GROUP", "workers", "w-1", "COUNT", 64, "BLOCK", 1000, "STREAMS", STREAM, ">"),
    "XLEN": ("XLEN", STREAM),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    pool = single_node(RedisSettings(), "redis://127.0.0.1:6379/0").connection_pool
    packers = {"redis-py (Python)": Connection(), "tiergate (hiredis)": pool.connection_class()}
    print("| command | redis-py µs | hiredis µs | ratio |\n|---|---|---|---|")
    for name, command in COMMANDS.items():
        us = [
            timeit.timeit(lambda c=c, a=command: c.pack_command(*a), number=args.number) / args.number * 1e6
            for c in packers.values()
        ]
        print(f"| {name} | {us[0]:.2f} | {us[1]:.2f} | {us[0] / us[1]:.1f}x |")


if __name__ == "__main__":
    main()
