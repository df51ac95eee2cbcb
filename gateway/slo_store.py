"""The Redis I/O of metrics and SLOs at the gateway: pushes this process's per-second SLO counts
into shared per-second and per-minute hashes (one pipeline per flush, with TTLs), reads every
gateway's counts back for `GET /v1/slo`, and samples tier stream depth and consumer-group lag.
`UsageStore` does the same for usage per tenant: hourly and daily hashes, read by `GET /v1/usage`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import RedisError

from core import protocol
from core.redis_client import AnyPipeline, Client

from . import slo
from .slo import Accumulator, Cell, Cells, Snapshot
from .usage import DAY_S, HOUR_S, PERIOD_S, Counts, UsageCounts, UsageKey

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# What is read and how long it is kept follows the windows of `slo` (WINDOW_S), with slack.
SECONDS_READ = slo.SECOND_WINDOWS_S  # per-second keys read: the windows summed from seconds
MINUTES_FULL = slo.MINUTE_WINDOWS_S // 60  # per-minute keys read whole: the windows summed from minutes
MINUTES_COUNTS = slo.WINDOW_S[slo.TOTALS_WINDOW] // 60  # per-minute keys whose tier totals are read
SECOND_TTL_S = SECONDS_READ + 60  # the per-second windows and the series, plus slack
MINUTE_TTL_S = MINUTES_COUNTS * 60 + 120  # the tier-totals window of the slow-burn alert
MINUTE_MAX_TTL_S = MINUTES_FULL * 60 + 120  # the maximum is reported up to the longest full window


@dataclass(frozen=True, slots=True)
class _Spans:
    """The seconds and minutes one report reads, around `now_s`."""

    seconds: range
    minutes: range  # read whole
    older: range  # only their tier totals are read

    @classmethod
    def around(cls, now_s: int) -> _Spans:
        now_min = now_s // 60
        return cls(
            seconds=range(now_s - SECONDS_READ + 1, now_s + 1),
            minutes=range(now_min - MINUTES_FULL + 1, now_min + 1),
            older=range(now_min - MINUTES_COUNTS + 1, now_min - MINUTES_FULL + 1),
        )


class SloStore:
    def __init__(self, redis: Client, gateway_id: str, settle_s: float = 5.0) -> None:
        self.redis = redis
        self.gateway_id = gateway_id
        self.settle_s = settle_s  # how late a gateway's flush may land: longer than its flush interval
        self._seconds: dict[int, Cells] = {}  # final seconds, merged
        self._minutes: dict[int, Cells] = {}  # final minutes, merged
        self._older: dict[int, dict[str, tuple[int, int]]] = {}  # final minutes: tier -> (requests, met)

    async def flush(self, accumulator: Accumulator) -> None:
        """Push what `accumulator` holds; on a Redis error it is put back for the next flush."""
        seconds = accumulator.drain()
        if not seconds:
            return
        pipe = self.redis.pipeline(transaction=False)
        minutes: set[int] = set()
        for epoch_s, cells in seconds.items():
            minute = epoch_s // 60
            minutes.add(minute)
            for (tier, processor), cell in cells.items():
                member = protocol.slo_member(tier, processor)
                minute_key = protocol.slo_minute_key(minute)
                _increment(pipe, protocol.slo_second_key(epoch_s), tier, processor, cell)
                _increment(pipe, minute_key, tier, processor, cell)
                if cell.ok:  # Redis has no "keep the larger" hash increment; a sorted set's GT does it
                    pipe.zadd(protocol.slo_max_key(epoch_s), {member: cell.max_ms}, gt=True)
                    pipe.zadd(protocol.slo_minute_max_key(minute), {member: cell.max_ms}, gt=True)
                pipe.hincrby(minute_key, protocol.slo_field(tier, protocol.SLO_TOTAL, "n"), cell.n)
                pipe.hincrby(minute_key, protocol.slo_field(tier, protocol.SLO_TOTAL, "met"), cell.met)
            pipe.expire(protocol.slo_second_key(epoch_s), SECOND_TTL_S)
            pipe.expire(protocol.slo_max_key(epoch_s), SECOND_TTL_S)
        for minute in minutes:
            pipe.expire(protocol.slo_minute_key(minute), MINUTE_TTL_S)
            pipe.expire(protocol.slo_minute_max_key(minute), MINUTE_MAX_TTL_S)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("SLO counts not flushed, keeping them for the next try", extra={"error": str(exc)})
            accumulator.restore(seconds)

    async def snapshot(self, now_s: int, tiers: list[str]) -> Snapshot:
        """Read and merge every gateway's counts for the windows of the report.

        Seconds and minutes that ended more than `settle_s` ago are final (every gateway has
        flushed them): they are parsed once and kept, so a report reads only the recent keys.
        """
        spans = _Spans.around(now_s)
        fresh_s, fresh_m, fresh_o = await self._read_missing(spans, tiers)
        final_s = now_s - math.ceil(self.settle_s)  # seconds up to this one are final
        self._keep(self._seconds, fresh_s, final_s, spans.seconds.start)
        self._keep(self._minutes, fresh_m, final_s // 60 - 1, spans.minutes.start)
        self._keep(self._older, fresh_o, final_s // 60 - 1, spans.older.start)
        seconds = {t: self._seconds[t] if t in self._seconds else fresh_s[t] for t in spans.seconds}
        minutes = {m: self._minutes[m] if m in self._minutes else fresh_m[m] for m in spans.minutes}
        older = [self._older[m] if m in self._older else fresh_o[m] for m in spans.older]
        return Snapshot(now_s, seconds, minutes, _tier_counts(tiers, minutes.values(), older))

    async def _read_missing(
        self, spans: _Spans, tiers: list[str]
    ) -> tuple[dict[int, Cells], dict[int, Cells], dict[int, dict[str, tuple[int, int]]]]:
        """Read, in one pipeline, the seconds, minutes and older minutes that are not cached."""
        want_s = [t for t in spans.seconds if t not in self._seconds]
        want_m = [m for m in spans.minutes if m not in self._minutes]
        want_o = [m for m in spans.older if m not in self._older]
        fields = [protocol.slo_field(tier, protocol.SLO_TOTAL, stat) for tier in tiers for stat in ("n", "met")]
        pipe = self.redis.pipeline(transaction=False)
        for t in want_s:
            pipe.hgetall(protocol.slo_second_key(t))
            pipe.zrange(protocol.slo_max_key(t), 0, -1, withscores=True)
        for m in want_m:
            pipe.hgetall(protocol.slo_minute_key(m))
            pipe.zrange(protocol.slo_minute_max_key(m), 0, -1, withscores=True)
        for m in want_o:
            pipe.hmget(protocol.slo_minute_key(m), fields)
        replies = await pipe.execute() if want_s or want_m or want_o else []
        fresh_s = {t: _cells(replies[2 * i], replies[2 * i + 1]) for i, t in enumerate(want_s)}
        offset = 2 * len(want_s)
        fresh_m = {m: _cells(replies[offset + 2 * i], replies[offset + 2 * i + 1]) for i, m in enumerate(want_m)}
        offset += 2 * len(want_m)
        fresh_o = {m: _totals(tiers, replies[offset + i]) for i, m in enumerate(want_o)}
        return fresh_s, fresh_m, fresh_o

    @staticmethod
    def _keep(cache: dict[int, _T], fresh: dict[int, _T], final: int, oldest: int) -> None:
        """Cache what is final, and forget what has left the windows."""
        cache.update((k, v) for k, v in fresh.items() if k <= final)
        for k in [k for k in cache if k < oldest]:
            del cache[k]


def _increment(pipe: AnyPipeline, key: str, tier: str, processor: str, cell: Cell) -> None:
    ints, floats = slo.increments(cell)
    for stat, amount in ints.items():
        pipe.hincrby(key, protocol.slo_field(tier, processor, stat), amount)
    for stat, value in floats.items():
        pipe.hincrbyfloat(key, protocol.slo_field(tier, processor, stat), value)


def _cells(fields: dict[bytes, bytes], maxima: list[tuple[bytes, float]]) -> Cells:
    cells = slo.merge([fields])
    for member, score in maxima:
        cell = cells.get(protocol.parse_slo_member(member))
        if cell is not None:
            cell.max_ms = max(cell.max_ms, score)
    return cells


def _tier_counts(
    tiers: list[str], minutes: Iterable[Cells], older: Iterable[dict[str, tuple[int, int]]]
) -> dict[str, tuple[int, int]]:
    """Each tier's (requests, met) over the whole minutes and the older minutes' totals."""
    counts = {tier: [0, 0] for tier in tiers}
    for cells in minutes:
        for (tier, _), cell in cells.items():
            if tier in counts:
                counts[tier][0] += cell.n
                counts[tier][1] += cell.met
    for totals in older:
        for tier, (n, met) in totals.items():
            if tier in counts:
                counts[tier][0] += n
                counts[tier][1] += met
    return {tier: (n, met) for tier, (n, met) in counts.items()}


def _totals(tiers: list[str], values: list[bytes | None]) -> dict[str, tuple[int, int]]:
    return {tier: (int(values[2 * i] or 0), int(values[2 * i + 1] or 0)) for i, tier in enumerate(tiers)}


class UsageStore:
    """Usage per tenant, tier and model in Redis: an hourly and a daily hash per period, each
    gateway adding its counts (HINCRBY, HINCRBYFLOAT) and setting their retention (EXPIRE)."""

    def __init__(self, redis: Client, hourly_retention_h: int, daily_retention_d: int) -> None:
        self.redis = redis
        self.hour_ttl_s = hourly_retention_h * HOUR_S
        self.day_ttl_s = daily_retention_d * DAY_S

    async def flush(self, counts: UsageCounts) -> None:
        """Push what `counts` holds; on a Redis error it is put back for the next flush."""
        hours = counts.drain()
        if not hours:
            return
        pipe = self.redis.pipeline(transaction=False)
        for hour, cells in hours.items():
            day = hour * HOUR_S // DAY_S
            for key in (protocol.usage_hour_key(hour), protocol.usage_day_key(day)):
                for usage_key, cell in cells.items():
                    _add_usage(pipe, key, usage_key, cell)
            pipe.expire(protocol.usage_hour_key(hour), self.hour_ttl_s)
            pipe.expire(protocol.usage_day_key(day), self.day_ttl_s)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("usage counts not flushed, keeping them for the next try", extra={"error": str(exc)})
            counts.restore(hours)

    async def read(self, period: str, first: int, last: int) -> dict[int, dict[UsageKey, Counts]]:
        """Every gateway's counts of the hours or days `first`..`last` (epoch hours or days)."""
        key = protocol.usage_hour_key if PERIOD_S[period] == HOUR_S else protocol.usage_day_key
        pipe = self.redis.pipeline(transaction=False)
        for index in range(first, last + 1):
            pipe.hgetall(key(index))
        found: dict[int, dict[UsageKey, Counts]] = {}
        for index, fields in zip(range(first, last + 1), await pipe.execute(), strict=True):
            if fields:
                found[index] = _usage_cells(fields)
        return found


def _add_usage(pipe: AnyPipeline, key: str, usage_key: UsageKey, cell: Counts) -> None:
    pipe.hincrby(key, protocol.usage_field(*usage_key, "requests"), cell.requests)
    pipe.hincrby(key, protocol.usage_field(*usage_key, "tokens"), cell.tokens)
    pipe.hincrbyfloat(key, protocol.usage_field(*usage_key, "energy_j"), cell.energy_j)
    pipe.hincrbyfloat(key, protocol.usage_field(*usage_key, "cost"), cell.cost)


def _usage_cells(fields: dict[bytes, bytes]) -> dict[UsageKey, Counts]:
    cells: dict[UsageKey, Counts] = {}
    for name, raw in fields.items():
        parsed = protocol.parse_usage_field(name)
        if parsed is None or parsed[3] not in protocol.USAGE_STATS:
            continue
        cell = cells.setdefault(parsed[:3], Counts())
        value = float(raw)
        stat = parsed[3]
        if stat in ("requests", "tokens"):
            setattr(cell, stat, getattr(cell, stat) + int(value))
        else:
            setattr(cell, stat, getattr(cell, stat) + value)
    return cells
