"""The adaptive pace of a gateway's batch lines: from each interval's event-loop lag and the median
latency of the stricter tiers' requests this gateway answered, the lines a second to start next,
rising by a step while both stay calm and cut by a factor when either rises (AIMD). No I/O: the
runner (gateway/batch_runner.py) measures and applies; `RecentLatencies` collects the medians.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.settings import BatchSettings, Settings

MIN_ANSWERS = 5  # a tier answered fewer times in an interval says nothing about its median then
# A tier's calm median is the median of its medians in the last CALM_INTERVALS calm intervals: those
# in which no batch was fed or the pace stood at its floor (the least a running batch can take).
CALM_INTERVALS = 120
# A tier's median over its yardstick holds the pace for one interval and cuts it on the second in a
# row: one interval's median of a few dozen answers strays that far now and then with no batch fed.
SLOW_INTERVALS = 2
MAX_KEPT = 10_000  # latencies kept per tier between two reads (an unread gateway's memory stays bounded)
LOOP_LAG = "loop_lag"  # the reason of a cut for the event loop; a tier's cut is named after the tier
HELD = "held"  # neither raised nor cut: a tier's latency rose for one interval


@dataclass(frozen=True, slots=True)
class Observation:
    """One interval as the runner saw it."""

    loop_lag_ms: float  # the event loop's worst lateness in the interval
    medians_ms: Mapping[str, float]  # stricter tier -> median latency of its answers in the interval
    answered: int  # the stricter tiers' answers in the interval: with none, a late loop delays nobody
    feeding: bool  # some batch was being fed


class PaceController:
    """AIMD between `min_lines_per_s` and `max_lines_per_s` (0: no ceiling). `reason` says why the
    pace stands where it does: "calm", "idle" (no batch fed: back to the floor), "held" (a tier's
    latency rose once), `LOOP_LAG`, or the name of the tier whose latency rose (cuts)."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.floor = settings.min_lines_per_s
        self.ceiling = settings.max_lines_per_s or math.inf
        self.lines_per_s = self.floor
        self.reason = "idle"
        self.medians: dict[str, deque[float]] = {}
        self.slow: dict[str, int] = {}  # tier -> intervals in a row its median was over its yardstick

    def observe(self, seen: Observation) -> float:
        """The pace after one more interval, in lines a second."""
        busy = self._busy(seen)
        if not seen.feeding or self.lines_per_s <= self.floor:  # after judging: not its own yardstick
            for tier, median_ms in seen.medians_ms.items():
                self.medians.setdefault(tier, deque(maxlen=CALM_INTERVALS)).append(median_ms)
        if not seen.feeding:
            self.lines_per_s, self.reason = self.floor, "idle"
        elif busy == HELD:
            self.reason = HELD
        elif busy is not None:
            self.lines_per_s, self.reason = max(self.floor, self.lines_per_s * self.settings.pace_backoff), busy
        else:
            step = self.settings.pace_step_lines_per_s
            self.lines_per_s, self.reason = min(self.ceiling, self.lines_per_s + step), "calm"
        return self.lines_per_s

    def calm_ms(self, tier: str) -> float | None:
        """A tier's median latency with no batch fed, or the least; None before any calm interval."""
        seen = self.medians.get(tier)
        return statistics.median(seen) if seen else None

    def _busy(self, seen: Observation) -> str | None:
        """Why the interval was busy (the event loop, or the tier whose latency rose), HELD when a
        tier's latency rose for the first time in a row; None: calm."""
        busy = None
        for tier, median_ms in sorted(seen.medians_ms.items()):
            calm = self.calm_ms(tier)
            over = calm is not None and median_ms > calm * self.settings.pace_max_latency_ratio
            self.slow[tier] = self.slow.get(tier, 0) + 1 if over else 0
            if over and busy in (None, HELD):
                busy = tier if self.slow[tier] >= SLOW_INTERVALS else HELD
        if seen.answered and seen.loop_lag_ms > self.settings.pace_max_loop_lag_ms:
            return LOOP_LAG
        return busy


class RecentLatencies:
    """The latencies of the stricter tiers' answers at this gateway since the last `take`."""

    def __init__(self) -> None:
        self.latencies_ms: dict[str, deque[float]] = {}

    def watch(self, tiers: Iterable[str]) -> None:
        """Keep the latencies of these tiers from now on (no other's)."""
        self.latencies_ms = {tier: deque(maxlen=MAX_KEPT) for tier in tiers}

    def add(self, tier: str, latency_ms: float) -> None:
        kept = self.latencies_ms.get(tier)
        if kept is not None:
            kept.append(latency_ms)

    def take(self) -> tuple[dict[str, float], int]:
        """Each tier's median since the last take (tiers answered at least MIN_ANSWERS times), and
        the answers of every watched tier since then."""
        kept_ms = self.latencies_ms.items()
        medians = {tier: statistics.median(kept) for tier, kept in kept_ms if len(kept) >= MIN_ANSWERS}
        answered = sum(len(kept) for kept in self.latencies_ms.values())
        for kept in self.latencies_ms.values():
            kept.clear()
        return medians, answered


def stricter_tiers(settings: Settings, batch_tier: str) -> list[str]:
    """The tiers whose latency objective is tighter than the batch tier's: those the pace protects."""
    limit_ms = settings.tiers[batch_tier].slo.latency_ms if batch_tier in settings.tiers else math.inf
    return [name for name, tier in settings.tiers.items() if tier.slo.latency_ms < limit_ms]
