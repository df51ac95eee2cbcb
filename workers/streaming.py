"""Streams a batch's output pieces to their gateways while the batch runs.

`ChunkStream` turns the backend's `(position, text)` calls into `Chunk`s and hands them, in
order, to a publisher (the consumer's pipelined XADD) from one task, so chunks of a request
never overtake each other. No Redis I/O here; publishing failures only cost the stream its
chunks, never the request: its Result carries the whole output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from core.clock import RedisClock, round_ms
from core.protocol import Chunk

from .consumer import Delivery

log = logging.getLogger(__name__)

ChunkPublisher = Callable[[list[tuple[Delivery, Chunk]]], Awaitable[None]]


class ChunkStream:
    def __init__(
        self, batch: Sequence[Delivery], publish: ChunkPublisher, clock: RedisClock, pool: str, started_ms: float
    ) -> None:
        self._batch = batch
        self._publish = publish
        self._clock = clock
        self._pool = pool
        self._started_ms = started_ms
        self._seq = [0] * len(batch)
        self._pending: list[tuple[Delivery, Chunk]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def __call__(self, position: int, text: str, choices: bytes = b"") -> None:
        """The backend's `TokenSink`: queue one piece of output for the request at `position`."""
        d = self._batch[position]
        seq = self._seq[position]
        self._seq[position] = seq + 1
        chunk = Chunk(
            id=d.envelope.id,
            seq=seq,
            text=text,
            produced_at_ms=round_ms(self._clock.now_ms()),
            queue_ms=round_ms(max(0.0, self._started_ms - d.sent_at_ms)) if seq == 0 else 0.0,
            tier=d.envelope.tier if seq == 0 else "",
            pool=self._pool if seq == 0 else "",
            choices=choices,
        )
        self._pending.append((d, chunk))
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                items, self._pending = self._pending, []
                try:
                    await self._publish(items)
                except Exception as exc:  # the Result still carries the whole output
                    log.warning("chunks not published", extra={"pool": self._pool, "error": str(exc)})
            if self._closed and not self._pending:
                return

    async def close(self) -> None:
        """Publish what is queued, then stop: the batch's Results may follow."""
        self._closed = True
        self._wake.set()
        await self._task
