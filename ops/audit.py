"""`tiergate audit tail`: where requests ran, from the audit stream the workers append to.

An operator command with its own Redis I/O (XREVRANGE, XRANGE, XREAD on `protocol.audit_key()`):
the last entries, or every entry since a time, optionally of one tenant, as JSON lines; with
`--follow` it then prints new entries as they arrive until SIGINT (Ctrl-C) or SIGTERM. A stream
entry holds one request's `AuditEntry` or a batch's `AuditBatch`: either way, one line per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from core import protocol, redis_client
from core.clock import RedisClock
from core.redis_client import Client
from core.settings import Settings

PAGE = 1000
FOLLOW_BLOCK_MS = 1000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_json = msgspec.json.Encoder()

Entry = tuple[str, protocol.AuditEntry]  # (id of the stream entry that holds it, one request's entry)


def since_ms(text: str, now_ms: float) -> int:
    """`--since`: a duration back from now (`90s`, `15m`, `2h`, `1d`) or an ISO 8601 time (UTC
    unless it names its offset); raises ValueError naming the accepted forms."""
    match = _DURATION.match(text.strip())
    if match:
        return int(now_ms - float(match.group(1)) * _UNIT_MS[match.group(2)])
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (90s, 15m, 2h, 1d) nor an ISO 8601 time (2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _decode(raw: protocol.StreamEntries, tenant: str | None) -> list[Entry]:
    """Each request's entry (of `tenant`) in `raw`, in stream order: a batch's in the order its
    worker published their replies."""
    found: list[Entry] = []
    for entry_id, fields in raw:
        try:
            held = protocol.audit_decoder.decode(fields[protocol.PAYLOAD_FIELD])
        except (msgspec.DecodeError, KeyError):
            continue
        entries = held.entries if isinstance(held, protocol.AuditBatch) else (held,)
        found += [(entry_id.decode(), entry) for entry in entries if tenant is None or entry.tenant == tenant]
    return found


async def last(redis: Client, count: int, tenant: str | None = None) -> list[Entry]:
    """The entries of the last `count` requests (of `tenant`), oldest first, read backwards a
    page of stream entries at a time."""
    found: list[Entry] = []  # newest first
    upper = "+"
    while len(found) < count:
        raw: protocol.StreamEntries = await redis.xrevrange(protocol.audit_key(), max=upper, count=PAGE)  # type: ignore[assignment]
        for stream_entry in raw:  # newest first, and a batch's requests last to first
            found += reversed(_decode([stream_entry], tenant))
        if len(raw) < PAGE:
            break
        upper = "(" + raw[-1][0].decode()
    return list(reversed(found[:count]))


async def since(redis: Client, start_ms: int, tenant: str | None = None) -> list[Entry]:
    """Every entry from `start_ms` (Redis clock) on (of `tenant`), oldest first."""
    found: list[Entry] = []
    lower = f"{max(0, start_ms)}-0"
    while True:
        raw: protocol.StreamEntries = await redis.xrange(protocol.audit_key(), min=lower, count=PAGE)  # type: ignore[assignment]
        found += _decode(raw, tenant)
        if len(raw) < PAGE:
            return found
        lower = "(" + raw[-1][0].decode()


async def follow(
    redis: Client, after_id: str, tenant: str | None = None, stop: asyncio.Event | None = None
) -> AsyncIterator[Entry]:
    """Entries appended after `after_id` (of `tenant`), as they arrive, until cancelled or, at the
    latest one XREAD block after it is set, until `stop` is set."""
    while stop is None or not stop.is_set():
        reply: protocol.StreamReply | None = await redis.xread(
            {protocol.audit_key(): after_id}, count=PAGE, block=FOLLOW_BLOCK_MS
        )  # type: ignore[assignment]
        for _, raw in reply or ():
            after_id = raw[-1][0].decode()
            for item in _decode(raw, tenant):
                yield item


def line(entry_id: str, entry: protocol.AuditEntry) -> str:
    """One JSON line: the entry's fields, its stream id, and its time in ISO 8601 (UTC)."""
    at = datetime.datetime.fromtimestamp(entry.at_ms / 1000, tz=datetime.UTC)
    fields = {"entry": entry_id, "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    fields.update(msgspec.structs.asdict(entry))
    fields.setdefault("sensitivity", "")
    return _json.encode(fields).decode()


async def newest_id(redis: Client) -> str:
    """The id of the stream's newest entry ("0-0" while it is empty)."""
    raw: protocol.StreamEntries = await redis.xrevrange(protocol.audit_key(), count=1)  # type: ignore[assignment]
    return raw[0][0].decode() if raw else "0-0"


def _later(a: str, b: str) -> str:
    return max(a, b, key=lambda entry_id: tuple(int(part) for part in entry_id.split("-")))


async def run(settings: Settings, redis_url: str, args: argparse.Namespace) -> int:
    """`tiergate audit tail`: print the chosen entries, then follow with `--follow`, until SIGINT
    (Ctrl-C) or SIGTERM, which end it with status 0 whenever they come."""
    stop = _stop_on_signals()
    try:
        redis = await redis_client.connect(settings.redis, redis_url)
        try:
            return await _tail(redis, args, stop)
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        asyncio.current_task().uncancel()  # type: ignore[union-attr]  # the stop we asked for
        return 0


async def _tail(redis: Client, args: argparse.Namespace, stop: asyncio.Event) -> int:
    # Following goes on from the stream's end as it was before the history was read (or from
    # the last entry printed, if later): an entry appended in between is printed once.
    start = await newest_id(redis) if args.follow else "0-0"
    if args.since is None:
        entries = await last(redis, args.count, args.tenant)
    else:
        clock = RedisClock()
        await clock.sync(redis)
        try:
            start_ms = since_ms(args.since, clock.now_ms())
        except ValueError as exc:
            print(f"tiergate audit tail: {exc}", file=sys.stderr)
            return 2
        entries = await since(redis, start_ms, args.tenant)
    for entry_id, entry in entries:
        print(line(entry_id, entry), flush=True)
    if args.follow:
        after = _later(start, entries[-1][0]) if entries else start
        async for entry_id, entry in follow(redis, after, args.tenant, stop):
            print(line(entry_id, entry), flush=True)
    return 0


def _stop_on_signals() -> asyncio.Event:
    """An Event that SIGINT or SIGTERM sets, cancelling the running task too so that a blocked
    XREAD ends now. The Event is what ends `follow` for sure, and before it starts: on Python 3.11
    redis-py sends each command under `asyncio.wait_for`, which absorbs a cancel that lands as the
    send completes."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stop = asyncio.Event()

    def stopping(sig: signal.Signals) -> None:
        if not stop.is_set() and task is not None:
            stop.set()
            task.cancel()
        loop.remove_signal_handler(sig)  # a second Ctrl-C is Python's own KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping, sig)
    return stop


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    audit = sub.add_parser("audit", help="where requests ran: the audit stream of placements")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser("tail", help="print audit entries as JSON lines, oldest first")
    common(tail)
    tail.add_argument("--tenant", default=None, help="only this tenant's requests")
    tail.add_argument(
        "--since", default=None, help="every entry since a duration ago (90s, 15m, 2h, 1d) or an ISO 8601 time"
    )
    tail.add_argument("--count", type=int, default=20, help="without --since: the last N entries (default: 20)")
    tail.add_argument(
        "--follow", action="store_true", help="then print new entries as they arrive (Ctrl-C or SIGTERM stops)"
    )


def main(args: argparse.Namespace, settings: Settings, redis_url: str) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(settings, redis_url, args))
    return 0
