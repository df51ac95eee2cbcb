"""How much a worker can do, for its heartbeats: a pure meter over a sliding window of the
batches it ran, falling back to its processor profile before it has run anything.

What it advertises is the rate at which it drains a backlog: with a backlog its batches are
full, so the rate is `max_batch` requests per full batch time, whatever size the recent batches
had. Only requests that ran count; a request answered without running (already late, cancelled)
costs no processor time and says nothing about capacity. A pool that reads several tiers gives a
lower tier what the stricter ones leave of it, and never less than its `min_share`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from core.settings import LatencyModel

from .models import tokens

WINDOW_S = 10.0
# Output tokens a request is assumed to generate before any batch was measured. Assuming too few
# would advertise a capacity the pool does not have and admit work that then misses its
# deadline; assuming too many only refuses some requests for the first heartbeat.
PROFILE_TOKENS = 32


def expected_batch_ms(latency: LatencyModel, batch_size: int) -> float:
    """The mean service time of one batch the profile predicts (token time not included)."""
    extra = latency.per_item_ms * (batch_size - 1)
    if latency.kind == "variable" and latency.max_ms is not None:
        mode = latency.mode_ms if latency.mode_ms is not None else latency.min_ms
        return (latency.min_ms + mode + latency.max_ms) / 3 + extra
    return latency.min_ms + extra


def request_ms(latency: LatencyModel, generates: bool, text: str, max_tokens: int) -> float:
    """The profile's service time of one request alone, token generation included: `generates`
    says whether its model writes text token by token (echo models), `max_tokens` 0 is no limit."""
    generated = 0
    if generates:
        generated = tokens(text) if max_tokens <= 0 else min(max_tokens, tokens(text))
    return expected_batch_ms(latency, 1) + latency.per_token_ms * max(0, generated - 1)


@dataclass(slots=True, frozen=True)
class _Batch:
    finished_s: float
    ran: tuple[int, ...]  # requests that ran, per priority (stricter tier first)
    busy_s: float


@dataclass(slots=True, frozen=True)
class Snapshot:
    per_s: tuple[float, ...]  # requests a second this worker can drain, per priority
    service_ms: float  # mean time of one full batch


class CapacityMeter:
    def __init__(
        self,
        latency: LatencyModel,
        max_batch: int,
        priorities: int = 1,
        min_share: float = 0.0,
        window_s: float = WINDOW_S,
    ) -> None:
        self.latency = latency
        self.max_batch = max_batch
        self.min_share = min_share
        self.window_s = window_s
        self._batches: deque[_Batch] = deque()
        self._busy_s = 0.0  # running sums over the window, so a batch costs O(1)
        self._ran = [0] * priorities
        self._started_s: float | None = None
        self._full_ms = expected_batch_ms(latency, max_batch) + latency.per_token_ms * (PROFILE_TOKENS - 1)

    def record(self, now_s: float, ran: Sequence[int], busy_s: float) -> None:
        """One batch done: how many of its requests ran, per priority, and how long it took."""
        if self._started_s is None:
            self._started_s = now_s - busy_s
        if sum(ran) == 0:
            return
        self._batches.append(_Batch(now_s, tuple(ran), busy_s))
        self._busy_s += busy_s
        for priority, count in enumerate(ran):
            self._ran[priority] += count
        self._expire(now_s)

    def _expire(self, now_s: float) -> None:
        while self._batches and self._batches[0].finished_s < now_s - self.window_s:
            gone = self._batches.popleft()
            self._busy_s -= gone.busy_s
            for priority, count in enumerate(gone.ran):
                self._ran[priority] -= count
        if self._batches:  # else the last measurement stands: an idle pool is as fast as it was
            batches = len(self._batches)
            mean_size = sum(self._ran) / batches
            extra_ms = self.latency.per_item_ms * max(0.0, self.max_batch - mean_size)
            self._full_ms = self._busy_s * 1000.0 / batches + extra_ms

    def snapshot(self, now_s: float) -> Snapshot:
        """The full-batch time, and the rate this worker drains each priority's backlog at."""
        self._expire(now_s)
        total = self.max_batch * 1000.0 / self._full_ms
        span_s = min(self.window_s, now_s - self._started_s) if self._started_s is not None else 0.0
        per_s = [total]
        used = 0.0  # what the stricter tiers took, requests a second
        for priority in range(1, len(self._ran)):
            if span_s > 0:
                used += self._ran[priority - 1] / span_s
            per_s.append(total * max(self.min_share, 1.0 - used / total))
        return Snapshot(tuple(per_s), self._full_ms)
