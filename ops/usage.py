"""`tiergate usage`: requests, tokens, energy and cost per tenant, tier and model, per hour or
day, read from the usage hashes every gateway flushes to Redis (`gateway.slo_store.UsageStore`).
Its Redis I/O is that store's read and one TIME.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core import redis_client
from core.clock import RedisClock
from core.errors import InvalidRequest
from core.settings import Settings

from .audit import since_ms

if TYPE_CHECKING:
    from gateway.usage import Row

COLUMNS = ("START", "TENANT", "TIER", "MODEL", "REQUESTS", "TOKENS", "ENERGY_J", "COST_USD")


def table(rows: list[Row]) -> list[str]:
    """The report as aligned lines; an open gateway's tenant ("") is shown as `-`."""
    cells = [COLUMNS] + [
        (r.start, r.tenant or "-", r.tier, r.model, str(r.requests), str(r.tokens), f"{r.energy_j:.6g}",
         f"{r.cost:.6g}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]


async def run(settings: Settings, redis_url: str, args: argparse.Namespace) -> int:
    from gateway import usage  # the gateway's package loads only for this command
    from gateway.slo_store import UsageStore

    redis = await redis_client.connect(settings.redis, redis_url)
    try:
        clock = RedisClock()
        await clock.sync(redis)
        now_ms = clock.now_ms()
        params = {"period": args.period}
        try:
            if args.since is not None:
                params["from"] = str(since_ms(args.since, now_ms) // 1000)
            if args.until is not None:
                params["to"] = str(since_ms(args.until, now_ms) // 1000)
            query = usage.parse_query(params, int(now_ms // 1000), "")
        except (ValueError, InvalidRequest) as exc:
            print(f"tiergate usage: {exc}", file=sys.stderr)
            return 2
        store = UsageStore(redis, settings.usage.hourly_retention_h, settings.usage.daily_retention_d)
        found = await store.read(query.period, query.first, query.last)
        rows = usage.rows(query.period, found, args.tenant)
        print("\n".join(table(rows)) if rows else "no usage in that time")
        return 0
    finally:
        await redis.aclose()


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    sp = sub.add_parser("usage", help="requests, tokens, energy and cost per tenant, tier and model")
    common(sp)
    sp.add_argument("--tenant", default=None, help="only this tenant")
    sp.add_argument("--period", choices=("hour", "day"), default="hour", help="rows per hour or per day")
    sp.add_argument(
        "--since", default=None, help="from a duration ago (90m, 2d) or an ISO 8601 time (default: 24 hours, 30 days)"
    )
    sp.add_argument("--until", default=None, help="up to a duration ago or an ISO 8601 time (default: now)")


def main(args: argparse.Namespace, settings: Settings, redis_url: str) -> int:
    return asyncio.run(run(settings, redis_url, args))
