"""SloStore against fakeredis: counts flushed by two gateways merge, older minutes keep their
maximum for the 1 h window, and a failed flush keeps its counts for the next one."""

from __future__ import annotations

import fakeredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import slo
from gateway.slo_store import SloStore

NOW = 1_800_000_000  # a whole minute: second 0 of its minute


def record(acc: slo.Accumulator, epoch_s: int, latency_ms: float) -> None:
    acc.result(epoch_s, "interactive", "h100", latency_ms, latency_ms <= 250, 2.0, 2, 0.1, 0.0001)


async def test_two_gateways_merge_and_older_minutes_keep_their_maximum() -> None:
    redis = fakeredis.FakeAsyncRedis()
    a, b = SloStore(redis, "gw-a"), SloStore(redis, "gw-b")
    acc_a, acc_b = slo.Accumulator(), slo.Accumulator()
    record(acc_a, NOW - 600, 300.0)  # ten minutes ago: only in the 1 h window
    record(acc_a, NOW - 10, 5.0)
    record(acc_b, NOW - 10, 7.0)
    acc_b.failure(NOW - 5, "interactive")
    await a.flush(acc_a)
    await b.flush(acc_b)
    assert acc_a.seconds == {} and acc_b.seconds == {}
    snap = await a.snapshot(NOW, ["interactive", "batch"])
    spans = slo.windows(snap)
    one_minute = slo.tier_totals(spans["1m"], "interactive")
    one_hour = slo.tier_totals(spans["1h"], "interactive")
    assert (one_minute.n, one_minute.ok, one_minute.met, one_minute.max_ms) == (3, 2, 2, 7.0)
    assert (one_hour.n, one_hour.ok, one_hour.met, one_hour.max_ms) == (4, 3, 2, 300.0)
    assert snap.tier_counts_6h == {"interactive": (4, 2), "batch": (0, 0)}
    assert one_hour.batches == 1.5  # three requests, each in a batch of two
    await redis.aclose()


class Unreachable:
    def pipeline(self, transaction: bool = False) -> Unreachable:
        return self

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None

    async def execute(self) -> None:
        raise RedisConnectionError("connection refused")


async def test_failed_flush_keeps_the_counts_for_the_next_one() -> None:
    acc = slo.Accumulator()
    record(acc, NOW - 3, 20.0)
    await SloStore(Unreachable(), "gw").flush(acc)  # type: ignore[arg-type]
    record(acc, NOW - 3, 30.0)
    redis = fakeredis.FakeAsyncRedis()
    store = SloStore(redis, "gw")
    await store.flush(acc)
    cell = slo.tier_totals(slo.windows(await store.snapshot(NOW, ["interactive"]))["1m"], "interactive")
    assert (cell.n, cell.sum_ms, cell.max_ms) == (2, 50.0, 30.0)
    await redis.aclose()


async def test_recent_seconds_are_read_again_and_final_ones_once() -> None:
    redis = fakeredis.FakeAsyncRedis()
    store, acc = SloStore(redis, "gw", settle_s=5), slo.Accumulator()
    record(acc, NOW - 100, 10.0)
    record(acc, NOW - 2, 10.0)
    await store.flush(acc)
    assert slo.tier_totals(slo.windows(await store.snapshot(NOW, ["interactive"]))["5m"], "interactive").n == 2
    record(acc, NOW - 2, 10.0)  # a flush landing in a second that is not final yet: counted
    record(acc, NOW - 100, 10.0)  # one landing 100 s late, in a final second: not read again
    await store.flush(acc)
    assert slo.tier_totals(slo.windows(await store.snapshot(NOW, ["interactive"]))["5m"], "interactive").n == 3
    fresh = SloStore(redis, "gw", settle_s=5)  # another gateway, without a cache, sees all of Redis
    assert slo.tier_totals(slo.windows(await fresh.snapshot(NOW, ["interactive"]))["5m"], "interactive").n == 4
    await redis.aclose()
