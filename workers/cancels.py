"""The ids of cancelled requests a worker has heard of, each kept until its deadline: the
executor answers them without running them. Bounded; no I/O (the consumer feeds it).

Past its deadline a request is refused by the executor's deadline check anyway, so an id is
only worth keeping until then. When full, the ids closest to their deadline go first; one
forgotten early still cannot change its stored answer (written with SET NX), it only runs.
"""

from __future__ import annotations

import heapq

MAX_CANCELLED = 100_000  # ids kept at most


class CancelledIds:
    def __init__(self, limit: int = MAX_CANCELLED) -> None:
        self.limit = limit
        self._deadlines: dict[str, int] = {}  # id -> deadline_at_ms
        self._by_deadline: list[tuple[int, str]] = []  # a heap of the same, soonest first

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._deadlines

    def add(self, request_id: str, deadline_at_ms: int, now_ms: float) -> None:
        """Remember a cancelled request until `deadline_at_ms` (both on Redis's clock)."""
        self.expire(now_ms)
        if deadline_at_ms <= now_ms or request_id in self._deadlines:
            return
        self._deadlines[request_id] = deadline_at_ms
        heapq.heappush(self._by_deadline, (deadline_at_ms, request_id))
        while len(self._deadlines) > self.limit:
            self._pop()

    def expire(self, now_ms: float) -> None:
        """Forget the ids whose deadline has passed."""
        while self._by_deadline and self._by_deadline[0][0] <= now_ms:
            self._pop()

    def _pop(self) -> None:
        _, request_id = heapq.heappop(self._by_deadline)
        del self._deadlines[request_id]
