"""The cost of one per-request log line: `log.info("request done", extra={...})` through a plain
`StreamHandler` (a write and a flush per line) and through tiergate's batched handler
(`core/logs.py`), both with the JSON formatter, writing to /dev/null. Prints µs per line.
Run: `python -m bench.log_line [--lines 50000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

from core.logs import BatchedHandler, JsonFormatter

EXTRA = {
    "id": "0123456789abcdef0123456789abcdef",
    "model": "sim-echo",
    "tier": "interactive",
    "pool": "instant",
    "total_ms": 0.812,
    "queue_ms": 0.2,
}


def per_line_us(handler: logging.Handler, lines: int) -> float:
    log = logging.getLogger("bench.log_line")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    started = time.perf_counter()
    for _ in range(lines):
        log.info("request done", extra=EXTRA)
    handler.flush()
    return (time.perf_counter() - started) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"StreamHandler, one write per line": [], "batched handler": []}
    with open(os.devnull, "w") as text, open(os.devnull, "wb") as binary:
        for _ in range(args.rounds):  # alternated, so a slow moment of the host hits both
            plain = logging.StreamHandler(text)
            plain.setFormatter(JsonFormatter())
            results["StreamHandler, one write per line"].append(per_line_us(plain, args.lines))
            logging._srcfile = None  # what `core.logs.configure` sets for the batched handler
            batched = BatchedHandler(binary)
            results["batched handler"].append(per_line_us(batched, args.lines))
            batched.close()
            logging._srcfile = os.path.normcase(logging.addLevelName.__code__.co_filename)
    print(f"\n{args.lines} lines per round, {args.rounds} rounds\n")
    print(f"| {'handler':<34} | {'µs/line (median)':>16} | {'rounds':<24} |")
    print(f"|{'-' * 36}|{'-' * 18}|{'-' * 26}|")
    for name, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name:<34} | {statistics.median(values):>16.1f} | {rounds:<24} |")


if __name__ == "__main__":
    main()
