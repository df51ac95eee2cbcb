"""Dynamic, SLO-aware, tier-prioritised batching in pure asyncio: no I/O, driven by `put` and
`next_batch`.

A batch closes as soon as `max_batch` items wait, or at the earliest of: `max_wait_s` after the
oldest waiting item arrived, and the latest moment some waiting item can still start and meet
its deadline (`start_by`). Items of a stricter tier (a lower priority number) go first, but each
lower tier is guaranteed `min_share` of the items handed out while it has work waiting, so it is
never starved outright. Within a tier, items are handed out tenant by tenant (deficit round robin
weighted by each item's tenant weight, `share`), first come, first served within a tenant: a light
tenant's item waits behind at most one turn of each other tenant, not behind a flooder's backlog.
With max_batch = 1 items are handed out one at a time.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")

# An item's tenant and its weight in a tier (a weight of 0 or less counts as 1).
Share = Callable[[T], tuple[str, float]]


class _Waiting(NamedTuple, Generic[T]):
    arrived_at: float  # loop time
    start_by: float  # loop time by which it must start to meet its deadline (inf: none)
    item: T
    tenant: str = ""
    weight: float = 1.0


class RoundRobin:
    """Deficit round robin over tenants, one item at a time: a tenant's turn earns it its weight
    (over the smallest weight waiting, so at least one item) and it takes items while its deficit
    lasts. A tenant with nothing waiting leaves the ring and its deficit (no saving up while
    idle); one that comes back joins at the end of the ring."""

    def __init__(self) -> None:
        self._ring: deque[str] = deque()
        self._deficit: dict[str, float] = {}
        self._earned = False  # the tenant at the head of the ring has had its quantum this turn

    def pick(self, waiting: Mapping[str, float]) -> str:
        """The tenant whose item goes next, of `waiting` (tenant -> weight; not empty)."""
        for tenant in [t for t in self._ring if t not in waiting]:
            if tenant == self._ring[0]:
                self._earned = False
            self._ring.remove(tenant)
            del self._deficit[tenant]
        for tenant in waiting:
            if tenant not in self._deficit:
                self._ring.append(tenant)
                self._deficit[tenant] = 0.0
        smallest = min(waiting.values())
        while True:
            head = self._ring[0]
            if self._deficit[head] >= 1.0:
                self._deficit[head] -= 1.0
                return head
            if self._earned:
                self._ring.rotate(-1)
                self._earned = False
            else:
                self._deficit[head] += waiting[head] / smallest
                self._earned = True


class Batcher(Generic[T]):
    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        priorities: int = 1,
        min_share: float = 0.0,
        share: Share[T] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.min_share = min_share
        self._share = share
        self._queues: list[deque[_Waiting[T]]] = [deque() for _ in range(priorities)]
        self._turns = [RoundRobin() for _ in range(priorities)]
        self._tenants: list[dict[str, int]] = [{} for _ in range(priorities)]  # tenant -> items waiting
        self._credit = [0.0] * priorities  # lower tiers' earned claim on the next slots
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def room_for(self, priority: int = 0) -> int:
        """How many more items of this priority to fetch: one batch beyond the one forming."""
        return max(0, 2 * self.max_batch - len(self._queues[priority]))

    @property
    def room(self) -> int:
        return max(self.room_for(p) for p in range(len(self._queues)))

    def put(self, item: T, priority: int = 0, start_by: float = math.inf) -> None:
        tenant, weight = self._share(item) if self._share is not None else ("", 1.0)
        waiting = _Waiting(asyncio.get_running_loop().time(), start_by, item, tenant, weight if weight > 0 else 1.0)
        self._queues[priority].append(waiting)
        counts = self._tenants[priority]
        counts[tenant] = counts.get(tenant, 0) + 1
        self._arrived.set()

    def close(self) -> None:
        """Let `next_batch` hand out what is left without waiting, then return empty lists."""
        self._closed = True
        self._arrived.set()
        self._freed.set()

    def close_at(self) -> float:
        """Loop time at which the batch now forming must close (call with items waiting)."""
        oldest = min(q[0].arrived_at for q in self._queues if q)
        earliest_start = min((w.start_by for q in self._queues for w in q), default=math.inf)
        return min(oldest + self.max_wait_s, earliest_start)

    async def next_batch(self) -> list[T]:
        loop = asyncio.get_running_loop()
        while not len(self):
            if self._closed:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        while len(self) < self.max_batch and not self._closed:
            remaining = self.close_at() - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch = self._take(min(self.max_batch, len(self)))
        self._freed.set()
        return batch

    def _take(self, count: int) -> list[T]:
        """Strictest tier first, except for slots lower tiers have earned through `min_share`."""
        batch: list[T] = []
        for priority in range(1, len(self._queues)):
            if self._queues[priority]:
                self._credit[priority] += self.min_share * count
            else:
                self._credit[priority] = 0.0  # no saving up while idle
        for priority in range(len(self._queues) - 1, 0, -1):
            queue = self._queues[priority]
            while self._credit[priority] >= 1.0 and queue and len(batch) < count:
                batch.append(self._pop(priority))
                self._credit[priority] -= 1.0
        for priority, queue in enumerate(self._queues):
            while queue and len(batch) < count:
                batch.append(self._pop(priority))
                if priority:
                    self._credit[priority] = max(0.0, self._credit[priority] - 1.0)
        return batch

    def _pop(self, priority: int) -> T:
        """The next item of a tier: the first of the tenant whose turn it is."""
        queue, counts = self._queues[priority], self._tenants[priority]
        if len(counts) == 1:  # one tenant waiting (always so without `share`): no need to scan
            waiting = {queue[0].tenant: queue[0].weight}
        else:
            waiting = {}  # tenant -> the weight of its first item waiting
            for w in queue:
                waiting.setdefault(w.tenant, w.weight)
        tenant = self._turns[priority].pick(waiting) if self._share is not None else queue[0].tenant
        if queue[0].tenant == tenant:
            taken = queue.popleft()
        else:
            index = next(index for index, w in enumerate(queue) if w.tenant == tenant)
            taken = queue[index]
            del queue[index]
        counts[tenant] -= 1
        if not counts[tenant]:
            del counts[tenant]
        return taken.item

    async def wait_for_room(self) -> None:
        while self.room == 0 and not self._closed:
            self._freed.clear()
            await self._freed.wait()
