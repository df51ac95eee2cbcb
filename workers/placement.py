"""When a worker may read each of its streams under its tiers' placement policies (pure).

A pool ranked behind another on a stream (core/placement.py) never blocks on that stream: it
reads it without blocking, and after a read that found nothing there it waits its hold before
reading it again. An idle preferred pool, blocked on the stream, is handed each new entry the
moment it is added; a busy one leaves entries waiting, and the pools behind it take them within
their hold. A stream that had entries is read again at once, so a backlog drains at full speed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Plan:
    streams: list[str]  # to read now
    may_block: bool  # none of them is held: a blocking read is allowed
    wait_s: float | None  # until the next held stream is due (None: none is waiting)


class Holds:
    def __init__(self, hold_s: dict[str, float]) -> None:
        self.hold_s = hold_s  # stream -> seconds between empty reads; streams not here are never held
        self._due_at = dict.fromkeys(hold_s, 0.0)

    def plan(self, streams: Iterable[str], now: float) -> Plan:
        """Which of the open `streams` to read at loop time `now`."""
        chosen: list[str] = []
        held = False
        waits: list[float] = []
        for stream in streams:
            due_at = self._due_at.get(stream)
            if due_at is None:
                chosen.append(stream)
            elif due_at <= now:
                chosen.append(stream)
                held = True
            else:
                waits.append(due_at - now)
        return Plan(chosen, not held, min(waits) if waits else None)

    def read(self, streams: Iterable[str], found: set[str], now: float) -> None:
        """After a read of `streams` at `now` that brought entries from the streams in `found`."""
        for stream in streams:
            if stream in self._due_at:
                self._due_at[stream] = now if stream in found else now + self.hold_s[stream]
