"""Dynamic batching in pure asyncio: no I/O, driven by `put` and `next_batch`.

`next_batch` returns as soon as `max_batch` items are waiting, or `max_wait_s` after the oldest
waiting item arrived, whichever is first. With max_batch = 1 it hands out items one at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._items: deque[tuple[float, T]] = deque()
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        """How many more items to fetch: one batch waiting beyond the one being formed."""
        return max(0, 2 * self.max_batch - len(self._items))

    def put(self, item: T) -> None:
        self._items.append((asyncio.get_running_loop().time(), item))
        self._arrived.set()

    def close(self) -> None:
        """Let `next_batch` hand out what is left without waiting, then return empty lists."""
        self._closed = True
        self._arrived.set()
        self._freed.set()

    async def next_batch(self) -> list[T]:
        loop = asyncio.get_running_loop()
        while not self._items:
            if self._closed:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        close_at = self._items[0][0] + self.max_wait_s
        while len(self._items) < self.max_batch and not self._closed:
            remaining = close_at - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        count = min(self.max_batch, len(self._items))
        batch = [self._items.popleft()[1] for _ in range(count)]
        self._freed.set()
        return batch

    async def wait_for_room(self) -> None:
        while self.room == 0 and not self._closed:
            self._freed.clear()
            await self._freed.wait()
