"""The gateway's enqueue path: one pipeline per event-loop tick, with the stream lengths sampled."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis

from gateway.queue import RequestQueue


class CountingRedis(fakeredis.aioredis.FakeRedis):
    pipelines = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        type(self).pipelines += 1
        return super().pipeline(*args, **kwargs)


async def test_requests_of_one_tick_share_one_pipeline_and_sample_the_length() -> None:
    redis = CountingRedis()
    queue = RequestQueue(redis)
    ids = await asyncio.gather(*(queue.enqueue("tg:{batch.default}:requests", b"%d" % i) for i in range(10)))
    assert CountingRedis.pipelines == 1
    assert len(set(ids)) == 10
    assert queue.lengths == {"tg:{batch.default}:requests": 10}
    entries = await redis.xrange("tg:{batch.default}:requests")
    assert [fields[b"m"] for _, fields in entries] == [b"%d" % i for i in range(10)]
    await redis.aclose()
