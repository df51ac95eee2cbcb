"""The Redis I/O of metrics and SLOs at the gateway: pushes this process's per-second SLO counts
into shared per-second and per-minute hashes (one pipeline per flush, with TTLs), reads every
gateway's counts back for `GET /v1/slo`, and samples tier stream depth and consumer-group lag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from . import protocol, slo
from .slo import TOTAL, Accumulator, Cell, Cells, Snapshot

log = logging.getLogger(__name__)

SECOND_TTL_S = 6 * 60  # the 5-minute window and its per-second series, plus slack
MINUTE_TTL_S = 6 * 3600 + 120  # the 6-hour window of the slow-burn alert
MINUTE_MAX_TTL_S = 3600 + 120  # the maximum is reported up to the 1-hour window
SECONDS_READ = 300  # per-second keys read: the 1 min and 5 min windows
MINUTES_FULL = 60  # per-minute keys read whole: the 30 min and 1 h windows
MINUTES_COUNTS = 360  # per-minute keys whose tier totals are read: the 6 h window


@dataclass(slots=True)
class QueueSample:
    length: int
    lag: int
    pending: int


class SloStore:
    def __init__(self, redis: Redis, gateway_id: str) -> None:
        self.redis = redis
        self.gateway_id = gateway_id

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
                prefix = f"{tier}|{processor}|"
                minute_key = protocol.slo_minute_key(minute)
                _increment(pipe, protocol.slo_second_key(epoch_s), prefix, cell)
                _increment(pipe, minute_key, prefix, cell)
                if cell.ok:  # Redis has no "keep the larger" hash increment; a sorted set's GT does it
                    pipe.zadd(protocol.slo_max_key(epoch_s), {f"{tier}|{processor}": cell.max_ms}, gt=True)
                    pipe.zadd(protocol.slo_minute_max_key(minute), {f"{tier}|{processor}": cell.max_ms}, gt=True)
                pipe.hincrby(minute_key, f"{tier}|{TOTAL}|n", cell.n)
                pipe.hincrby(minute_key, f"{tier}|{TOTAL}|met", cell.met)
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
        """Read and merge every gateway's counts for the windows of the report."""
        pipe = self.redis.pipeline(transaction=False)
        second_range = range(now_s - SECONDS_READ + 1, now_s + 1)
        now_min = now_s // 60
        minute_range = range(now_min - MINUTES_FULL + 1, now_min + 1)
        older_range = range(now_min - MINUTES_COUNTS + 1, now_min - MINUTES_FULL + 1)
        for epoch_s in second_range:
            pipe.hgetall(protocol.slo_second_key(epoch_s))
            pipe.zrange(protocol.slo_max_key(epoch_s), 0, -1, withscores=True)
        for minute in minute_range:
            pipe.hgetall(protocol.slo_minute_key(minute))
            pipe.zrange(protocol.slo_minute_max_key(minute), 0, -1, withscores=True)
        replies = await pipe.execute()
        seconds = {s: _cells(replies[2 * i], replies[2 * i + 1]) for i, s in enumerate(second_range)}
        offset = 2 * len(second_range)
        minutes = {m: _cells(replies[offset + 2 * i], replies[offset + 2 * i + 1]) for i, m in enumerate(minute_range)}
        return Snapshot(now_s, seconds, minutes, await self._tier_counts(tiers, older_range, minutes))

    async def _tier_counts(
        self, tiers: list[str], older: range, minutes: dict[int, Cells]
    ) -> dict[str, tuple[int, int]]:
        counts = {tier: [0, 0] for tier in tiers}
        for cells in minutes.values():
            for (tier, _), cell in cells.items():
                if tier not in counts:
                    continue
                counts[tier][0] += cell.n
                counts[tier][1] += cell.met
        if tiers and older:
            pipe = self.redis.pipeline(transaction=False)
            fields = [f"{tier}|{TOTAL}|{stat}" for tier in tiers for stat in ("n", "met")]
            for minute in older:
                pipe.hmget(protocol.slo_minute_key(minute), fields)
            for values in await pipe.execute():
                for i, tier in enumerate(tiers):
                    counts[tier][0] += int(values[2 * i] or 0)
                    counts[tier][1] += int(values[2 * i + 1] or 0)
        return {tier: (n, met) for tier, (n, met) in counts.items()}

    async def sample_queues(self, streams: list[str]) -> dict[str, QueueSample]:
        """XLEN and the worker group's lag and pending count of each stream, in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        replies = await pipe.execute(raise_on_error=False)
        samples: dict[str, QueueSample] = {}
        for i, stream in enumerate(streams):
            length, groups = replies[2 * i], replies[2 * i + 1]
            sample = QueueSample(length if isinstance(length, int) else 0, 0, 0)
            for group in groups if isinstance(groups, list) else ():
                if _text(group.get("name")) == protocol.GROUP:
                    sample.lag = int(group.get("lag") or 0)
                    sample.pending = int(group.get("pending") or 0)
            samples[stream] = sample
        return samples


def _increment(pipe: Pipeline, key: str, prefix: str, cell: Cell) -> None:
    ints, floats = slo.increments(cell)
    for stat, amount in ints.items():
        pipe.hincrby(key, prefix + stat, amount)
    for stat, value in floats.items():
        pipe.hincrbyfloat(key, prefix + stat, value)


def _cells(fields: dict[bytes, bytes], maxima: list[tuple[bytes, float]]) -> Cells:
    cells = slo.merge([fields])
    for member, score in maxima:
        tier, _, processor = member.decode().partition("|")
        cell = cells.get((tier, processor))
        if cell is not None:
            cell.max_ms = max(cell.max_ms, score)
    return cells


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
