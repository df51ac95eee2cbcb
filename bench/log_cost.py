"""What the per-request INFO log line costs a saturated gateway, measured inside one gateway process
(`bench/inprocess.py`): the root log level flips between INFO (one JSON line per answered request)
and WARNING. A log line costs far more in the gateway, among a request's other work, than in a
loop of log lines alone (`bench.log_line`).
Run: `python -m bench.log_cost [--segments 40] [--segment-s 2] [--connections 64]`. Needs `wrk`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from bench import inprocess
from gateway.metrics import METRICS


def levels(app: web.Application) -> tuple[dict[str, Callable[[], None]], Callable[[], float]]:
    sides: dict[str, Callable[[], None]] = {
        "INFO": lambda: logging.getLogger().setLevel("INFO"),
        "WARNING": lambda: logging.getLogger().setLevel("WARNING"),
    }
    return sides, lambda: inprocess.answered(app[METRICS])


def main() -> None:
    args = inprocess.parser(__doc__).parse_args()
    inprocess.report(inprocess.measure(levels, args), args, "level")


if __name__ == "__main__":
    main()
